"""Safe runs through the real CLI (`--backend inprocess`: the same server and node computations, no Ray).

* The release log is the source of truth. A run SIGKILLed right after a release became durable (logged,
  not yet applied or written to metrics.jsonl), between two checkpoints, resumes by replaying the logged
  releases: with secure noise the rounds released before the kill come back identical (same updates, same
  ε), no round is released twice, and the final ε is the ε of the releases actually made.
* With seeded noise a killed and resumed run is bitwise the uninterrupted run.
* Resume refuses, with one line and exit 2, everything it cannot trust: a checkpoint without a ledger, with
  its round edited, unreadable, of another version, mode or weight shape, a checkpoint without its log, a
  compacted log without its checkpoint, another config; a fresh start never overwrites logged releases.
* A budget stop (max-epsilon, and the target ε a σ was calibrated for) happens before the release that
  would pass it; resuming never prints or uses a σ other than the run's own.

Kills are deterministic: a small driver patches the code to SIGKILL its own process at a chosen point.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fl_userdp.records import report
from fl_userdp.accounting import UserLevelAccountant, make_event
from fl_userdp.cli import main
from fl_userdp.records.release_log import log_path, read_log
from fl_userdp.server.checkpoint import checkpoint_path, load_checkpoint, save_checkpoint

ROOT = Path(__file__).resolve().parents[2]
ROUNDS = 10
TINY = ["--mode", "els", "--backend", "inprocess", "--no-progress", "--seed", "7",
        "--set", "data.num-users=12", "--set", "data.heldout-users=2",
        "--set", "sim.users-per-node=4", "--set", "privacy.sampling-rate=0.5",
        "--set", "privacy.noise-multiplier=1.0", "--set", "privacy.max-examples-per-user=4",
        "--set", "model.vocab-size=64", "--set", "model.hidden-size=16", "--set", "model.num-layers=1",
        "--set", "model.num-heads=2", "--set", "model.seq-len=16", "--set", "model.lora-rank=2",
        "--set", "train.eval-examples=8", "--set", "train.eval-every=2", "--set", "train.server-lr=0.05"]

DRIVER = """
import os, signal, sys
kill_at, where = int(sys.argv[1]), sys.argv[2]
if where == "after-log":      # the release is durable; nothing else has seen it
    from fl_userdp.records import release_log
    append = release_log.ReleaseLog.append
    def dying(self, header, update):
        append(self, header, update)
        if header["round"] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
    release_log.ReleaseLog.append = dying
else:                         # mid-round: the nodes were asked, nothing released
    from fl_userdp.server import inprocess
    call = inprocess.InProcessTransport.__call__
    def dying(self, requests, weights):
        if any(r.round == kill_at for r in requests.values()):
            os.kill(os.getpid(), signal.SIGKILL)
        return call(self, requests, weights)
    inprocess.InProcessTransport.__call__ = dying
from fl_userdp.cli import main
sys.exit(main(sys.argv[3:]))
"""


def run_args(out: Path, rounds: int = ROUNDS, *extra: str) -> list[str]:
    return ["run", *TINY, "--rounds", str(rounds), "--out", str(out), *extra]


def records(out: Path) -> list[dict]:
    return report.read_records(out / report.METRICS)


def strip(rec: dict) -> dict:
    return {k: v for k, v in rec.items() if k not in ("wall_time", "run_id")}  # run ids: random per run


def killed_run(out: Path, kill_at: int, where: str, *extra: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(kill_at), where, *run_args(out, ROUNDS, *extra)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]


def els_eps(rounds: int, q: float = 0.5, sigma: float = 1.0, k: int = 4) -> float:
    return UserLevelAccountant(1e-5).compose(make_event("els", q, sigma, k), rounds)


def test_secure_run_killed_after_a_durable_release_resumes_from_the_log(tmp_path, capsys):
    out = tmp_path / "secure"
    extra = ("--set", "privacy.secure-mode=true", "--set", "checkpoint-every=4",
             "--set", "train.server-optimizer=sgd", "--set", "train.server-lr=1.0")
    killed_run(out, 6, "after-log", *extra)
    before = read_log(log_path(out, "els"))
    meta, arrays = load_checkpoint(checkpoint_path(out, "els"))
    assert meta["round"] == 4 and [e["round"] for e in before.releases] == [1, 2, 3, 4, 5, 6]
    assert sorted(before.updates) == [5, 6]                  # compacted at the round-4 checkpoint
    assert [r["round"] for r in records(out)] == [1, 2, 3, 4, 5]   # round 6 never reached metrics.jsonl

    # resume to round 6 only: nothing new is computed; rounds 5 and 6 are the logged releases, replayed
    assert main(run_args(out, 6, "--resume", *extra)) == 0
    meta6, arrays6 = load_checkpoint(checkpoint_path(out, "els"))
    assert meta6["round"] == 6
    np.testing.assert_array_equal(arrays6["weights"], arrays["weights"] - before.updates[5] - before.updates[6])
    recs = records(out)
    assert [r["round"] for r in recs] == [1, 2, 3, 4, 5, 6]
    assert recs[5]["epsilon"] == before.releases[5]["epsilon"] == pytest.approx(els_eps(6), rel=1e-12)
    assert "train_loss" not in recs[5]                          # rebuilt from the log: covered fields only

    # finish: every round released exactly once; ε is that of the 10 releases actually made
    assert main(run_args(out, ROUNDS, "--resume", *extra)) == 0
    after = read_log(log_path(out, "els"))
    assert [e["round"] for e in after.releases] == list(range(1, ROUNDS + 1))
    assert after.releases[:6] == before.releases
    recs = records(out)
    assert [r["round"] for r in recs] == list(range(1, ROUNDS + 1))
    assert recs[-1]["epsilon"] == pytest.approx(els_eps(ROUNDS), rel=1e-12)
    assert load_checkpoint(checkpoint_path(out, "els"))[0]["ledger"]["runs"][0]["count"] == ROUNDS


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted seeded run (in this process: same code, same single thread)."""
    out = tmp_path_factory.mktemp("ref") / "out"
    assert main(run_args(out, ROUNDS, "--set", "checkpoint-every=3")) == 0
    return out


@pytest.mark.parametrize("where", ["after-log", "mid-round"])
def test_seeded_run_killed_then_resumed_is_the_uninterrupted_run(tmp_path, reference, capsys, where):
    out = tmp_path / "killed"
    killed_run(out, 5, where, "--set", "checkpoint-every=3")
    logged = read_log(log_path(out, "els")).last_round
    assert logged == (5 if where == "after-log" else 4)
    assert main(run_args(out, ROUNDS, "--resume", "--set", "checkpoint-every=3")) == 0
    err = capsys.readouterr().err
    assert f"round {logged + 1}:" in err and f"round {logged}:" not in err  # logged rounds were not run again
    got, ref = records(out), records(reference)
    assert [r["round"] for r in got] == list(range(1, ROUNDS + 1))
    skip = {logged} if where == "after-log" else set()   # that record was rebuilt from the log (no diagnostics)
    assert [strip(r) for r in got if r["round"] not in skip] == [strip(r) for r in ref if r["round"] not in skip]
    assert [r["epsilon"] for r in got] == [r["epsilon"] for r in ref]
    np.testing.assert_array_equal(load_checkpoint(checkpoint_path(out, "els"))[1]["weights"],
                                  load_checkpoint(checkpoint_path(reference, "els"))[1]["weights"])


def copy_run(reference: Path, out: Path) -> Path:
    out.mkdir()
    for name in ("metrics.jsonl", "checkpoint-els.npz", "releases-els.log"):
        (out / name).write_bytes((reference / name).read_bytes())
    return checkpoint_path(out, "els")


def refused(capsys, args, *needles) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.mark.parametrize("damage,needle", [
    ("no-ledger", "no privacy ledger"), ("round-edited", f"{ROUNDS} releases but round {ROUNDS - 2}"),
    ("unreadable", "not a readable checkpoint"), ("version", "checkpoint version"),
    ("mode", "another mode"), ("shape", "weights must have shape"),
    ("checkpoint-deleted", "holds no update for round 1"), ("log-deleted", "is missing but a checkpoint exists"),
])
def test_untrustworthy_state_is_refused_by_the_cli(tmp_path, reference, capsys, damage, needle):
    out = tmp_path / "out"
    path = copy_run(reference, out)
    meta, arrays = load_checkpoint(path)
    if damage == "no-ledger":
        save_checkpoint(path, {k: v for k, v in meta.items() if k != "ledger"}, arrays)
    elif damage == "round-edited":
        save_checkpoint(path, {**meta, "round": meta["round"] - 2}, arrays)
    elif damage == "unreadable":
        path.write_bytes(b"PK\x03\x04 broken")
    elif damage == "version":
        save_checkpoint(path, {**meta, "version": 99}, arrays)
        raw = np.load(path)
        payload = {k: raw[k] for k in raw.files}
        payload["meta"] = np.frombuffer(json.dumps({**meta, "version": 99}).encode(), dtype=np.uint8)
        np.savez(path, **payload)
    elif damage == "mode":
        save_checkpoint(path, {**meta, "mode": "uls"}, arrays)
    elif damage == "shape":
        save_checkpoint(path, meta, {**arrays, "weights": arrays["weights"][:-1]})
    elif damage == "checkpoint-deleted":
        path.unlink()
    else:
        log_path(out, "els").unlink()
    before = (out / "metrics.jsonl").read_bytes()
    refused(capsys, run_args(out, ROUNDS + 2, "--resume"), needle)
    assert (out / "metrics.jsonl").read_bytes() == before  # nothing was run or rewritten


def test_other_config_and_fresh_start_over_releases_are_refused(tmp_path, reference, capsys):
    out = tmp_path / "out"
    copy_run(reference, out)
    refused(capsys, run_args(out, ROUNDS + 2, "--resume", "--set", "privacy.clip-norm=0.5"),
            "privacy.clip-norm", "refusing to resume")
    refused(capsys, run_args(out, ROUNDS + 2, "--resume", "--set", "privacy.noise-multiplier=2"),
            "privacy.noise-multiplier")
    args = run_args(out, ROUNDS + 2, "--resume")
    at = args.index("privacy.noise-multiplier=1.0")
    refused(capsys, args[:at - 1] + args[at + 1:], "privacy.noise-multiplier", "the run's fixed σ", "=1.0")
    before = read_log(log_path(out, "els")).releases
    refused(capsys, run_args(out), "--out", "already holds 10 released els rounds", "--resume")
    assert read_log(log_path(out, "els")).releases == before


def test_budget_stop_through_the_cli(tmp_path, capsys):
    """max-epsilon between the accountant's ε after 2 and after 3 rounds: exactly 2 rounds are released."""
    eps = [els_eps(r) for r in (1, 2, 3)]
    max_eps = (eps[1] + eps[2]) / 2
    out = tmp_path / "out"
    assert main(run_args(out, 6, "--set", f"privacy.max-epsilon={max_eps!r}")) == 0
    err = capsys.readouterr().err
    recs = records(out)
    assert [r["round"] for r in recs] == [1, 2] and len(read_log(log_path(out, "els")).releases) == 2
    assert recs[-1]["epsilon"] == pytest.approx(eps[1], rel=1e-9) and recs[-1]["epsilon"] <= max_eps
    assert "max-epsilon" in recs[-1]["stop_reason"] and "stopped after round 2" in recs[-1]["stop_reason"]
    assert "stop_reason" not in recs[0] and recs[-1]["eval_loss"] is not None  # the final weights are evaluated
    summary = json.loads((out / "summary.json").read_text())
    row = summary["modes"]["els"]
    assert row["rounds"] == 2 and row["epsilon"] == recs[-1]["epsilon"] and "max-epsilon" in row["stop_reason"]
    assert any("max-epsilon" in s for s in summary["stop_reasons"])
    assert "stopped" in err and "round 3 would take epsilon" in err and f"ε = {recs[-1]['epsilon']:.4f}" in err
    # the checkpoint holds the 2 releases; resuming with the same budget releases nothing more
    assert load_checkpoint(checkpoint_path(out, "els"))[0]["round"] == 2
    assert main(run_args(out, 6, "--resume", "--set", f"privacy.max-epsilon={max_eps!r}")) == 0
    assert [r["round"] for r in records(out)] == [1, 2]
    # a larger budget on resume continues the same ledger (no reset): round 3 has exactly eps[2]
    assert main(run_args(out, 6, "--resume", "--set", f"privacy.max-epsilon={eps[2] * 1.0001!r}")) == 0
    recs = records(out)
    assert [r["round"] for r in recs] == [1, 2, 3] and recs[2]["epsilon"] == pytest.approx(eps[2], rel=1e-9)
    assert "stop_reason" not in recs[1] and "max-epsilon" in recs[2]["stop_reason"]


def calibrated(out: Path, rounds: int, *extra: str) -> list[str]:
    args = ["privacy.noise-multiplier=auto" if a == "privacy.noise-multiplier=1.0" else a
            for a in run_args(out, rounds, *extra)]
    return [*args, "--set", "privacy.target-epsilon=2"] if "privacy.target-epsilon=3" not in extra else args


def test_a_calibrated_target_is_the_budget_and_resume_keeps_sigma(tmp_path, capsys):
    out = tmp_path / "auto"
    assert main(calibrated(out, 4)) == 0
    err = capsys.readouterr().err
    recs = records(out)
    sigma = read_log(log_path(out, "els")).run["noise_multiplier"]
    assert f"σ = {sigma:.4g} (for ε=2, also the run's budget)" in err
    # calibrated end to end: all 4 rounds released, ending at the target and never above it
    assert [r["round"] for r in recs] == [1, 2, 3, 4] and 1.95 <= recs[-1]["epsilon"] <= 2.0
    assert recs[-1]["epsilon"] == pytest.approx(els_eps(4, sigma=sigma), rel=1e-12)
    # resumed for ten times the rounds: σ stays the run's (and is the one printed), the target stops it
    assert main(calibrated(out, 40, "--resume")) == 0
    err = capsys.readouterr().err
    assert f"σ = {sigma:.4g} (the resumed run's)" in err and err.count("σ = ") == 1
    assert "target-epsilon 2" in err and "stopped after round 4" in err
    assert [r["round"] for r in records(out)] == [1, 2, 3, 4] and records(out)[-1]["epsilon"] <= 2.0
    # the target is the budget: resuming with another one is refused
    refused(capsys, calibrated(out, 40, "--resume", "--set", "privacy.target-epsilon=3"), "privacy.target-epsilon")


def test_releases_the_log_lost_or_a_fresh_start_over_a_checkpoint_are_refused(tmp_path, reference, capsys):
    out = tmp_path / "out"
    copy_run(reference, out)
    log = log_path(out, "els")
    blob = log.read_bytes()
    # the log lost its last releases (truncated at an entry boundary) while metrics.jsonl had published them
    contents = read_log(log)
    from fl_userdp.records.release_log import ReleaseLog
    short = ReleaseLog(tmp_path / "short.log")
    short.start(contents.run, contents.run["run_id"])
    for entry in contents.releases[:7]:
        short.append(entry, contents.updates.get(entry["round"], np.zeros(1)))
    log.write_bytes(short.path.read_bytes())
    refused(capsys, run_args(out, ROUNDS + 2, "--resume"), "releases were made that the log lost")
    # a fresh start where a checkpoint (or metrics) of the mode remains, even without the log
    log.unlink()
    refused(capsys, run_args(out), "--out", "already holds a els checkpoint")
    log.write_bytes(blob)


def test_a_release_log_from_another_run_is_refused(tmp_path, capsys):
    """Two runs of one config into two folders; the second's log copied over the first's (whose checkpoint
    stays): the run ids differ, so the resume is refused instead of replaying a foreign log."""
    import shutil

    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        assert main(run_args(out, 2)) == 0
    capsys.readouterr()
    shutil.copy(log_path(b, "els"), log_path(a, "els"))
    refused(capsys, run_args(a, 4, "--resume"), "belongs to another run")


def entry_offsets(data: bytes) -> list[int]:
    import struct

    offsets, pos = [], 0
    while pos < len(data):
        offsets.append(pos)
        _, hlen, plen = struct.unpack_from("<4sIQ", data, pos)
        pos += 16 + hlen + plen + 32
    return offsets


@pytest.mark.parametrize("case", ["middle-length,metrics-lost", "first-length,metrics+checkpoint-lost",
                                  "torn-tail,metrics-lost,checkpoint-ahead", "boundary-cut,metrics+checkpoint-lost"])
def test_a_refused_resume_leaves_the_release_log_as_it_was(tmp_path, reference, capsys, case):
    """A damaged length field in a middle entry is not a torn tail: cutting there would forget released
    rounds, and without the checkpoint a resume would release them again with fresh noise. Refused with one
    line naming the byte; and every refused resume (here also a genuinely torn tail behind a checkpoint that
    is ahead of the log, and a log cut at an entry boundary that the summary contradicts) leaves the log
    byte for byte as it was: the cut of a torn tail is the resume's last step."""
    out = tmp_path / "out"
    copy_run(reference, out)
    log = log_path(out, "els")
    data = bytearray(log.read_bytes())
    offsets = entry_offsets(bytes(data))
    if "length" in case:  # the header length of round 3's entry (or round 1's) now points past the end
        at = offsets[3] if case.startswith("middle") else offsets[1]
        data[at + 4: at + 8] = (int.from_bytes(data[at + 4: at + 8], "little") + 10 ** 6).to_bytes(4, "little")
        needles = ("is damaged", f"at byte {at}", "intact entry follows")
    elif case.startswith("torn-tail"):  # round 10's entry cut short; the checkpoint holds round 10
        data = data[:-5]
        needles = ("is at round 10 but the release log ends at round 9",)
    else:  # a shorter valid log (the run entry alone), but the summary reported 10 released rounds
        data = data[:offsets[1]]
        (out / "summary.json").write_bytes((reference / "summary.json").read_bytes())
        needles = ("ends at round 0 but summary.json holds els round 10", "releases were made that the log lost")
    log.write_bytes(bytes(data))
    if "metrics" in case:
        (out / "metrics.jsonl").unlink()
    if "checkpoint-lost" in case:
        checkpoint_path(out, "els").unlink()
    refused(capsys, run_args(out, ROUNDS + 2, "--resume"), *needles)
    assert log.read_bytes() == bytes(data)
    assert not (out / "metrics.jsonl").exists() or "metrics" not in case   # nothing was released
    if "length" in case:  # nor may a fresh start replace the damaged log (the only record of those releases)
        refused(capsys, run_args(out, ROUNDS + 2), "--out already holds")
        assert log.read_bytes() == bytes(data)
