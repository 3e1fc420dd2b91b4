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
import time
from pathlib import Path

import pytest

from fl_userdp import report
from fl_userdp.cli import main

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


def test_attach_to_a_running_ray_cluster(tmp_path):
    """Start our own head node (own temp dir and port), run 2 rounds through it, stop that node."""
    port = _free_port()
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    log = open(tmp_path / "head.log", "w")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    ray_bin = str(Path(sys.executable).with_name("ray"))
    head = subprocess.Popen([ray_bin, "start", "--head", "--block", f"--port={port}", "--node-ip-address=127.0.0.1",
                             f"--temp-dir={temp_dir}", "--num-cpus=2", "--include-dashboard=false",
                             "--disable-usage-stats"], stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 120
        while "Ray runtime started" not in (tmp_path / "head.log").read_text():
            assert head.poll() is None and time.monotonic() < deadline, (tmp_path / "head.log").read_text()
            time.sleep(0.5)
        out = tmp_path / "out"
        rc = main(["run", "--mode", "uls", "--rounds", "2", "--out", str(out),
                   "--ray-address", f"127.0.0.1:{port}", *SMALL])
        assert rc == 0
        assert [r["round"] for r in records(out)] == [1, 2]
    finally:
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait(timeout=30)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)
