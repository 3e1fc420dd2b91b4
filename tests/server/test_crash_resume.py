"""Safe runs through the real CLI (`--backend inprocess`: the same server and node computations, no Ray).

* a run killed with SIGKILL after its round-3 checkpoint and resumed with `--resume` gives the same
  metrics (ε trajectory, losses) and bitwise the same final weights as an uninterrupted run;
* metrics.jsonl then holds exactly one record per round, whatever the killed run left behind;
* a checkpoint with its ledger removed, or with its round edited, is refused: exit 2, one line;
* `--set privacy.max-epsilon=...` stops before the release that would pass it, says so, records the final ε.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fl_userdp.accounting import UserLevelAccountant, make_event
from fl_userdp.cli import main
from server.checkpoint import checkpoint_path, load_checkpoint, save_checkpoint

ROOT = Path(__file__).resolve().parents[2]
ROUNDS = 12  # rounds take ~0.2 s here: after the round-3 checkpoint the killed run has seconds left
TINY = ["--mode", "els", "--backend", "inprocess", "--no-progress", "--seed", "7",
        "--set", "checkpoint-every=1", "--set", "data.num-users=12", "--set", "data.heldout-users=2",
        "--set", "sim.users-per-node=4", "--set", "privacy.sampling-rate=0.5",
        "--set", "privacy.noise-multiplier=1.0", "--set", "privacy.max-examples-per-user=4",
        "--set", "model.vocab-size=64", "--set", "model.hidden-size=16", "--set", "model.num-layers=1",
        "--set", "model.num-heads=2", "--set", "model.seq-len=16", "--set", "model.lora-rank=2",
        "--set", "train.eval-examples=8", "--set", "train.eval-every=2", "--set", "train.server-lr=0.05"]


def run_args(out: Path, rounds: int = ROUNDS, *extra: str) -> list[str]:
    return ["run", *TINY, "--rounds", str(rounds), "--out", str(out), *extra]


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def final_weights(out: Path) -> np.ndarray:
    meta, arrays = load_checkpoint(checkpoint_path(out, "els"))
    assert meta["round"] == ROUNDS
    return arrays["weights"]


def strip(rec: dict) -> dict:
    return {k: v for k, v in rec.items() if k != "wall_time"}


def kill_after_checkpoint(out: Path, at_round: int, timeout: float = 240.0) -> int:
    """Start the run as a subprocess; SIGKILL it once checkpoint-els.npz holds round >= at_round."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    log = (out.parent / f"{out.name}.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "fl_userdp", *run_args(out)], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    ckpt, end = checkpoint_path(out, "els"), time.monotonic() + timeout
    try:
        while time.monotonic() < end and proc.poll() is None:
            if ckpt.exists():
                try:
                    rnd = load_checkpoint(ckpt)[0]["round"]
                except Exception:  # written atomically, but be lenient while polling
                    rnd = 0
                if rnd >= at_round:
                    os.kill(proc.pid, signal.SIGKILL)
                    break
            time.sleep(0.02)
        assert proc.wait(timeout=30) == -signal.SIGKILL, \
            f"the run ended before it could be killed:\n{(out.parent / f'{out.name}.log').read_text()[-2000:]}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    return load_checkpoint(ckpt)[0]["round"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run (in this process: same code, same single thread)."""
    out = tmp_path_factory.mktemp("ref") / "out"
    assert main(run_args(out)) == 0
    return out


def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path, reference, capsys):
    out = tmp_path / "killed"
    k = kill_after_checkpoint(out, at_round=3)
    assert 3 <= k < ROUNDS
    left = records(out) if (out / "metrics.jsonl").exists() else []
    assert [r["round"] for r in left][:k] == list(range(1, k + 1))
    eps_at_k = left[k - 1]["epsilon"]
    # what a crash may leave after the checkpoint: the next round's record, and a line cut mid-write
    with (out / "metrics.jsonl").open("a") as fh:
        fh.write(json.dumps({**left[k - 1], "round": k + 1, "epsilon": 0.0}) + "\n")
        fh.write('{"round": 99, "mode": "els", "epsil')

    assert main(run_args(out, ROUNDS, "--resume")) == 0
    err = capsys.readouterr().err
    got, ref = records(out), records(reference)
    assert [r["round"] for r in got] == list(range(1, ROUNDS + 1))  # exactly one record per round
    # the ledger continued: round k+1 composes on top of the checkpoint's k releases
    assert got[k]["epsilon"] > eps_at_k == got[k - 1]["epsilon"]
    assert f"round {k + 1}:" in err and "round 1:" not in err  # rounds 1..k were not run again
    # same ε trajectory and metrics as the uninterrupted run (bitwise: same floats), same final weights
    assert [r["epsilon"] for r in got] == [r["epsilon"] for r in ref]
    assert [strip(r) for r in got] == [strip(r) for r in ref]
    np.testing.assert_array_equal(final_weights(out), final_weights(reference))


@pytest.mark.parametrize("damage", ["no-ledger", "round-edited", "checkpoint-deleted"])
def test_untrustworthy_checkpoint_is_refused_by_the_cli(tmp_path, reference, capsys, damage):
    out = tmp_path / "out"
    out.mkdir()
    for name in ("metrics.jsonl", "checkpoint-els.npz"):
        (out / name).write_bytes((reference / name).read_bytes())
    path = checkpoint_path(out, "els")
    meta, arrays = load_checkpoint(path)
    if damage == "no-ledger":
        save_checkpoint(path, {k: v for k, v in meta.items() if k != "ledger"}, arrays)
    elif damage == "round-edited":
        save_checkpoint(path, {**meta, "round": meta["round"] - 2}, arrays)
    else:
        path.unlink()
    before = (out / "metrics.jsonl").read_bytes()
    assert main(run_args(out, ROUNDS + 2, "--resume")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "refusing to resume" in err and str(path) in err
    assert {"no-ledger": "no privacy ledger", "round-edited": f"{ROUNDS} releases but round {ROUNDS - 2}",
            "checkpoint-deleted": "budget would reset"}[damage] in err
    assert (out / "metrics.jsonl").read_bytes() == before  # nothing was run or rewritten


def test_other_config_is_refused_by_the_cli(tmp_path, reference, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "checkpoint-els.npz").write_bytes((reference / "checkpoint-els.npz").read_bytes())
    assert main(run_args(out, ROUNDS + 2, "--resume", "--set", "privacy.clip-norm=0.5")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "privacy.clip-norm" in err and "refusing to resume" in err


def test_budget_stop_through_the_cli(tmp_path, capsys):
    """max-epsilon between the accountant's ε after 2 and after 3 rounds: exactly 2 rounds are released."""
    acc = UserLevelAccountant(1e-5, "pld")
    event = make_event("els", 0.5, 1.0, 4)
    eps = [acc.compose(event) for _ in range(3)]
    max_eps = (eps[1] + eps[2]) / 2
    out = tmp_path / "out"
    assert main(run_args(out, 6, "--set", f"privacy.max-epsilon={max_eps!r}")) == 0
    err = capsys.readouterr().err
    recs = records(out)
    assert [r["round"] for r in recs] == [1, 2]
    assert recs[-1]["epsilon"] == pytest.approx(eps[1], rel=1e-9) and recs[-1]["epsilon"] <= max_eps
    assert "max-epsilon" in recs[-1]["stop_reason"] and "stopped after round 2" in recs[-1]["stop_reason"]
    assert "stop_reason" not in recs[0]
    summary = json.loads((out / "summary.json").read_text())
    row = summary["modes"]["els"]
    assert row["rounds"] == 2 and row["epsilon"] == recs[-1]["epsilon"] and "max-epsilon" in row["stop_reason"]
    assert any("max-epsilon" in s for s in summary["stop_reasons"])
    assert "stopped" in err and "round 3 would take epsilon" in err and f"ε = {recs[-1]['epsilon']}" in err
    # the checkpoint holds the 2 releases; resuming with the same budget releases nothing more
    assert load_checkpoint(checkpoint_path(out, "els"))[0]["round"] == 2
    assert main(run_args(out, 6, "--resume", "--set", f"privacy.max-epsilon={max_eps!r}")) == 0
    assert [r["round"] for r in records(out)] == [1, 2]
    # a larger budget on resume continues the same ledger (no reset): round 3 has exactly eps[2]
    assert main(run_args(out, 6, "--resume", "--set", f"privacy.max-epsilon={eps[2] * 1.0001!r}")) == 0
    recs = records(out)
    assert [r["round"] for r in recs] == [1, 2, 3] and recs[2]["epsilon"] == pytest.approx(eps[2], rel=1e-9)
    assert "stop_reason" not in recs[1] and "max-epsilon" in recs[2]["stop_reason"]
