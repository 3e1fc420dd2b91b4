"""README.md is a front door that cannot drift: at most 250 lines, the quick start's two commands (the CI
contract), and every command in it tested — each `fl-userdp` line either is the quick start's job (run by
tests/server/test_readme_ways_in.py, with the Python API block and the guarantee line shown) or carries
`# -> TEXT`, and run exactly as printed its output holds TEXT. The drop-in snippet is checked against the API
it calls (it needs a Flower grid to run: its runs are tests/server/test_dropin.py's)."""
from __future__ import annotations

import inspect
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
BIN = Path(sys.executable).parent
QUICK_START = [
    'python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 && '
    'pip install -c constraints.txt -e ".[test,data]" && fl-userdp compare --out runs/demo',
    "python -m pytest -q",
]


def blocks(lang: str, text: str = README) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, re.S)


def commands(block: str) -> list[tuple[str, str | None]]:
    """(command, expected) per command of a bash block: continuation lines joined, `# -> TEXT` split off."""
    out, current = [], ""
    for line in block.splitlines():
        current += line.rstrip()
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        if current.strip():
            cmd, _, comment = current.partition("#")
            expected = comment.split("->", 1)[1].strip() if comment.strip().startswith("->") else None
            out.append((" ".join(cmd.split()), expected))
        current = ""
    return out


CHECKED = [(cmd, exp) for block in blocks("bash") for cmd, exp in commands(block) if exp is not None]


def test_the_readme_is_a_front_door():
    assert len(README.splitlines()) <= 250, len(README.splitlines())
    quick = README[README.index("## Quick start"):]
    assert blocks("bash", quick)[0].strip().splitlines() == QUICK_START
    assert "python -m pytest -q" in (ROOT / ".ci" / "run").read_text()
    for heading in ("## Quick start", "## Three ways in", "### Python API", "### The Flower drop-in",
                    "## What a run writes", "## The guarantee", "## Documentation"):
        assert f"\n{heading}\n" in README, heading


def test_every_command_in_the_readme_is_tested():
    job = QUICK_START[0].split("&&")[-1].strip()
    for block in blocks("bash"):
        for cmd, expected in commands(block):
            if cmd.startswith("fl-userdp "):
                assert expected is not None or cmd == job, f"untested README command: {cmd}"
    assert len(CHECKED) >= 2


@pytest.mark.parametrize("cmd,expected", CHECKED, ids=[c.split()[1] for c, _ in CHECKED])
def test_a_readme_command_prints_what_the_readme_says(cmd, expected, tmp_path):
    (tmp_path / "tests").symlink_to(ROOT / "tests")  # relative paths as from the repository root; outputs here
    argv = shlex.split(cmd)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PATH": str(BIN) + os.pathsep + os.environ.get("PATH", "")}
    out = subprocess.run([str(BIN / argv[0]), *argv[1:]], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    assert expected in out.stdout + out.stderr, (expected, (out.stdout + out.stderr)[-3000:])


def test_the_dropin_snippet_calls_the_api_as_it_is():
    code = blocks("python", README[README.index("### The Flower drop-in"):])[0]
    compile(code, "README.md (drop-in)", "exec")
    from fl_userdp.server.dropin import UserDP

    call = re.search(r"UserDP\(FedAvg\(\),(.*?)\)\n", code, re.S).group(1)
    kwargs = dict(re.findall(r"(\w+)=", call) and [(k, None) for k in re.findall(r"(\w+)=", call)])
    inspect.signature(UserDP).bind(object(), **kwargs)  # every keyword the README passes exists
    assert "strategy.start(grid, initial_arrays, num_rounds=5)" in code
    assert "num_rounds" in inspect.signature(UserDP.start).parameters


def test_the_concepts_page_shows_the_readme_s_tested_guarantee_line():
    shown = blocks("", README[README.index("## The guarantee"):])[0].strip()
    assert shown.startswith("guarantee: user-level (ε, δ)-DP") and "\n" not in shown
    assert f"```\n{shown}\n```" in (ROOT / "docs" / "concepts.md").read_text(encoding="utf-8")
