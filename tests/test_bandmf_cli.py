"""Banded noise in the config, `fl-userdp epsilon` / `calibrate`, the planner, the advisor and the start line."""
import json
import math

import numpy as np
import pytest

from fl_userdp.accounting import epsilon_for, make_event
from fl_userdp.cli import main
from fl_userdp.cli.sim import mechanism_line
from fl_userdp.config import parse_config
from fl_userdp.errors import ConfigError
from fl_userdp.mechanism.bandmf import error_ratio, sqrt_coefficients
from fl_userdp.study.advisor import Pilot, advise
from fl_userdp.study.planner import make_plan

BASE = ["--mode", "uls", "--sampling-rate", "0.05", "--steps", "100", "--delta", "1e-5"]


@pytest.mark.parametrize("flat,key", [
    ({"privacy.mechanism": "bmf"}, "privacy.mechanism"),
    ({"privacy.bands": 4}, "privacy.bands"),                          # bands > 1 needs bandmf
    ({"privacy.mechanism": "bandmf", "privacy.bands": 0}, "privacy.bands"),
    ({"privacy.bandmf-coefficients": "best"}, "privacy.bandmf-coefficients"),
    ({"privacy.participation": "cyclic"}, "privacy.participation"),
    ({"privacy.participation": "fixed"}, "privacy.sampling-rate"),   # fixed takes everyone: q must be 1
    ({"privacy.mechanism": "bandmf", "privacy.adaptive-clip-quantile": 0.5}, "privacy.adaptive-clip-quantile"),
    ({"privacy.mechanism": "bandmf", "privacy.bands": 2, "privacy.accountant": "fl_userdp.accounting.prv:PrvAccountant"},
     "privacy.accountant"),
])
def test_bad_mechanism_keys_are_one_line_errors(flat, key):
    with pytest.raises(ConfigError) as err:
        parse_config(flat)
    assert str(err.value).startswith(key) and "\n" not in str(err.value)


def test_epsilon_and_calibrate_know_the_bands(capsys):
    assert main(["epsilon", *BASE, "--noise-multiplier", "1", "--bands", "4", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["bands"] == 4
    assert data["epsilon"] == epsilon_for([(make_event("uls", 0.05, 1.0), 25)], 1e-5)  # ⌈100/4⌉ participations
    assert main(["epsilon", *BASE, "--noise-multiplier", "1", "--json"]) == 0
    assert "bands" not in json.loads(capsys.readouterr().out)  # the independent payload is unchanged
    assert main(["calibrate", *BASE, "--target-epsilon", "2", "--bands", "4", "--json"]) == 0
    cal = json.loads(capsys.readouterr().out)
    assert cal["epsilon"] <= 2 and epsilon_for([(make_event("uls", 0.05, cal["noise_multiplier"], None, 4), 100)],
                                               1e-5) <= 2
    assert main(["epsilon", *BASE, "--noise-multiplier", "1", "--bands", "0"]) == 2
    assert "--bands must be >= 1" in capsys.readouterr().err


def fake_calibrate(calls):
    def calibrate(mode, eps, delta, q, steps, k, rel_tol=None, bands=1):
        calls.append((mode, q, bands))
        return 2.0, eps
    return calibrate


def test_planner_spends_the_budget_within_a_group_and_scales_the_noise():
    counts = np.full(400, 10)
    calls = []
    plan = make_plan(counts, 100, 64, 4.0, 1e-5, calibrate=fake_calibrate(calls), bands=4)
    one = make_plan(counts, 100, 64, 4.0, 1e-5, calibrate=fake_calibrate([]))
    factor = error_ratio(sqrt_coefficients(4), 64)
    assert plan.bands == 4 and plan.noise_factor == pytest.approx(factor)
    assert all(b == 4 for _, _, b in calls)
    c, c1 = plan.best_uls, one.best_uls
    assert c.sampling_rate == pytest.approx(4 * c1.sampling_rate)        # q within one of 4 groups
    assert c.expected_examples == pytest.approx(100) == c1.expected_examples
    assert c.noise_to_signal == pytest.approx(c1.noise_to_signal * factor)  # same σ, same cohort, less noise
    from fl_userdp.study.planner import format_plan
    assert "privacy.mechanism=bandmf privacy.bands=4" in format_plan(plan)


def test_advisor_knows_the_bands():
    pilot = Pilot(50, {1: 0.05, 4: 0.05}, {1: 0.05, 4: 0.1})
    calls = []
    adv = advise(np.full(400, 10), 40, 64, 4.0, 1e-5, pilot, [1, 4], calibrate=fake_calibrate(calls), bands=4)
    assert adv.bands == 4 and all(b == 4 for _, _, b in calls)
    plain = advise(np.full(400, 10), 40, 64, 4.0, 1e-5, pilot, [1, 4], calibrate=fake_calibrate([]))
    assert adv.best_uls.sampling_rate == pytest.approx(4 * plain.best_uls.sampling_rate)
    assert adv.best_uls.snr > plain.best_uls.snr  # the same σ with correlated noise: a better update


def test_start_line_states_the_memory():
    cfg = parse_config({"privacy.mechanism": "bandmf", "privacy.bands": 16, "train.rounds": 100})
    line = mechanism_line(cfg, 1000)
    assert "b·d = 16·1000 = 16,000 floats" in line
    assert f"{error_ratio(sqrt_coefficients(16), 100):.3f}x" in line and math.isfinite(error_ratio(sqrt_coefficients(16), 100))
