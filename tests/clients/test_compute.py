"""Node computations (clients.compute) on the real tiny LoRA model, without the engine."""
from __future__ import annotations

import numpy as np
import pytest

from clients.compute import uls_example_ids, worker_for
from fl_userdp.config import parse_config

FLAT = {"data.num-users": 24, "data.heldout-users": 2, "privacy.sampling-rate": 0.5, "privacy.noise-multiplier": 1.0,
        "privacy.max-examples-per-user": 4, "train.eval-examples": 16}


def test_uls_examples_are_at_most_k_and_deterministic():
    assert list(uls_example_ids(0, 1, 5, 3, 4)) == [0, 1, 2]
    a = uls_example_ids(0, 1, 5, 20, 4)
    assert len(a) == 4 and np.all(np.diff(a) > 0) and a.max() < 20
    np.testing.assert_array_equal(a, uls_example_ids(0, 1, 5, 20, 4))
    assert not np.array_equal(a, uls_example_ids(0, 2, 5, 20, 4))  # fresh choice each round


@pytest.mark.parametrize("mode", ["uls", "els"])
def test_one_user_per_node_equals_many_users_per_node(mode):
    """Sharding changes speed, nothing else: same sampled users, same pre-noise aggregate."""
    from server.inprocess import InProcessTransport
    from server.runner import prepare
    from server.strategy import UserDPStrategy

    aggregates = []
    for upn in (1, 5, 24):
        cfg = parse_config({**FLAT, "privacy.mode": mode, "sim.users-per-node": upn})
        setup = prepare(cfg)
        s = UserDPStrategy(cfg, setup.counts, setup.init_weights, 1.0)
        reqs = s.sample(1)
        replies = InProcessTransport(cfg)(reqs, s.weights_list())
        total, st = s.collect(reqs, replies)
        assert st["failures"] == st["rejected"] == 0
        aggregates.append((np.concatenate([r.users for r in reqs.values()]), total, st["clipped"]))
    for users, total, clipped in aggregates[1:]:
        np.testing.assert_array_equal(users, aggregates[0][0])
        np.testing.assert_allclose(total, aggregates[0][1], rtol=1e-4, atol=1e-6)
        assert clipped == aggregates[0][2]


def test_worker_reports_counts_and_losses():
    cfg = parse_config({**FLAT, "privacy.clip-norm": 1e-3})
    w = worker_for(cfg)
    from fl_userdp.local.model import get_trainable

    weights = get_trainable(w.model)
    c = w.uls(cfg, weights, 1, np.array([0, 3, 7]))
    assert c.users == 3 and c.clipped == 3 and c.examples == sum(min(int(w.corpus.counts[u]), 4) for u in (0, 3, 7))
    assert np.linalg.norm(c.total) <= 3 * 1e-3 * (1 + 1e-6) and c.loss_sum / 3 > 0
    assert np.isfinite(w.evaluate(cfg, weights))
