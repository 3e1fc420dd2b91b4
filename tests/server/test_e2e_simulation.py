"""End to end through Flower's simulation engine on Ray (slow: one shared compare run, one cluster run)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from fl_userdp.records import report
from fl_userdp.cli import main
from ray_procs import actor_pids

pytestmark = pytest.mark.slow

SMALL = ["--set", "data.num-users=16", "--set", "sim.users-per-node=8", "--set", "privacy.sampling-rate=0.5",
         "--set", "train.eval-examples=32", "--set", "train.eval-every=1", "--set", "data.heldout-users=4",
         "--set", "privacy.noise-multiplier=1.0",
         "--no-progress"]


@pytest.fixture(scope="module")
def compare_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    t0 = time.perf_counter()
    rc = main(["compare", "--rounds", "3", "--out", str(out), *SMALL])
    return rc, out, time.perf_counter() - t0


def records(out: Path):
    return report.read_records(out / report.METRICS)


@pytest.mark.parametrize("mode", ["uls", "els"])
def test_compare_runs_each_mode_through_ray(compare_run, mode):
    rc, out, _ = compare_run
    assert rc == 0
    rows = [r for r in records(out) if r["mode"] == mode]
    assert [r["round"] for r in rows] == [1, 2, 3]
    eps = [r["epsilon"] for r in rows]
    assert all(a < b for a, b in zip(eps, eps[1:])) and eps[-1] > 0
    for r in rows:
        assert r["failures"] == 0 and r["rejected"] == 0
        assert r["users_replied"] == r["users_sampled"] and r["eval_loss"] is not None
        assert r["delta"] == 1e-5 and r["clip_norm"] == 1.0 and r["wall_time"] > 0
    assert (out / f"checkpoint-{mode}.npz").exists() and (out / f"releases-{mode}.log").exists()


def test_flower_and_in_process_with_other_sharding_publish_the_same_bits(compare_run, tmp_path):
    """Backend and `sim.users-per-node` are speed only: the same seeded weights, bit for bit."""
    import numpy as np

    from fl_userdp.server.checkpoint import checkpoint_path, load_checkpoint

    rc, out, _ = compare_run
    other = tmp_path / "inprocess"
    assert main(["compare", "--rounds", "3", "--backend", "inprocess", "--out", str(other), *SMALL,
                 "--set", "sim.users-per-node=3"]) == 0
    for mode in ("uls", "els"):
        a = load_checkpoint(checkpoint_path(out, mode))[1]
        b = load_checkpoint(checkpoint_path(other, mode))[1]
        assert sorted(a) == sorted(b)
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=f"{mode} {key}: Flower (8 per node) vs "
                                                                 f"in-process (3 per node)")


def test_compare_writes_summary_and_plot(compare_run):
    rc, out, _ = compare_run
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["modes"]) == {"uls", "els"}
    assert (out / "summary.md").read_text().startswith("# fl-userdp run summary")
    assert (out / "plot.png").stat().st_size > 10_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_node(args: list[str], log_path: Path, env: dict) -> subprocess.Popen:
    ray_bin = str(Path(sys.executable).with_name("ray"))
    return subprocess.Popen([ray_bin, "start", "--block", "--disable-usage-stats", *args],
                            stdout=log_path.open("w"), stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _wait_for(log_path: Path, proc: subprocess.Popen, text: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while text not in log_path.read_text():
        assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()[-3000:]
        time.sleep(0.5)


def _stop(proc: subprocess.Popen) -> None:
    """Stop a `ray start --block` we started (its own process group), by PID."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def test_two_node_ray_cluster_on_loopback(tmp_path):
    """A Ray head and a second Ray node on loopback (own temp dir, free ports), started and stopped here by PID;
    the run attaches with --ray-address, its ClientApp actors run under both raylets, and after one actor is
    SIGKILLed the run heals (a fresh attachment resumes from the release log) and finishes."""
    port = _free_port()
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    head = _ray_node(["--head", f"--port={port}", "--node-ip-address=127.0.0.1", f"--temp-dir={temp_dir}",
                      "--num-cpus=1", "--include-dashboard=false",
                      f"--min-worker-port={port + 100}", f"--max-worker-port={port + 199}"], tmp_path / "head.log", env)
    second = None
    seen: dict[str, set[int]] = {"head": set(), "second": set()}
    try:
        _wait_for(tmp_path / "head.log", head, "Ray runtime started")
        second = _ray_node([f"--address=127.0.0.1:{port}", "--node-ip-address=127.0.0.1", "--num-cpus=1",
                            f"--min-worker-port={port + 200}", f"--max-worker-port={port + 299}"],
                           tmp_path / "second.log", env)
        _wait_for(tmp_path / "second.log", second, "Ray runtime started")
        out, rounds, killed = tmp_path / "out", 8, {}
        stop = threading.Event()

        def watch() -> None:  # which raylet's process tree the actors live in; kill one after round 2
            while not stop.is_set():
                for name, proc in (("head", head), ("second", second)):
                    seen[name].update(actor_pids(proc.pid))
                done = len(report.read_records(out / report.METRICS)) if (out / report.METRICS).exists() else 0
                if done >= 2 and not killed and seen["second"]:
                    victim = sorted(seen["second"])[0]
                    try:
                        os.kill(victim, signal.SIGKILL)
                        killed["after"] = done
                    except ProcessLookupError:
                        pass
                time.sleep(0.1)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            rc = main(["run", "--mode", "uls", "--rounds", str(rounds), "--out", str(out),
                       "--ray-address", f"127.0.0.1:{port}", *SMALL])
        finally:
            stop.set()
            watcher.join(timeout=10)
        assert rc == 0
        assert seen["head"] and seen["second"], seen       # actors ran under both raylets
        recs = records(out)
        assert [r["round"] for r in recs] == list(range(1, rounds + 1))
        assert killed, "no actor of the second node was killed"
        for r in recs[killed["after"] + 3:]:
            assert r["nodes_replied"] >= 0.9 * r["nodes_requested"]
    finally:
        if second is not None:
            _stop(second)
        _stop(head)
        shutil.rmtree(temp_dir, ignore_errors=True)
