"""The README's ways in, each run exactly as printed there (read from README.md, not copied here): the quick
start's main job (`fl-userdp compare --out runs/demo`, whose guarantee line the README shows), the Python API
block (every `# -> TEXT` it shows is what its print prints), and `flwr run .` (from docs/guides/runs.md).
Each runs in a fresh folder (its relative outputs land there); `flwr run .` there has only the project's
pyproject.toml, whose components name the installed `fl_userdp.server.app` / `fl_userdp.clients.app`."""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
RUNS_GUIDE = (ROOT / "docs" / "guides" / "runs.md").read_text()
BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT / "experiments" / "dropin"))
from flower_examples import flwr_env, stop_superlinks, superlinks_of  # noqa: E402  (the `flwr run` helpers)

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PATH": str(BIN) + os.pathsep + os.environ.get("PATH", "")}

pytestmark = pytest.mark.slow


def block_after(heading: str, lang: str, text: str = README) -> str:
    """The first ```lang block after `heading`."""
    start = text.index(heading)
    m = re.compile(rf"```{lang}\n(.*?)```", re.S).search(text, start)
    assert m, f"no {lang} block after {heading!r}"
    return m.group(1)


def quick_start_job() -> list[str]:
    first = block_after("## Quick start", "bash").strip().splitlines()[0]
    job = first.split("&&")[-1].strip()
    assert job.startswith("fl-userdp compare"), job
    return shlex.split(job)


def flwr_command() -> list[str]:
    line = next(ln for ln in block_after("**Flower CLI.**", "bash", RUNS_GUIDE).splitlines()
                if ln.startswith("flwr run ."))
    return shlex.split(line.split("#")[0])


def test_the_quick_start_job_as_printed(tmp_path):
    cmd = quick_start_job()
    out = subprocess.run([str(BIN / cmd[0]), *cmd[1:]], cwd=tmp_path, env=ENV, capture_output=True, text=True,
                         timeout=900)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    summary = json.loads((tmp_path / "runs" / "demo" / "summary.json").read_text())
    assert set(summary["modes"]) == {"uls", "els"}
    assert (tmp_path / "runs" / "demo" / "plot.png").exists()
    shown = block_after("## The guarantee", "").strip()  # the README shows the quick start's guarantee line
    assert shown == summary["guarantee_line"], (shown, summary["guarantee_line"])
    assert shown in out.stdout + out.stderr  # and the run ended with it


def test_the_python_api_block_as_printed(tmp_path, monkeypatch, capsys):
    code = block_after("### Python API", "python")
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "README.md (Python API)", "exec"), scope)  # noqa: S102 - the README's own example
    printed = capsys.readouterr().out.splitlines()
    shown = [ln.split("# ->", 1)[1].strip() for ln in code.splitlines() if "# ->" in ln]
    assert shown and printed[-len(shown):] == shown, (printed, shown)  # what the README says it prints
    res = scope["res"]
    assert list(res) == ["uls", "els"] and len(res["els"].epsilons) == 5
    assert res["els"].records[-1]["round"] == 5 and res["uls"].weights
    assert res.config.out is None and "\n" not in repr(res)


def test_flwr_run_as_printed(tmp_path):
    cmd = flwr_command()
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    home = tmp_path / "flwr-home"
    env = flwr_env(home)
    try:
        out = subprocess.run([str(BIN / "flwr"), *cmd[1:]], cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=600)
        log = out.stdout + out.stderr
        assert out.returncode == 0, log[-3000:]
        assert "[fl-userdp] uls: 2 rounds" in log, log[-3000:]
        assert "FutureWarning" not in log and "deprecated" not in log.lower(), log[-3000:]
        where = re.search(r"outputs in (\S+)", log).group(1).rstrip(";,")
        metrics = (tmp_path / where if not where.startswith("/") else Path(where)) / "metrics.jsonl"
        assert metrics.exists(), log[-2000:]
        assert [json.loads(ln)["round"] for ln in metrics.read_text().splitlines()] == [1, 2]
    finally:
        stop_superlinks(home)
    assert not superlinks_of(home)
