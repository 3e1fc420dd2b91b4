"""`flwr run .` (the Flower CLI, as the README shows it) runs the apps for 2 rounds; the superlink it starts is
found as a new `flower-superlink` process whose FLWR_HOME is ours, and stopped by PID."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fl_userdp import report
from ray_procs import superlinks_of

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("flwr", path=str(Path(sys.executable).parent)) is None, reason="no flwr CLI")
def test_flwr_run_two_rounds(tmp_path):
    home, out = tmp_path / "flwr-home", tmp_path / "out"
    home.mkdir()
    (home / "config.toml").write_text('[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = ":local:"\n')
    env = {**os.environ, "FLWR_HOME": str(home), "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
           "OMP_NUM_THREADS": "1",  # `flwr run` starts `flower-superlink` from PATH: this interpreter's own first
           "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")}
    flwr = str(Path(sys.executable).with_name("flwr"))
    try:
        proc = subprocess.run([flwr, "run", ".", "--stream", "--federation-config", "num-supernodes=4",
                               "--run-config", f"train.rounds=2 out='{out}' model.name='linear'"],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
        log = proc.stdout + proc.stderr
        assert proc.returncode == 0, log[-3000:]
        assert "[fl-userdp] uls: 2 rounds" in log and "FutureWarning" not in log, log[-3000:]
        assert "deprecated" not in log.lower(), log[-3000:]
        assert [r["round"] for r in report.read_records(out / report.METRICS)] == [1, 2]
        assert (out / "releases-uls.log").exists() and (out / "summary.json").exists()
    finally:
        for pid in superlinks_of(home):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while superlinks_of(home) and time.monotonic() < deadline:
            time.sleep(0.2)
        for pid in superlinks_of(home):
            os.kill(pid, signal.SIGKILL)
    assert not superlinks_of(home)
