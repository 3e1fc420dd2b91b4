"""Budget planner: budget spent exactly, epsilon met, the documented selection rules, CLI contract."""
import json
from pathlib import Path

import numpy as np
import pytest

from fl_userdp.cli import main
from fl_userdp.config import ModelConfig
from fl_userdp.errors import ConfigError
from fl_userdp.study.planner import k_at, make_plan, read_counts

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


# -- units: the plan counts the run's rows of model.seq-len tokens ---------------------------------------
TEXT = Path(__file__).parent / "data" / "fixtures" / "tinyshakespeare_head.txt"
PLAN = ["plan", "--examples-per-step", "4", "--steps", "2", "--epsilon", "4", "--delta", "1e-5",
        "--els-quantiles", "0.5", "--uls-quantiles", "0.5", "--json"]


def _plan(capsys, *args):
    rc = main([*PLAN, *args])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    return json.loads(captured.out)


def test_plan_counts_rows_of_the_set_seq_len(capsys):
    short = _plan(capsys, "--source", str(TEXT), "--set", "model.seq-len=16")
    long = _plan(capsys, "--source", str(TEXT), "--set", "model.seq-len=64")
    assert (short["seq_len"], long["seq_len"]) == (16, 64)
    assert short["num_users"] == long["num_users"]
    assert short["num_examples"] > long["num_examples"]   # the same text cut into shorter rows: more of them
    assert short["count_quantiles"] != long["count_quantiles"]
    assert "rows of 16 tokens (model.seq-len)" in short["k_caps"]
    # --seq-len overrides --set
    assert _plan(capsys, "--source", str(TEXT), "--set", "model.seq-len=64", "--seq-len", "16") == short


def test_plan_default_seq_len_is_the_runs(capsys):
    out = _plan(capsys, "--source", str(TEXT))
    assert out["seq_len"] == ModelConfig().seq_len
    assert main([*PLAN[:-1], "--source", str(TEXT)]) == 0
    assert f"k caps each user's rows of {ModelConfig().seq_len} tokens (model.seq-len)" in capsys.readouterr().out


def test_plan_and_data_stats_read_the_config_file(tmp_path, capsys):
    cfg = tmp_path / "run.toml"
    cfg.write_text(f'seed = 1\n[model]\n"seq-len" = 24\n[data]\nsource = "{TEXT.as_posix()}"\n"num-users" = 7\n'
                   '"heldout-users" = 2\n')
    out = _plan(capsys, "--config", str(cfg))   # the config's data.source counts as the source
    assert (out["seq_len"], out["num_users"], out["source"]) == (24, 7, TEXT.as_posix())
    assert _plan(capsys, "--config", str(cfg), "--seq-len", "48")["seq_len"] == 48   # the option overrides
    assert main(["data-stats", "--config", str(cfg), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert (stats["seq_len"], stats["training_users"], stats["heldout_users"]) == (24, 7, 2)
    assert stats["examples"] == out["num_examples"]


def test_counts_file_takes_the_run_seq_len_and_refuses_a_source_too(tmp_path, capsys):
    (tmp_path / "counts.txt").write_text("1 2 3 4 6 8")
    out = _plan(capsys, "--counts-file", str(tmp_path / "counts.txt"), "--seq-len", "16")
    assert out["seq_len"] == 16 and out["source"] == str(tmp_path / "counts.txt")
    rc = main([*PLAN, "--counts-file", str(tmp_path / "counts.txt"), "--set", "model.seq-len=16"])
    assert rc == 2 and "--counts-file" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["plan", *PLAN[1:], "--source", str(TEXT)], ["data-stats"]])
def test_data_commands_refuse_seq_len_below_two(command, capsys):
    assert main([*command, "--seq-len", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--seq-len" in err[0] and ">= 2" in err[0] and "got 1" in err[0]


def test_run_refuses_seq_len_one(capsys):
    assert main(["run", "--set", "model.seq-len=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.seq-len" in err[0] and "got 1" in err[0]


def test_a_pilot_scores_per_unit_of_measured_signal(tmp_path, capsys):
    """With a pilot, each candidate's NSR is divided by its record's cosine (interpolated in log k), ULS
    takes the lowest such score; the plain NSR output says it leaves out the averaging gain."""
    from fl_userdp.study.advisor import Pilot
    from fl_userdp.study.planner import pilot_cosine

    pilot = Pilot(1000, {1: 0.05, 64: 0.05}, {1: 0.05, 4: 0.1, 16: 0.2, 64: 0.25})
    assert pilot_cosine(pilot, "uls", 8) == pytest.approx(0.15)
    assert pilot_cosine(pilot, "uls", 200) == pytest.approx(0.25)
    plain = make_plan(COUNTS, 40, 100, 4.0, 1e-6, calibrate=fake_calibrate)
    gained = make_plan(COUNTS, 40, 100, 4.0, 1e-6, calibrate=fake_calibrate, pilot=pilot)
    for c in gained.uls:
        assert c.score == pytest.approx(c.noise_to_signal / pilot_cosine(pilot, "uls", c.k))
    assert gained.best_uls == min(gained.uls, key=lambda c: c.score)
    assert all(c.record_cosine is None for c in plain.uls)
    (tmp_path / "c.json").write_text(json.dumps(COUNTS.tolist()))
    (tmp_path / "p.json").write_text(json.dumps({"pilot": pilot.to_dict()}))
    base = ["plan", "--counts-file", str(tmp_path / "c.json"), "--examples-per-step", "40", "--steps", "10",
            "--epsilon", "4", "--delta", "1e-6"]
    assert main(base) == 0
    assert "leaves out the averaging gain" in capsys.readouterr().out
    assert main(base + ["--pilot", str(tmp_path / "p.json")]) == 0
    assert "per unit of signal" in capsys.readouterr().out
