"""What a run publishes is labelled: the release (covered by the DP guarantee) vs diagnostics (training users'
data without noise, outside it); with privacy.publish-diagnostics=false no output holds a diagnostic."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from fl_userdp.records import report
from fl_userdp.cli import main
from fl_userdp.records.release_log import log_path, read_log

ARGS = ["compare", "--backend", "inprocess", "--no-progress", "--rounds", "2", "--set", "model.name=linear",
        "--set", "model.dim=8", "--set", "data.num-users=40", "--set", "data.heldout-users=4",
        "--set", "sim.users-per-node=10", "--set", "privacy.sampling-rate=0.3", "--set", "train.eval-every=1"]
DIAGNOSTIC_KEYS = ("train_loss", "users_sampled", "users_replied", "examples_processed", "clipped_fraction",
                   "failures", "nodes_replied", "wall_time")


def lines(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / report.METRICS).read_text().splitlines()]


def all_keys(obj) -> set[str]:
    """Every key at any depth of a JSON value."""
    if isinstance(obj, dict):
        return set(obj).union(*(all_keys(v) for v in obj.values()))
    if isinstance(obj, list):
        return set().union(*(all_keys(v) for v in obj))
    return set()


def test_default_outputs_label_diagnostics(tmp_path, capsys):
    out = tmp_path / "labelled"
    assert main([*ARGS, "--out", str(out)]) == 0
    console = capsys.readouterr()
    for line in lines(out):
        assert set(line) - {"diagnostics"} <= set(report.COVERED)
        assert all(k in line["diagnostics"] for k in DIAGNOSTIC_KEYS)
        assert line["eval_loss"] is not None and line["epsilon"] > 0
    summary = json.loads((out / "summary.json").read_text())
    assert "OUTSIDE the guarantee" in summary["guarantee"]
    for row in summary["modes"].values():
        assert "final_train_loss" in row["diagnostics"] and "final_train_loss" not in row
    assert "## Diagnostics (outside the DP guarantee" in (out / "summary.md").read_text()
    assert "outside the DP guarantee" in console.out and "train*" in console.out
    # the guarantee in one line: the console's last line and the top of summary.md; in full in summary.json
    line = summary["guarantee_line"]
    assert "\n" not in line and line.startswith("guarantee: user-level (ε, δ)-DP at δ = 1e-05")
    eps = {m: report.eps_up(row["epsilon"]) for m, row in summary["modes"].items()}
    assert f"ULS ε = {eps['uls']}, ELS ε = {eps['els']}, all modes together ε = " in line
    for part in ("covers the weights, checkpoints, release log and released fields", "; diagnostics outside;",
                 "seeded (seed 0)", "docs/concepts.md#what-the-guarantee-covers"):
        assert part in line, part
    assert console.err.rstrip("\n").splitlines()[-1] == line
    md = (out / "summary.md").read_text().splitlines()
    assert md[2] == line and md[-1] == summary["guarantee"] and "Limits:" in summary["guarantee"]
    assert report.read_records(out / report.METRICS)[0]["train_loss"] is not None  # readers get them flat


def test_publish_diagnostics_false_writes_only_what_the_guarantee_covers(tmp_path, capsys):
    out = tmp_path / "covered"
    assert main([*ARGS, "--out", str(out), "--set", "privacy.publish-diagnostics=false"]) == 0
    console = capsys.readouterr()
    for line in lines(out):
        assert set(line) <= set(report.COVERED), set(line) - set(report.COVERED)
    keys = set().union(*(all_keys(line) for line in lines(out)), all_keys(json.loads((out / "summary.json").read_text())))
    for key in (*DIAGNOSTIC_KEYS, "diagnostics", "final_train_loss"):
        assert key not in keys, key
    assert "Diagnostics" not in (out / "summary.md").read_text()
    assert "no diagnostics were published" in json.loads((out / "summary.json").read_text())["guarantee"]
    assert "train" not in console.out and "users" not in console.out
    assert " s (a diagnostic)" not in console.err
    line = json.loads((out / "summary.json").read_text())["guarantee_line"]
    assert "; no diagnostics published; seeded (seed 0): research only" in line
    assert console.err.rstrip("\n").splitlines()[-1] == line  # the run ends with the guarantee in one line
    for mode in ("uls", "els"):  # the release log holds releases only
        entries = read_log(log_path(out, mode)).releases
        assert entries and all(set(e) <= {*report.COVERED, "event", "kind", "run_id"} for e in entries)


def test_unknown_record_keys_are_diagnostics_by_default():
    line = report.split_record({"round": 1, "mode": "uls", "epsilon": 1.0, "my_new_stat": 3})
    assert line == {"round": 1, "mode": "uls", "epsilon": 1.0, "diagnostics": {"my_new_stat": 3}}
    assert "my_new_stat" not in report.split_record({"round": 1, "my_new_stat": 3}, publish_diagnostics=False)
    assert report.flat_record(line)["my_new_stat"] == 3


@pytest.mark.parametrize("value", ["maybe", "2"])
def test_bad_publish_diagnostics_value(capsys, tmp_path, value):
    assert main([*ARGS, "--out", str(tmp_path / "x"), "--set", f"privacy.publish-diagnostics={value}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "privacy.publish-diagnostics" in err


def test_the_guarantee_line_states_each_part_and_never_rounds_epsilon_down():
    import math
    import random

    rng = random.Random(0)
    for _ in range(2000):
        value = math.exp(rng.uniform(-8, 8))
        assert float(report.eps_up(value)) >= value
    assert report.eps_up(7.990604865652603) == "7.991" and report.eps_up(7.9901) == "7.991"
    assert report.eps_up(None) == report.eps_up(math.inf) == "inf"
    line = report.guarantee_line({"els": 2.00001}, 1e-6, None, publish_diagnostics=False, secure_mode=True,
                                 banded=True, seed=3)
    assert line.startswith("guarantee: user-level (ε, δ)-DP at δ = 1e-06 (add or remove one user): ELS ε = 2.001;")
    assert "checkpoints and secret-noise-<mode>/ are SECRET" in line and "; no diagnostics published;" in line
    assert "; secure (OS randomness);" in line and "seed" not in line.split("covers")[1].split("full")[0]
    assert "all modes" not in line and "\n" not in line
