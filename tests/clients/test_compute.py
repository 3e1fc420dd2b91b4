"""Node computations (clients.compute) on the real tiny LoRA model, without the engine."""
from __future__ import annotations

import numpy as np
import pytest

from fl_userdp.clients.compute import uls_example_ids, worker_for
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
    from fl_userdp.server.inprocess import InProcessTransport
    from fl_userdp.server.runner import prepare
    from fl_userdp.server.strategy import UserDPStrategy

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
    # the training loss comes from the gradients' own forward: it equals a separate no-grad pass
    import torch

    from fl_userdp.local.updates import as_tokens, per_example_loss

    def separate(rows):
        with torch.no_grad():
            return per_example_loss(w.model, as_tokens(w.model, rows)).double().numpy()

    users = np.array([0, 3, 7])
    chosen = [uls_example_ids(cfg.seed, 1, int(u), int(w.corpus.counts[u]), 4) for u in users]
    data = [w.examples_of(int(u), i) for u, i in zip(users, chosen)]
    assert c.loss_sum == pytest.approx(sum(separate(d).mean() for d in data), rel=1e-6)
    offsets = np.concatenate([[0], np.cumsum([len(d) for d in data])])
    ids = np.concatenate(chosen)
    e = w.els(cfg, weights, users, offsets, ids)
    assert e.loss_sum == pytest.approx(separate(np.concatenate(data)).sum(), rel=1e-6)
    # generated users' rows are cached: the same rows as the corpus gives
    for u in users:
        np.testing.assert_array_equal(w.examples_of(int(u), np.arange(2)), w.corpus.examples_of(int(u), np.arange(2)))


LINEAR = {"model.name": "linear", "model.dim": 8, "data.num-users": 60, "data.heldout-users": 3,
          "privacy.sampling-rate": 0.4, "privacy.noise-multiplier": 1.0, "privacy.max-examples-per-user": 4,
          "privacy.clip-norm": 0.5, "train.update": "local-steps", "train.local-steps": 1, "train.local-batch-size": 4}


@pytest.mark.parametrize("mode", ["uls", "els"])
def test_linear_one_user_per_node_equals_many_users_per_node(mode):
    """Linear task, real node code (vectorised within a node): users-per-node 1 / 7 / all give the same
    sampled users, the same pre-noise aggregate and counts — and ULS equals the one-user-at-a-time loop."""
    from fl_userdp.server.inprocess import InProcessTransport
    from fl_userdp.server.runner import prepare
    from fl_userdp.server.strategy import UserDPStrategy

    runs = []
    for upn in (1, 7, 60):
        cfg = parse_config({**LINEAR, "privacy.mode": mode, "sim.users-per-node": upn})
        setup = prepare(cfg)
        s = UserDPStrategy(cfg, setup.counts, setup.init_weights, 1.0)
        s.weights = np.random.default_rng(3).normal(size=8)  # away from 0 so some updates clip
        reqs = s.sample(2)
        total, st = s.collect(reqs, InProcessTransport(cfg)(reqs, s.weights_list()))
        assert st["failures"] == st["rejected"] == st["reclipped"] == 0
        users = np.concatenate([r.users for r in reqs.values()])
        runs.append((users, total, st["clipped"], st["examples_processed"], st["loss_sum"]))
        if mode == "uls":
            loop = worker_for(cfg).uls_loop(cfg, s.weights_list(), 2, users)
            np.testing.assert_allclose(loop.total, total, rtol=1e-10, atol=1e-12)
            assert (loop.clipped, loop.examples) == (st["clipped"], st["examples_processed"])
    assert 0 < runs[0][2] < runs[0][0].size * (4 if mode == "els" else 1)  # some clipped, not all
    for users, total, clipped, examples, loss in runs[1:]:
        np.testing.assert_array_equal(users, runs[0][0])
        np.testing.assert_allclose(total, runs[0][1], rtol=1e-10, atol=1e-12)
        assert (clipped, examples) == (runs[0][2], runs[0][3]) and loss == pytest.approx(runs[0][4], rel=1e-12)


def test_linear_corpus_is_lazy_and_deterministic_and_local_steps_match_the_gradient():
    from fl_userdp.clients.compute import LinearWorker, linear_example_ids
    from fl_userdp.data import LinearCorpus, load_corpus

    cfg = parse_config({**LINEAR, "data.num-users": 100_000})
    c = load_corpus(cfg.data, cfg.model, cfg.seed)
    assert isinstance(c, LinearCorpus) and c.counts.size == 100_000 and c.counts.min() >= 1
    x, y = c.examples(99_999)
    x2, y2 = c.rows(np.full(2, 99_999), np.array([1, 0]) % len(y))
    np.testing.assert_array_equal(x2[1], x[0])
    np.testing.assert_array_equal(y2[1], y[0])
    ids = linear_example_ids(0, 5, 7, 30, 4)
    assert len(ids) == 4 and np.all(np.diff(ids) > 0) and not np.array_equal(ids, linear_example_ids(0, 6, 7, 30, 4))
    w = LinearWorker(parse_config({**LINEAR, "train.update": "gradient", "privacy.clip-norm": 1e6}))
    g = w.uls(w_cfg := parse_config({**LINEAR, "train.update": "gradient", "privacy.clip-norm": 1e6}),
              [np.ones(8)], 1, np.arange(10))
    s = w.uls(parse_config({**LINEAR, "privacy.clip-norm": 1e6, "train.local-lr": 0.1}), [np.ones(8)], 1, np.arange(10))
    # one full-batch step = lr · mean gradient, to the grid each record is put on (unit ≈ C·2^-30, per record)
    from fl_userdp.mechanism.fixed_point import grid_unit
    np.testing.assert_allclose(s.total, 0.1 * g.total, rtol=0, atol=10 * 2 * grid_unit(1e6))
    assert np.isfinite(w.evaluate(w_cfg, [np.ones(8)]))
    # several smaller local steps: the vectorised schedule equals the per-user loop
    cfg3 = parse_config({**LINEAR, "train.local-steps": 3, "train.local-batch-size": 3})
    v, loop = w.uls(cfg3, [np.ones(8)], 1, np.arange(20)), w.uls_loop(cfg3, [np.ones(8)], 1, np.arange(20))
    np.testing.assert_allclose(v.total, loop.total, rtol=1e-10)


def test_fast_owner_hash_order_is_lexsort_including_the_colliding_case():
    from fl_userdp.clients.compute import order_by_owner_then_hash

    rng = np.random.default_rng(3)
    owner = np.sort(rng.integers(0, 5000, 40_000))
    h = rng.integers(0, 2**63, 40_000, dtype=np.int64).astype(np.uint64) * np.uint64(2)
    assert np.array_equal(order_by_owner_then_hash(owner, h), np.lexsort((h, owner)))
    h[1::2] = h[0::2] ^ np.uint64(1)   # same top bits within pairs: the exact sort must decide
    assert np.array_equal(order_by_owner_then_hash(owner, h), np.lexsort((h, owner)))
    assert np.array_equal(order_by_owner_then_hash(owner + 2**25, h), np.lexsort((h, owner)))  # wide owners


def test_vectorised_linear_choice_is_each_users_own_choice():
    from fl_userdp.clients.compute import linear_choice, linear_example_ids

    counts = np.random.default_rng(4).integers(1, 40, 3000)
    users = np.sort(np.random.default_rng(5).choice(3000, 700, replace=False))
    owner, local = linear_choice(0, 3, counts, users, 6)
    for i in range(users.size):
        want = linear_example_ids(0, 3, int(users[i]), int(counts[users[i]]), 6)
        assert np.array_equal(local[owner == i], want)
