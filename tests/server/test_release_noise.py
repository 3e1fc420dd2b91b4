"""No two releases that can differ share noise (the releases of ULS and ELS in one compare, of two runs
whose config or data differ, of two rounds), while one run with one config stays reproducible.

σ is so large that every released update is, to 1e-6, the noise alone: shared noise would show as a
correlation of 1 between the published weight changes (a linear combination would cancel it and expose the
difference of the clipped sums exactly).
"""
from __future__ import annotations

import numpy as np

from fl_userdp.config import parse_config
from fl_userdp.records.release_log import log_path
from fl_userdp.server import inprocess
from fl_userdp.server.checkpoint import checkpoint_path, load_checkpoint

DIM = 10_000


def run(tmp_path, name: str, modes=("uls", "els"), **flat):
    cfg = parse_config({"model.name": "linear", "model.dim": DIM, "data.num-users": 60, "data.heldout-users": 2,
                        "sim.users-per-node": 20, "privacy.sampling-rate": 0.3, "privacy.noise-multiplier": 1e6,
                        "train.server-optimizer": "sgd", "train.server-lr": 1.0, "train.rounds": 2,
                        "train.eval-every": 0, "out": str(tmp_path / name), **flat})
    inprocess.run(cfg, list(modes))
    return tmp_path / name


def weight_change(out, mode: str) -> np.ndarray:
    """Published: the final weights (the checkpoint) minus the initial zeros."""
    return load_checkpoint(checkpoint_path(out, mode))[1]["weights"]


def corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1])


def test_compare_modes_and_runs_that_differ_have_independent_noise(tmp_path):
    base = run(tmp_path, "base")
    uls, els = weight_change(base, "uls"), weight_change(base, "els")
    assert abs(corr(uls, els)) < 0.1, "ULS and ELS of one compare share noise"
    for key, value in (("data.user-diversity", 0.6), ("privacy.clip-norm", 0.9), ("seed", 1)):
        other = run(tmp_path, f"other-{key}", ("uls",), **{key: value})
        assert abs(corr(uls, weight_change(other, "uls"))) < 0.1, f"runs differing in {key} share noise"
    # one run, one config, one dataset: reproducible bit for bit
    again = run(tmp_path, "again", ("uls",))
    np.testing.assert_array_equal(weight_change(again, "uls"), uls)


def test_rounds_of_one_run_have_independent_noise(tmp_path):
    out = run(tmp_path, "rounds", ("els",), **{"checkpoint-every": 1})
    from fl_userdp.records.release_log import read_log
    log = read_log(log_path(out, "els"))
    assert [r["round"] for r in log.releases] == [1, 2]
    # round 1's checkpoint was compacted, but the weights after round 1 and after round 2 are published
    w2 = weight_change(out, "els")
    single = run(tmp_path, "one-round", ("els",), **{"train.rounds": 1})
    w1 = weight_change(single, "els")
    assert abs(corr(w1, w2 - w1)) < 0.1


def test_count_noise_is_keyed_by_the_count_and_its_scale(tmp_path):
    """Adaptive clipping releases a noised centred count with the sum. Two runs differing only in the count's
    noise multiplier must not share its noise draw: with a shared draw z, the two published fractions
    b̃_i = (c + σ_i z) / E + ½ solve for the exact centred count c."""
    from fl_userdp.records.release_log import read_log

    fractions = {}
    for sb in (0.5, 3.0):
        out = run(tmp_path, f"count-{sb}", ("uls",), **{"privacy.noise-multiplier": 2.0,
                                                        "privacy.adaptive-clip-quantile": 0.5,
                                                        "privacy.count-noise-multiplier": sb, "train.rounds": 1})
        entry = read_log(log_path(out, "uls")).releases[0]
        fractions[sb] = (entry["unclipped_fraction"], entry["expected_count"])
    (f1, e), (f2, _) = fractions[0.5], fractions[3.0]
    # if z were shared: c = ((f1 - ½)·3.0 − (f2 - ½)·0.5)·E / (3.0 − 0.5); c must be in [-n/2, n/2] and a half-integer
    solved = ((f1 - 0.5) * 3.0 - (f2 - 0.5) * 0.5) * e / (3.0 - 0.5)
    assert abs(solved * 2 - round(solved * 2)) > 1e-6, f"the count noise was shared: centred count {solved}"
