"""Your own accountant: `privacy.accountant = "package.module:Factory"` (the ledger protocol), with the two
shipped plug-ins — the PRV accountant and Flower's own RDP accountant — cross-checked, run end to end,
resumed, and refused with one line where they cannot account an event."""
from __future__ import annotations

import pytest

from fl_userdp.accounting import epsilon_for, make_accountant, make_event
from fl_userdp.accounting.prv import PrvAccountant
from fl_userdp.cli import main
from fl_userdp.records import report
from fl_userdp.errors import ConfigError
from fl_userdp.server.flower_accountant import FlowerRdpAccountant

PRV = "fl_userdp.accounting.prv:PrvAccountant"
FLOWER = "fl_userdp.server.flower_accountant:FlowerRdpAccountant"


@pytest.mark.parametrize("q,sigma,steps", [(0.01, 1.0, 1000), (0.1, 2.0, 100), (0.001, 0.8, 5000), (0.05, 1.3, 300)])
def test_prv_plugin_agrees_with_our_pld(q, sigma, steps):
    event = make_event("uls", q, sigma)
    prv = PrvAccountant(delta=1e-6)
    prv.compose(event, steps)
    pld = epsilon_for([(event, steps)], 1e-6)
    # both are upper bounds; PRV's is its estimate + eps_error (0.01)
    assert pld - 1e-3 <= prv.epsilon() <= pld + 0.011 + 2e-3 * pld


def test_flower_adapter_is_dp_accountings_rdp():
    event = make_event("uls", 0.01, 1.0)
    flower = FlowerRdpAccountant(delta=1e-6)
    flower.compose(event, 1000)
    assert flower.epsilon() == pytest.approx(epsilon_for([(event, 1000)], 1e-6, "rdp"), rel=1e-6)
    assert flower.epsilon() > epsilon_for([(event, 1000)], 1e-6)   # RDP is looser than PLD


def run(tmp_path, *extra):
    return main(["run", "--backend", "inprocess", "--no-progress", "--out", str(tmp_path), "--set", "model.name=linear",
                 "--set", "data.num-users=40", "--set", "sim.users-per-node=10", "--set", "privacy.sampling-rate=0.2",
                 "--set", "train.eval-every=0", *extra])


def test_a_run_with_a_plugin_ledger_and_its_resume(tmp_path):
    args = ("--mode", "uls", "--set", f"privacy.accountant={PRV}", "--set", "privacy.noise-multiplier=1.5",
            "--set", "checkpoint-every=2")
    assert run(tmp_path, "--rounds", "3", *args) == 0
    assert run(tmp_path, "--rounds", "5", "--resume", *args) == 0
    recs = report.read_records(tmp_path / report.METRICS)
    event = make_event("uls", 0.2, 1.5)
    for r in recs:
        fresh = PrvAccountant(delta=1e-5)
        fresh.compose(event, r["round"])
        assert r["epsilon"] == pytest.approx(fresh.epsilon(), rel=1e-12)
    assert [r["round"] for r in recs] == [1, 2, 3, 4, 5]


def test_calibration_with_a_plugin(tmp_path):
    assert run(tmp_path, "--mode", "uls", "--rounds", "3", "--set", f"privacy.accountant={FLOWER}",
               "--set", "privacy.target-epsilon=4") == 0
    eps = report.read_records(tmp_path / report.METRICS)[-1]["epsilon"]
    assert 3.9 <= eps <= 4.0


@pytest.mark.parametrize("spec,needle", [
    (PRV, "cannot account ELS events"), (FLOWER, "cannot account ELS events"),
    ("no_such_module.sub:Thing", "cannot be imported"), ("fl_userdp.accounting:Nope", "names nothing"),
    ("fl_userdp.config:RunConfig", "could not be created"), ("builtins:dict", "is not a ledger"),
    ("not a spec", "must be 'pld'"),
])
def test_plugins_that_cannot_serve_are_refused_with_one_line(tmp_path, capsys, spec, needle):
    assert run(tmp_path, "--mode", "els", "--rounds", "1", "--set", "privacy.noise-multiplier=1",
               "--set", f"privacy.accountant={spec}") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "privacy.accountant" in err and needle in err, err


def test_make_accountant_builtins_and_protocol():
    assert make_accountant("pld", 1e-5).backend == "pld"
    with pytest.raises(ConfigError):
        make_accountant("fl_userdp.errors:ConfigError", 1e-5)


def test_missing_prv_package_says_what_to_install(tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "prv_accountant", None)  # `import prv_accountant` raises ImportError
    assert run(tmp_path, "--mode", "uls", "--rounds", "1", "--set", "privacy.noise-multiplier=1",
               "--set", f"privacy.accountant={PRV}") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "privacy.accountant" in err and "Traceback" not in err
    assert "pip install prv-accountant" in err and "fl-userdp[prv]" in err


def test_flower_adapter_calibrates_without_absl_warnings(capfd, caplog):
    import logging

    from fl_userdp.accounting import calibrate_noise

    caplog.set_level(logging.DEBUG)
    capfd.readouterr()
    sigma, _ = calibrate_noise("uls", 4.0, 1e-5, 0.2, 3, 1, FLOWER)  # orders that do not converge at q=0.2
    assert sigma > 0
    out, err = capfd.readouterr()
    assert "absl" not in err and "failed to converge" not in err + out
    assert not [r for r in caplog.records if r.name == "absl"]
    assert logging.getLogger("absl").level == logging.NOTSET  # restored after the call
