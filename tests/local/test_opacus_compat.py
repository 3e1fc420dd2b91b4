"""Importing opacus (its module_utils calls logging.basicConfig) must leave a program's logging as it was: every
opacus import in fl_userdp goes through fl_userdp.local.opacus_compat, and its GroupNorm fix keeps the root
logger too. Run in fresh processes: opacus configures logging once, on its first import."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytest.importorskip("opacus")

PROGRAM = r"""
import logging, sys
from logging import INFO
from flwr.common import log            # Flower's logger: its own handler, records propagate to the root
import torch
{imports}
log(INFO, "one line")
print("ROOT", len(logging.getLogger().handlers), logging.getLogger().level)
"""


def run(imports: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", PROGRAM.format(imports=imports)], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)


def test_opacus_on_its_own_doubles_every_log_line():
    """The failure this guards against (and proof the check below can fail)."""
    out = run("import opacus")
    assert out.returncode == 0, out.stderr
    assert (out.stdout + out.stderr).count("one line") == 2 and "ROOT 1" in out.stdout


def test_the_projects_opacus_imports_and_groupnorm_fix_keep_logging_as_it_was():
    out = run("from fl_userdp.local.opacus_compat import import_opacus, replace_batchnorm\n"
              "net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4))\n"
              "net = replace_batchnorm(net)\n"
              "assert type(net[1]).__name__ == 'GroupNorm', net\n"
              "from fl_userdp.server.dropin import non_weight_arrays\n"
              "assert non_weight_arrays(net) == [], non_weight_arrays(net)\n"
              "import_opacus().GradSampleModule\n")
    assert out.returncode == 0, out.stderr
    assert (out.stdout + out.stderr).count("one line") == 1, out.stdout + out.stderr
    assert "ROOT 0 30" in out.stdout   # no handler added, level WARNING as Python left it


def test_every_opacus_import_goes_through_opacus_compat():
    direct = []
    for folder in ("fl_userdp", "server", "clients"):
        for path in (ROOT / folder).rglob("*.py"):
            if path.name == "opacus_compat.py":
                continue
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
                direct += [f"{path.relative_to(ROOT)}:{node.lineno}" for n in names if n.split(".")[0] == "opacus"]
    assert not direct, direct
