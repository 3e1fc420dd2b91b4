"""Budget planner: budget spent exactly, epsilon met, the documented selection rules, CLI contract."""
import json

import numpy as np
import pytest

from fl_userdp.cli import main
from fl_userdp.errors import ConfigError
from fl_userdp.planner import k_at, make_plan, read_counts

COUNTS = np.array([1, 1, 2, 3, 4, 5, 8, 10, 12, 20, 30, 50, 80, 120, 200] * 20)


def fake_calibrate(mode, eps, delta, q, steps, k=None, rel_tol=1e-3):
    """A smooth stand-in: sigma grows with q (sublinearly) and with k for ELS."""
    sigma = 0.5 + 20 * q ** 0.8 * (np.sqrt(k) if mode == "els" else 1.0)
    return sigma, eps * 0.99


def test_budget_is_spent_and_quantile_ks():
    plan = make_plan(COUNTS, 40, 100, 4.0, 1e-6, calibrate=fake_calibrate)
    for c in plan.els + plan.uls:
        kept = np.minimum(COUNTS, c.k).sum()
        assert c.expected_examples == pytest.approx(c.sampling_rate * kept)
        assert c.budget_met and c.expected_examples == pytest.approx(40)
        assert 0 < c.sampling_rate <= 1
    assert [c.k for c in plan.els] == sorted({k_at(COUNTS, q) for q in (0.5, 0.75, 0.9)})


def test_els_picks_lowest_noise_to_signal_and_uls_rule():
    plan = make_plan(COUNTS, 40, 100, 4.0, 1e-6, calibrate=fake_calibrate)
    assert plan.best_els == min(plan.els, key=lambda c: c.noise_to_signal)
    for c in plan.els:
        assert c.noise_to_signal == pytest.approx(c.noise_multiplier / 40)
    for c in plan.uls:
        assert c.noise_to_signal == pytest.approx(c.noise_multiplier / (c.sampling_rate * COUNTS.size))
        assert c.expected_cohort == pytest.approx(c.sampling_rate * COUNTS.size)
    best = min(c.noise_to_signal for c in plan.uls)
    near = [c for c in plan.uls if c.noise_to_signal <= 1.1 * best]
    assert plan.best_uls.k == max(c.k for c in near)


def test_budget_larger_than_data_caps_q_at_one():
    plan = make_plan([1, 2, 3], 100, 10, 4.0, 1e-6, calibrate=fake_calibrate)
    assert plan.best_uls.sampling_rate == 1.0 and not plan.best_uls.budget_met
    assert plan.best_uls.expected_examples == pytest.approx(6)


def test_real_calibration_meets_epsilon():
    counts = np.array([1, 2, 3, 4, 6, 8] * 10)
    plan = make_plan(counts, 20, 5, 2.0, 1e-5, els_quantiles=(0.5,), uls_quantiles=(0.25, 0.75))
    assert plan.els and plan.uls
    for c in plan.els + plan.uls:
        assert 0 < c.epsilon <= 2.0 and c.noise_multiplier > 0
        assert c.expected_examples == pytest.approx(20)


@pytest.mark.parametrize("kw,key", [({"counts": []}, "counts"), ({"counts": [0, 1]}, "counts"),
                                    ({"counts": [1.5]}, "counts"), ({"examples_per_step": 0}, "examples-per-step"),
                                    ({"steps": 0}, "steps"), ({"epsilon": -1}, "epsilon"), ({"delta": 1}, "delta")])
def test_bad_inputs(kw, key):
    args = {"counts": [1, 2], "examples_per_step": 1, "steps": 1, "epsilon": 1.0, "delta": 1e-5}
    args.update(kw)
    with pytest.raises(ConfigError) as err:
        make_plan(args.pop("counts"), calibrate=fake_calibrate, **args)
    assert err.value.key == key


def test_read_counts(tmp_path):
    (tmp_path / "a.txt").write_text("3\n4\n5\n")
    (tmp_path / "b.json").write_text("[1, 2]")
    (tmp_path / "c.txt").write_text("x y")
    assert read_counts(tmp_path / "a.txt").tolist() == [3, 4, 5]
    assert read_counts(tmp_path / "b.json").tolist() == [1, 2]
    with pytest.raises(ConfigError, match="c.txt"):
        read_counts(tmp_path / "c.txt")


def test_cli_plan_json(tmp_path, capsys):
    (tmp_path / "counts.txt").write_text("\n".join(str(c) for c in [1, 2, 3, 4, 6, 8] * 10))
    rc = main(["plan", "--counts-file", str(tmp_path / "counts.txt"), "--examples-per-step", "20", "--steps", "5",
               "--epsilon", "2", "--delta", "1e-5", "--els-quantiles", "0.5", "--uls-quantiles", "0.5", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["best_els"]["epsilon"] <= 2 and out["best_uls"]["epsilon"] <= 2
    assert out["num_users"] == 60


def test_cli_plan_needs_exactly_one_source(capsys):
    assert main(["plan", "--examples-per-step", "2", "--steps", "1", "--epsilon", "1", "--delta", "1e-5"]) == 2
    assert "--counts-file" in capsys.readouterr().err
