"""Sharding and backend are speed only: a seeded run publishes the same bits whatever `sim.users-per-node`
or the backend (the clipped records are summed exactly on the grid of `fl_userdp.mechanism.fixed_point`, so the keyed
noise is the same draw), for ULS and ELS, the LM and the linear task."""
from __future__ import annotations

import numpy as np
import pytest

from fl_userdp.config import parse_config
from fl_userdp.mechanism.fixed_point import grid_sum, grid_unit, on_grid, record_clip_norm, scaled_grid_sum, to_grid
from fl_userdp.server import inprocess
from fl_userdp.server.checkpoint import checkpoint_path, load_checkpoint


def published(out, mode: str) -> np.ndarray:
    arrays = load_checkpoint(checkpoint_path(out, mode))[1]
    return np.concatenate([arrays[k].ravel() for k in sorted(arrays)])


def run(tmp_path, name: str, **flat) -> dict[str, np.ndarray]:
    cfg = parse_config({"data.num-users": 60, "data.heldout-users": 2, "privacy.sampling-rate": 0.4,
                        "privacy.noise-multiplier": 1.0, "train.rounds": 2, "train.eval-every": 0,
                        "out": str(tmp_path / name), **flat})
    inprocess.run(cfg, ["uls", "els"])
    return {m: published(tmp_path / name, m) for m in ("uls", "els")}


TASKS = {"linear": {"model.name": "linear", "model.dim": 20},
         "lm": {"model.hidden-size": 32, "model.seq-len": 16},
         "lm-local-steps": {"model.hidden-size": 32, "model.seq-len": 16, "train.update": "local-steps",
                            "train.local-steps": 2}}


@pytest.mark.parametrize("task", sorted(TASKS))
def test_users_per_node_changes_no_bit(tmp_path, task):
    runs = {upn: run(tmp_path, f"{task}-{upn}", **TASKS[task], **{"sim.users-per-node": upn}) for upn in (60, 7, 1)}
    for upn in (7, 1):
        for mode in ("uls", "els"):
            np.testing.assert_array_equal(runs[upn][mode], runs[60][mode],
                                          err_msg=f"{task} {mode}: users-per-node {upn} vs 60")


def test_grid_sums_are_exact_in_any_grouping():
    rng = np.random.default_rng(0)
    C = 0.7
    records = rng.standard_normal((500, 40)) * rng.lognormal(0, 3, (500, 1))
    norms = np.linalg.norm(records, axis=1)
    factors = np.minimum(1.0, record_clip_norm(C) / norms)
    whole = scaled_grid_sum(factors, records, C)
    assert on_grid(whole, C)
    pieces = sum(scaled_grid_sum(factors[i:j], records[i:j], C) for i, j in ((0, 1), (1, 333), (333, 500)))
    np.testing.assert_array_equal(pieces, whole)
    perm = rng.permutation(500)
    np.testing.assert_array_equal(scaled_grid_sum(factors[perm], records[perm], C), whole)
    np.testing.assert_array_equal(grid_sum(records * factors[:, None], C), whole)
    # truncation toward zero: no record's norm grows, each moves by less than one unit per coordinate
    gridded = to_grid(records * factors[:, None], C)
    assert np.all(np.linalg.norm(gridded, axis=1) <= np.linalg.norm(records * factors[:, None], axis=1))
    assert np.all(np.abs(gridded - records * factors[:, None]) < grid_unit(C))
    assert C * 2.0 ** -31 <= grid_unit(C) <= C * 2.0 ** -30
    # a float sum of the same records depends on the grouping (the reason for the grid)
    plain = factors @ records
    plain_pieces = factors[:1] @ records[:1] + factors[1:333] @ records[1:333] + factors[333:] @ records[333:]
    assert not np.array_equal(plain, plain_pieces)
