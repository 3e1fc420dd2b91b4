"""Sharding and backend are speed only: a seeded run publishes the same bits whatever `sim.users-per-node`
or the backend (the clipped records are summed exactly on the grid of `fl_userdp.mechanism.fixed_point`, so the keyed
noise is the same draw), for ULS and ELS, the LM and the linear task.

The LM is covered over the whole grid mode × k ∈ {1, 4} × precision (float32, bfloat16 autocast, model.dtype
bfloat16 and float16) × update (gradient, local steps) × adaptive clipping (off, quantile 0.5), each at 64, 7
and 1 users per node in-process, and one cell through Flower's engine on Ray (slow)."""
from __future__ import annotations

import itertools

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


TASKS = {"linear": {"model.name": "linear", "model.dim": 20}}  # the language model: the grid below


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


# -- every precision and mode (the language model) ----------------------------------------------------------
PRECISIONS = {"float32": {}, "autocast-bf16": {"model.autocast": "bf16"}, "bfloat16": {"model.dtype": "bfloat16"},
              "float16": {"model.dtype": "float16"}}
TINY_LM = {"data.num-users": 10, "data.heldout-users": 2, "privacy.sampling-rate": 0.5,
           "privacy.noise-multiplier": 1.0, "train.rounds": 2, "train.eval-every": 0, "model.hidden-size": 32,
           "model.seq-len": 16, "model.num-layers": 1, "train.physical-batch-size": 8, "train.local-steps": 2}
GRID = list(itertools.product(PRECISIONS, (1, 4), ("gradient", "local-steps"), (None, 0.5)))


def checkpoints(out, modes) -> dict[str, dict[str, np.ndarray]]:
    return {mode: load_checkpoint(checkpoint_path(out, mode))[1] for mode in modes}


def assert_same_bits(runs: dict, base, label: str) -> None:
    for key, arrays in runs.items():
        for mode, got in arrays.items():
            want = runs[base][mode]
            assert sorted(got) == sorted(want)
            for name in want:
                differ = int(np.sum(got[name] != want[name]))
                assert differ == 0, f"{label} {mode} {name}: {key} vs {base} differ in {differ} of {want[name].size}"


@pytest.mark.parametrize("precision,k,update,quantile", GRID,
                         ids=[f"{p}-k{k}-{u}-{'adaptive' if q else 'fixed'}" for p, k, u, q in GRID])
def test_every_precision_and_mode_changes_no_bit_with_sharding(tmp_path, precision, k, update, quantile):
    """mode × k × precision × update × adaptive clipping: users-per-node 64, 7 and 1 (one node, two, one per
    user) publish the same weights and optimizer state, bit for bit (σ = 1, so a changed sum is a new draw)."""
    modes = ["uls", "els"] if update == "gradient" else ["uls"]  # local steps are ULS's
    flat = {**TINY_LM, **PRECISIONS[precision], "privacy.max-examples-per-user": k, "train.update": update}
    if quantile is not None:
        flat["privacy.adaptive-clip-quantile"] = quantile
    runs = {}
    for upn in (64, 7, 1):
        out = tmp_path / str(upn)
        inprocess.run(parse_config({**flat, "sim.users-per-node": upn, "out": str(out)}), modes)
        runs[upn] = checkpoints(out, modes)
    assert_same_bits(runs, 64, f"{precision} k={k} {update} quantile={quantile}")


def test_els_bf16_adaptive_users_alone_on_a_node_change_no_bit(tmp_path):
    """ELS, k = 4, adaptive clipping, bfloat16 autocast, the default physical batch: a user alone on its node
    (one record: a 16-row matmul) used to round differently from the same record in a full chunk."""
    flat = {"data.num-users": 66, "data.heldout-users": 2, "privacy.sampling-rate": 0.4, "train.rounds": 3,
            "privacy.noise-multiplier": 1.0, "train.eval-every": 0, "privacy.max-examples-per-user": 4,
            "privacy.adaptive-clip-quantile": 0.5, "model.hidden-size": 32, "model.seq-len": 16,
            "model.autocast": "bf16"}
    runs = {}
    for upn in (64, 1):
        out = tmp_path / str(upn)
        inprocess.run(parse_config({**flat, "sim.users-per-node": upn, "out": str(out)}), ["els"])
        runs[upn] = checkpoints(out, ["els"])
    assert_same_bits(runs, 64, "els bf16 autocast k=4 adaptive")


@pytest.mark.parametrize("precision", sorted(PRECISIONS))
def test_a_records_clipped_gradient_does_not_depend_on_its_batch(precision):
    """A node's exact sum is the same whether its records are computed alone, together, in another order, or
    with two threads: the property the sharding tests rest on, at weights far from the initial ones."""
    import torch

    from fl_userdp.local.model import build_model, get_trainable, set_trainable
    from fl_userdp.local.updates import els_clipped_sum

    cfg = parse_config({**TINY_LM, **PRECISIONS[precision], "model.num-layers": 2})
    model = build_model(cfg.model, 0)
    rng = np.random.default_rng(1)
    set_trainable(model, [a + 0.3 * rng.standard_normal(a.shape).astype(np.float32) for a in get_trainable(model)])
    rows = rng.integers(0, cfg.model.vocab_size, (32, cfg.model.seq_len))
    autocast = cfg.model.autocast == "bf16"

    def node_sum(part: np.ndarray) -> np.ndarray:
        return els_clipped_sum(model, part, 0.05, chunk_size=cfg.train.physical_batch_size, autocast=autocast)[0]

    together = node_sum(rows)
    alone = sum(node_sum(rows[i:i + 1]) for i in range(len(rows)))
    np.testing.assert_array_equal(alone, together, err_msg=f"{precision}: each record alone vs all together")
    perm = rng.permutation(len(rows))
    np.testing.assert_array_equal(node_sum(rows[perm[:5]]) + node_sum(rows[perm[5:]]), together,
                                  err_msg=f"{precision}: another order and grouping")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        np.testing.assert_array_equal(node_sum(rows), together, err_msg=f"{precision}: two threads vs one")
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_autocast_over_low_precision_weights_is_refused(dtype):
    """The one combination outside the grid: autocast over weights that are not float32, one line at config time."""
    from fl_userdp.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        parse_config({"model.autocast": "bf16", "model.dtype": dtype})
    assert err.value.key == "model.autocast" and "model.dtype 'float32'" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.slow
def test_flower_and_in_process_publish_the_same_bits_in_bf16_with_adaptive_clipping(tmp_path):
    """Backend: Flower's engine on Ray (2 nodes) and in-process (one node per user), bfloat16 autocast, k = 4,
    adaptive clipping, both modes."""
    from fl_userdp.cli import main

    cell = [f"--set={k}={v}" for k, v in {**TINY_LM, **PRECISIONS["autocast-bf16"], "privacy.max-examples-per-user": 4,
                                           "privacy.adaptive-clip-quantile": 0.5}.items()]
    runs = {}
    for backend, upn in (("ray", 4), ("inprocess", 1)):
        out = tmp_path / backend
        assert main(["compare", "--backend", backend, "--out", str(out), "--no-progress", *cell,
                     f"--set=sim.users-per-node={upn}"]) == 0
        runs[backend] = checkpoints(out, ["uls", "els"])
    assert_same_bits(runs, "ray", "bf16 autocast k=4 adaptive")
