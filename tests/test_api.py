"""The Python API (`fl_userdp.simulate`): same keys and code as the CLI, results in memory."""
from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest

import fl_userdp
from fl_userdp.cli import main
from fl_userdp.errors import ConfigError
from fl_userdp.server.checkpoint import checkpoint_path, load_checkpoint

FLAT = {"model.name": "linear", "model.dim": 8, "data.num-users": 40, "data.heldout-users": 4,
        "sim.users-per-node": 10, "privacy.sampling-rate": 0.3, "train.rounds": 3, "train.eval-every": 1}


def test_simulate_in_memory_matches_the_cli(tmp_path):
    before = set(os.listdir(tempfile.gettempdir()))
    res = fl_userdp.simulate(FLAT, backend="inprocess")
    assert res.out is None and set(res.modes) == {"uls", "els"}
    assert not {d for d in set(os.listdir(tempfile.gettempdir())) - before if d.startswith("fl-userdp-")}
    for mode, run in res.modes.items():
        assert [r["round"] for r in run.records] == [1, 2, 3] and len(run.epsilons) == 3
        assert run.epsilon == run.records[-1]["epsilon"] and run.epsilons == sorted(run.epsilons)
        assert run.records[-1]["eval_loss"] is not None and run.records[0]["train_loss"] is not None
        assert [w.shape for w in run.weights] == [(8,)]
    # the CLI with the same keys computes the same run (same releases, same weights)
    args = ["compare", "--backend", "inprocess", "--no-progress", "--out", str(tmp_path)]
    for k, v in FLAT.items():
        args += ["--set", f"{k}={v}"]
    assert main(args) == 0
    for mode, run in res.modes.items():
        np.testing.assert_array_equal(load_checkpoint(checkpoint_path(tmp_path, mode))[1]["weights"],
                                      run.weights[0])


def test_simulate_with_out_writes_the_usual_files_and_resumes(tmp_path):
    flat = {**FLAT, "privacy.noise-multiplier": 1.0}  # fixed σ: a calibrated target would be the budget
    res = fl_userdp.simulate({**flat, "train.rounds": 2}, modes=["els"], backend="inprocess", out=tmp_path)
    assert res.out == tmp_path and res.summary["modes"]["els"]["rounds"] == 2
    for name in ("metrics.jsonl", "summary.json", "summary.md", "plot.png", "releases-els.log",
                 "checkpoint-els.npz"):
        assert (tmp_path / name).exists(), name
    more = fl_userdp.simulate({**flat, "train.rounds": 4}, modes=["els"], backend="inprocess", out=tmp_path,
                              resume=True)
    assert more["els"].resumed_from == 2 and [r["round"] for r in more["els"].records] == [1, 2, 3, 4]


@pytest.mark.parametrize("kwargs,key", [({"backend": "spark"}, "backend"), ({"modes": ["xls"]}, "modes"),
                                        ({"resume": True}, "out")])
def test_bad_arguments_name_the_argument(kwargs, key):
    with pytest.raises(ConfigError) as err:
        fl_userdp.simulate(FLAT, **{"backend": "inprocess", **kwargs})
    assert err.value.key == key
    with pytest.raises(ConfigError) as err:
        fl_userdp.simulate({"privacy.sampling-rate": 2})
    assert err.value.key == "privacy.sampling-rate"


def test_result_prints_short_and_is_a_mapping_of_modes():
    res = fl_userdp.simulate({**FLAT, "train.rounds": 2}, modes="uls,els", backend="inprocess")
    text = repr(res)
    assert "\n" not in text and len(text) < 200 and "array" not in text
    assert text.startswith("SimulationResult(uls: 2 rounds, epsilon=") and "out=None" in text
    assert repr(res["uls"]).startswith("ModeRun(uls: 2 rounds, epsilon=") and len(repr(res["uls"])) < 120
    assert list(res) == ["uls", "els"] == list(res.keys()) and len(res) == 2 and "els" in res and "xls" not in res
    assert [m for m, _ in res.items()] == ["uls", "els"] and [r.mode for r in res.values()] == ["uls", "els"]
    assert res.config.out is None  # no out=: the temporary folder is gone, nothing to point at


@pytest.mark.parametrize("modes,expected", [("uls", ["uls"]), ("els, uls", ["els", "uls"]), (("els",), ["els"]),
                                            (["uls", "els"], ["uls", "els"])])
def test_modes_as_a_string_list_or_tuple(modes, expected):
    from fl_userdp.api import as_config, as_modes

    assert as_modes(modes, as_config(FLAT)) == expected


@pytest.mark.parametrize("modes", ["ul", "uls,xls", [], "", ["uls", "uls"], 3])
def test_unknown_modes_are_refused_with_one_line(modes):
    with pytest.raises(ConfigError) as err:
        fl_userdp.simulate(FLAT, modes=modes, backend="inprocess")
    assert err.value.key == "modes" and "\n" not in str(err.value)


def test_nested_dicts_are_flattened_like_toml():
    from fl_userdp.api import as_config

    cfg = as_config({"privacy": {"mode": "els", "sampling-rate": 0.2}, "train": {"rounds": 7}, "seed": 3})
    assert (cfg.privacy.mode, cfg.privacy.sampling_rate, cfg.train.rounds, cfg.seed) == ("els", 0.2, 7, 3)
    with pytest.raises(ConfigError) as err:
        as_config({"privacy": {"sampling-rate": 2}})
    assert err.value.key == "privacy.sampling-rate"


def test_errors_name_the_apis_arguments_not_the_clis_options(tmp_path):
    flat = {**FLAT, "train.rounds": 1, "privacy.noise-multiplier": 1.0}
    fl_userdp.simulate(flat, modes="uls", backend="inprocess", out=tmp_path)
    with pytest.raises(ConfigError) as err:  # a fresh start over released rounds
        fl_userdp.simulate(flat, modes="uls", backend="inprocess", out=tmp_path)
    assert err.value.key == "out" and "resume=True" in str(err.value) and "--" not in str(err.value)
    with pytest.raises(ConfigError) as err:  # resuming one mode of the folder while it holds another
        fl_userdp.simulate(flat, modes="els", backend="inprocess", out=tmp_path, resume=True)
    assert err.value.key == "resume" and "--" not in str(err.value)
