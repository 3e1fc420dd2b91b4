"""One user's non-finite value (NaN/Inf data, an overflow) drops that user's record only: the node's sum with
and without that user differs by at most C, never becomes NaN (which would make the server reject the whole
node and change the sum by everyone else's contributions)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fl_userdp.clients.compute import LinearWorker
from fl_userdp.mechanism.clipping import clip_factors, clip_rows
from fl_userdp.config import parse_config
from fl_userdp.local import updates

CFG = {"model.name": "linear", "model.dim": 6, "data.num-users": 60, "data.heldout-users": 2,
       "privacy.clip-norm": 1.0, "privacy.max-examples-per-user": 4, "train.update": "gradient"}
BAD = 7


def poisoned(worker: LinearWorker, value: float) -> None:
    rows = worker.corpus.rows

    def bad_rows(owners, local_ids, user_weights=None):
        x, y = rows(owners, local_ids, user_weights)
        y = y.copy()
        y[np.asarray(owners) == BAD] = value
        return x, y
    worker.corpus.rows = bad_rows


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the bad values overflow, as they would in a node
@pytest.mark.parametrize("value", [np.nan, np.inf, 1e308])
@pytest.mark.parametrize("mode", ["uls", "els"])
def test_a_users_bad_value_costs_at_most_its_own_record(mode, value):
    cfg = parse_config({**CFG, "privacy.mode": mode})
    clean, bad = LinearWorker(cfg), LinearWorker(cfg)
    poisoned(bad, value)
    w = [np.full(6, 0.1)]
    users = np.arange(20)
    if mode == "uls":
        with_bad = bad.uls(cfg, w, 1, users).total
        without = clean.uls(cfg, w, 1, users[users != BAD]).total
    else:
        offsets = np.arange(0, 41, 2)
        ids = np.tile([0, 0], 20) % np.repeat(clean.corpus.counts[:20], 2)
        with_bad = bad.els(cfg, w, users, offsets, ids).total
        keep = users != BAD
        sel = np.repeat(keep, 2)
        without = clean.els(cfg, w, users[keep], np.arange(0, 2 * keep.sum() + 1, 2), ids[sel]).total
    assert np.all(np.isfinite(with_bad))
    assert np.linalg.norm(with_bad - without) <= cfg.privacy.clip_norm * (2 if mode == "els" else 1) + 1e-9


def test_clip_factors_drop_non_finite_records():
    np.testing.assert_array_equal(clip_factors(np.array([0.5, 4.0, np.nan, np.inf]), 2.0), [1.0, 0.5, 0.0, 0.0])
    x = np.array([[3.0, 4.0], [np.nan, 1.0], [np.inf, 0.0]])
    clipped, was = clip_rows(x, 1.0)
    np.testing.assert_allclose(clipped, [[0.6, 0.8], [0.0, 0.0], [0.0, 0.0]])
    f = updates.clip_factors(torch.tensor([0.5, 4.0, float("nan"), float("inf")]), 2.0, 1e-12)
    assert f.tolist() == [1.0, 0.5, 0.0, 0.0]
