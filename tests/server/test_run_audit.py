"""`fl-userdp audit --run DIR`: the noise of an existing run, from its own release logs. A correct run is
consistent (independent or banded noise); a run whose release carried 0.95σ, or one draw on two
coordinates, is flagged; each test states its α and power; a run without its updates says there is nothing
to test; bad folders are one line."""
from __future__ import annotations

import json

import pytest

from fl_userdp.cli import main
from fl_userdp.config import parse_config
from fl_userdp.server import inprocess
from fl_userdp.server import strategy as strategy_module
from fl_userdp.server.audit import faulty_release

# noise dominates each coordinate: 40 users at q = 0.1 (about 4 records of norm ≤ 1 a round) in d = 600
LINEAR = {"model.name": "linear", "model.dim": 600, "data.num-users": 41, "data.heldout-users": 1,
          "privacy.sampling-rate": 0.1, "privacy.noise-multiplier": 1.0, "train.rounds": 12, "train.eval-every": 0,
          "keep-releases": True}


def run(out, **flat) -> None:
    inprocess.run(parse_config({**LINEAR, "out": str(out), **flat}), ["uls"])


def audit(capsys, out) -> tuple[int, dict]:
    rc = main(["audit", "--run", str(out), "--json"])
    return rc, json.loads(capsys.readouterr().out)


def test_a_correct_run_is_consistent_and_the_power_is_stated(tmp_path, capsys):
    run(tmp_path)
    rc, data = audit(capsys, tmp_path)
    assert rc == 0 and not data["flagged"]
    (res,) = data["modes"]
    assert res["released"] == res["with_update"] == res["tested"] == 12 and res["coords"] == 600
    t = res["tests"]
    assert t["scale_power_95"] > 0.99 and t["pairs_power_half"] > 0.99 and t["rounds_power"] > 0.99
    assert 0.99 < t["scale_ratio"] < 1.05 and set(t["alpha"]) == {"scale", "round_scale", "floor", "pairs", "rounds"}
    assert main(["audit", "--run", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "power" in text and "alpha 0.001" in text and text.rstrip().splitlines()[-1].startswith("consistent")


@pytest.mark.parametrize("fault,kind", [("noise-95", "noise scale"), ("reused-noise", "two coordinates")])
def test_a_noise_shortfall_or_a_reused_draw_in_the_log_is_flagged(tmp_path, capsys, monkeypatch, fault, kind):
    monkeypatch.setattr(strategy_module, "release", faulty_release(fault, strategy_module.release))
    run(tmp_path)
    rc, data = audit(capsys, tmp_path)
    assert rc == 3 and data["flagged"]
    assert any(f.startswith(kind) for f in data["modes"][0]["tests"]["failures"])


def test_banded_noise_is_whitened_before_it_is_tested(tmp_path, capsys):
    """Banded noise is correlated across rounds by design and each w_t is wider than z_t (c_0 < 1): whitened
    with the log's coefficients it is z again (scale 1: the scale test keeps its power) and passes."""
    run(tmp_path, **{"privacy.mechanism": "bandmf", "privacy.bands": 3})
    rc, data = audit(capsys, tmp_path)
    assert rc == 0, data["modes"][0]["tests"]["failures"]
    assert data["modes"][0]["bands"] == 3 and data["modes"][0]["tested"] == 12
    assert 0.98 < data["modes"][0]["tests"]["scale_ratio"] < 1.03    # unwhitened: ~1.17 (1 / c_0)


@pytest.mark.parametrize("fault,kind", [("noise-95", "noise scale"), ("unbanded", "noise scale of one round")])
def test_a_banded_run_whose_noise_is_not_its_claimed_covariance_is_flagged(tmp_path, capsys, monkeypatch, fault,
                                                                          kind):
    """Against σ²C⁻¹C⁻ᵀ: 0.95σ of the banded noise, or fresh z_t each round where the run claims C⁻¹z
    (a fidelity fault: whitened, the first round's noise is c_0 short of the claim, which the per-round scale
    test finds; later rounds are an MA(b − 1) process of unit variance, which no test here targets)."""
    monkeypatch.setattr(strategy_module, "release", faulty_release(fault, strategy_module.release))
    run(tmp_path, **{"privacy.mechanism": "bandmf", "privacy.bands": 3})
    rc, data = audit(capsys, tmp_path)
    assert rc == 3 and data["flagged"], data["modes"][0]["tests"]
    failures = data["modes"][0]["tests"]["failures"]
    assert kind is None or any(f.startswith(kind) for f in failures), failures


def test_a_run_without_its_updates_has_nothing_to_test(tmp_path, capsys):
    run(tmp_path, **{"keep-releases": False})
    assert main(["audit", "--run", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "0 with their update" in out and "nothing to test" in out and "keep-releases=true" in out


@pytest.mark.parametrize("where", ["missing", "empty", "file"])
def test_bad_run_folders_are_one_line(tmp_path, capsys, where):
    target = tmp_path / "x"
    if where == "empty":
        target.mkdir()
    elif where == "file":
        target.write_text("not a run")
    assert main(["audit", "--run", str(target)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--run" in err
