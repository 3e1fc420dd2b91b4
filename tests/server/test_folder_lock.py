"""One run per output folder (fl_userdp.records.folder_lock) and one run id across the folder's files.

* Two `simulate()` calls into one folder at once in one process: the second is refused with one line naming
  the holder (pid, host, run id, start time); the first runs alone and its log holds its releases only.
* A folder held by another process (a tiny snippet that holds the lock and sleeps): `fl-userdp run` into it
  is refused with one line naming that process; once the holder is SIGKILLed the kernel has dropped the
  lock and the folder can be held again.
* The run id is in every file of the run (release log, checkpoint, each metrics.jsonl record,
  summary.json); a folder whose files name different runs is refused on resume, files unchanged.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import fl_userdp
from fl_userdp.cli import main
from fl_userdp.errors import ConfigError
from fl_userdp.records import folder_lock, report
from fl_userdp.records.release_log import ReleaseLog, log_path, read_log
from fl_userdp.server.checkpoint import checkpoint_path, load_checkpoint, save_checkpoint

ROOT = Path(__file__).resolve().parents[2]
CFG = {"data.num-users": 12, "data.heldout-users": 2, "sim.users-per-node": 4, "privacy.sampling-rate": 0.5,
       "privacy.noise-multiplier": 1.0, "privacy.max-examples-per-user": 4, "model.vocab-size": 64,
       "model.hidden-size": 16, "model.num-layers": 1, "model.num-heads": 2, "model.seq-len": 16,
       "model.lora-rank": 2, "train.eval-examples": 8, "train.eval-every": 2, "train.rounds": 3,
       "privacy.secure-mode": "true", "seed": 7}


def cli_args(out: Path, *extra: str) -> list[str]:
    sets = [x for k, v in CFG.items() if k not in ("train.rounds", "seed") for x in ("--set", f"{k}={v}")]
    return ["run", "--mode", "els", "--backend", "inprocess", "--no-progress", "--rounds", "3", "--seed", "7",
            "--out", str(out), *sets, *extra]


def test_hold_is_exclusive_across_threads_joined_by_its_own_thread_and_let_go(tmp_path):
    lock = folder_lock.hold(tmp_path / "out", "a" * 32)
    holder = json.loads((tmp_path / "out" / folder_lock.LOCK_NAME).read_text())
    assert holder["pid"] == os.getpid() and holder["run_id"] == "a" * 32 and holder["host"] and holder["started"]
    inner = folder_lock.hold(tmp_path / "out", "b" * 32)      # the holding thread joins its own hold
    assert inner.run_id == "a" * 32
    inner.release()
    assert folder_lock.held_run_id(tmp_path / "out") == "a" * 32
    errors = []

    def other() -> None:
        try:
            folder_lock.hold(tmp_path / "out", "c" * 32)
        except ConfigError as err:
            errors.append(str(err))

    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert len(errors) == 1 and f"in use by run {'a' * 32} (pid {os.getpid()} on " in errors[0]
    lock.release()
    lock.release()                                            # idempotent
    assert folder_lock.held_run_id(tmp_path / "out") is None
    assert (tmp_path / "out" / folder_lock.LOCK_NAME).read_text() == ""   # cleared, never deleted
    with folder_lock.hold(tmp_path / "out", "d" * 32) as again:
        assert again.run_id == "d" * 32


@pytest.fixture(scope="module")
def one_run(tmp_path_factory):
    """A simulate() into a folder while a second simulate() into it is started from another thread.

    The first run is paused right after its release log started (nothing released yet: the window in which
    a second run's checks all passed before) until the second call has returned."""
    out = tmp_path_factory.mktemp("lock") / "run"
    started, go_on, outcome = threading.Event(), threading.Event(), {}
    start = ReleaseLog.start

    def paused_start(self, *args, **kwargs):
        start(self, *args, **kwargs)
        if threading.current_thread().name == "first":
            started.set()
            go_on.wait(120)

    def first() -> None:
        try:
            outcome["first"] = fl_userdp.simulate(CFG, modes="els", backend="inprocess", out=out)
        except BaseException as err:  # noqa: BLE001 - surfaced by the test
            outcome["first"] = err
        finally:
            started.set()

    ReleaseLog.start = paused_start
    try:
        t = threading.Thread(target=first, name="first")
        t.start()
        assert started.wait(120)
        try:
            outcome["second"] = fl_userdp.simulate(CFG, modes="els", backend="inprocess", out=out)
        except ConfigError as err:
            outcome["second"] = err
        go_on.set()
        t.join(300)
    finally:
        ReleaseLog.start = start
        go_on.set()
    return out, outcome


def test_two_simulations_into_one_folder_at_once_in_one_process(one_run):
    out, outcome = one_run
    first, second = outcome["first"], outcome["second"]
    assert isinstance(second, ConfigError), f"the second run ran: {second!r}"
    assert isinstance(first, fl_userdp.SimulationResult), first
    run_id = read_log(log_path(out, "els")).run["run_id"]
    msg = str(second)
    assert "\n" not in msg and msg.startswith("out is in use by run ") and run_id in msg
    assert f"pid {os.getpid()} on " in msg and "started 20" in msg
    logged = read_log(log_path(out, "els"))
    assert [e["round"] for e in logged.releases] == [1, 2, 3]
    assert {e["run_id"] for e in logged.releases} == {run_id}
    assert len(first["els"].epsilons) == 3


def test_every_file_of_the_run_names_its_run_id(one_run):
    out, _ = one_run
    run_id = read_log(log_path(out, "els")).run["run_id"]
    assert load_checkpoint(checkpoint_path(out, "els"))[0]["run_id"] == run_id
    records = report.read_records(out / report.METRICS)
    assert [r["run_id"] for r in records] == [run_id] * 3
    assert json.loads((out / "summary.json").read_text())["run_id"] == run_id
    assert all("run_id" in json.loads(line) for line in (out / report.METRICS).read_text().splitlines())


@pytest.mark.parametrize("where", ["metrics", "summary", "checkpoint", "summary-without"])
def test_a_folder_whose_files_name_different_runs_is_refused_on_resume(tmp_path, one_run, where):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(one_run[0], out)
    other = "f" * 32
    if where == "metrics":
        lines = (out / report.METRICS).read_text().splitlines()
        lines[1] = json.dumps({**json.loads(lines[1]), "run_id": other})
        (out / report.METRICS).write_text("\n".join(lines) + "\n")
    elif where.startswith("summary"):
        summary = json.loads((out / "summary.json").read_text())
        if where == "summary":
            summary["run_id"] = other
        else:
            del summary["run_id"]
        (out / "summary.json").write_text(json.dumps(summary))
    else:
        meta, arrays = load_checkpoint(checkpoint_path(out, "els"))
        save_checkpoint(checkpoint_path(out, "els"), {**meta, "run_id": other}, arrays)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    with pytest.raises(ConfigError) as err:
        fl_userdp.simulate({**CFG, "train.rounds": 4}, modes="els", backend="inprocess", out=out, resume=True)
    msg = str(err.value)
    assert "\n" not in msg and "mixes runs" in msg and "refusing to resume" in msg
    assert (other in msg) or ("no run id" in msg)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


HOLDER = """
import sys, time
from fl_userdp.records.folder_lock import hold
lock = hold(sys.argv[1], sys.argv[2])  # kept: the open file is the lock
print("held", flush=True)
time.sleep(120)
"""


def test_a_folder_held_by_another_process_is_refused_and_let_go_when_it_dies(tmp_path, capsys):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out), "e" * 32], cwd=ROOT, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(cli_args(out)) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err, err
        assert f"--out is in use by run {'e' * 32} (pid {holder.pid} on " in err
        assert not log_path(out, "els").exists() and not (out / report.METRICS).exists()  # nothing ran
    finally:
        os.kill(holder.pid, signal.SIGKILL)  # a crash: the kernel drops the flock with the process
        holder.wait(30)
    with folder_lock.hold(out, "1" * 32) as lock:
        assert lock.run_id == "1" * 32
    np.testing.assert_equal(read_log(log_path(out, "els")).releases, [])
