"""Bad input is refused with one line naming the key, exit status 2, never a traceback, nothing run: each case
is one that used to end in a traceback, in silent garbage or in a line naming the wrong key. Every case goes
through the command line's entry point (`fl_userdp.cli.main`) in this process."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from fl_userdp.cli import main

SMALL = {"data.num-users": 12, "data.heldout-users": 2, "sim.users-per-node": 4, "privacy.sampling-rate": 0.5,
         "privacy.noise-multiplier": 1.0, "privacy.max-examples-per-user": 4, "model.vocab-size": 64,
         "model.hidden-size": 16, "model.num-layers": 1, "model.num-heads": 2, "model.seq-len": 16,
         "model.lora-rank": 2, "train.eval-examples": 8, "train.eval-every": 2}
TINY = ["--backend", "inprocess", "--no-progress", "--seed", "7", "--rounds", "2",
        *[arg for key, value in SMALL.items() for arg in ("--set", f"{key}={value}")]]
ADAPTIVE = ["privacy.adaptive-clip-quantile=0.5"]
EPS = ["epsilon", "--mode", "uls", "--sampling-rate", "0.01", "--noise-multiplier", "1", "--steps", "100"]


def jsonl(tmp: Path, name: str, rows: list[str]) -> str:
    path = tmp / name
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return str(path)


def run(*settings: str, command: str = "run", resume: bool = False):
    """argv of a small in-process run (`command`) into tmp/r with `settings` ("key=value") set."""
    return lambda t: [command, *TINY, "--out", str(t / "r"), *(["--resume"] if resume else []),
                      *[arg for setting in settings for arg in ("--set", setting)]]


def rows(n: int = 12) -> list[str]:
    return [json.dumps({"user": f"u{u}", "text": "hello world, " * 6}) for u in range(n)]


# (name, argv builder (tmp folder -> argv), the key the one line must name, more text it must hold)
CASES = [
    ("lone surrogate in a JSONL text",
     lambda t: ["data-stats", "--heldout-users", "2", "--source",
                jsonl(t, "s.jsonl", rows() + ['{"user": "x", "text": "ab\\ud800cd"}'])],
     "data.source", "lone surrogate"),
    ("deeply nested JSON",
     lambda t: ["data-stats", "--heldout-users", "2", "--source",
                jsonl(t, "n.jsonl", rows() + ['{"user": "x", "text": ' + "[" * 100_000 + "]" * 100_000 + "}"])],
     "data.source", "too deeply"),
    ("duplicate JSON keys (were read as one user: 'heldout-users must be < users (1)')",
     lambda t: ["data-stats", "--heldout-users", "2", "--source",
                jsonl(t, "d.jsonl", ['{"user": "u%d", "text": "hello", "user": "same"}' % u for u in range(12)])],
     "data.source", "'user' appears twice"),
    ("duplicate keys in a --counts-file",
     lambda t: ["plan", "--counts-file", jsonl(t, "c.json", ['[1, 2, {"a": 1, "a": 2}]']),
                "--examples-per-step", "8", "--steps", "10", "--epsilon", "4", "--delta", "1e-5"],
     "--counts-file", "appears twice"),
    ("examples-per-user-median = inf", run("data.examples-per-user-median=inf"), "data.examples-per-user-median", ""),
    ("examples-per-user-sigma = 1e6", run("data.examples-per-user-sigma=1e6"), "data.examples-per-user-sigma", ""),
    ("adaptive clipping, count noise 1e9", run(*ADAPTIVE, "privacy.count-noise-multiplier=1e9"),
     "privacy.count-noise-multiplier", "expected count"),
    ("adaptive clipping, clip lr 1e6", run(*ADAPTIVE, "privacy.adaptive-clip-lr=1e6"), "privacy.adaptive-clip-lr", ""),
    ("adaptive clipping, clip lr 1e6, on resume", run(*ADAPTIVE, "privacy.adaptive-clip-lr=1e6", resume=True),
     "privacy.adaptive-clip-lr", ""),
    ("count noise 0.001 (named --noise-multiplier)", run(*ADAPTIVE, "privacy.count-noise-multiplier=0.001"),
     "privacy.count-noise-multiplier", "joint release"),
    ("--out naming a file", lambda t: ["run", *TINY, "--out", jsonl(t, "a-file", ["x"])], "--out", ""),
    ("audit --pipeline --rounds 1", lambda t: ["audit", "--pipeline", "--rounds", "1"], "--rounds", ""),
    ("C = 1e300 with sigma = 1e10 (NaN weights, exit 0, epsilon 0)",
     run("privacy.clip-norm=1e300", "privacy.noise-multiplier=1e10"), "privacy.clip-norm", "standard deviation"),
    ("delta = 1e-320 (named target-epsilon)", run("privacy.delta=1e-320", "privacy.noise-multiplier=auto"),
     "privacy.delta", "[1e-12, 1)"),
    ("delta = 1e-320 on the accountant's command line",
     lambda t: [*EPS, "--delta", "1e-320"], "--delta", "[1e-12, 1)"),
    ("delta >= 1/N in a run (12 training users)", run("privacy.delta=0.1"),
     "privacy.delta", "< 1/N = 0.0833333 for N = 12 training users"),
    ("delta >= 1/N in compare", run("privacy.delta=0.5", command="compare"), "privacy.delta", "< 1/N = 0.0833333"),
    ("more steps than the accountant takes",
     lambda t: [*EPS[:-1], "1000000000000", "--delta", "1e-5"], "--steps", "1,000,000"),
    ("more rounds than the accountant takes", lambda t: [*run()(t), "--rounds", "20000000"], "train.rounds",
     "1,000,000"),
    ("k beyond the accountant's bound", run("privacy.max-examples-per-user=20000"),
     "privacy.max-examples-per-user", "10,000"),
]


@pytest.mark.parametrize("build,key,text", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_refused_with_one_line_naming_the_key(build, key, text, tmp_path, capsys):
    argv = build(tmp_path)
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    lines = err.splitlines()
    assert lines and f"error: {key} " in lines[-1] and text in lines[-1], err
    assert not any("error" in line for line in lines[:-1])  # (console lines of a run may come first)
    assert not (tmp_path / "r" / "metrics.jsonl").exists()  # nothing ran


@pytest.fixture(scope="module")
def one_round(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "r"
    assert main(["run", "--mode", "els", *TINY, "--rounds", "1", "--out", str(out)]) == 0
    return out


def test_a_damaged_metrics_line_refuses_the_resume(one_round, capsys):
    metrics = one_round / "metrics.jsonl"
    text = metrics.read_text()
    metrics.write_text('{"round": 1, garbage\n' + text.split("\n", 1)[1])
    capsys.readouterr()
    assert main(["run", "--mode", "els", *TINY, "--rounds", "2", "--out", str(one_round), "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert "error: --out holds a damaged metrics.jsonl (line 1 is not JSON" in err.splitlines()[-1]
