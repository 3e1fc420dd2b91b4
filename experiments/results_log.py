"""What the studies' runners share: the commit a result came from, and their keyed JSONL result logs.

A runner appends one JSON line per finished simulation, keyed by `key`; `load` reads them back (the last
line of a key wins), so an interrupted study resumes by skipping what its log already holds.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def commit() -> str:
    """HEAD, with "+dirty" when the library's code differs from it (fl_userdp, server, clients)."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "fl_userdp", "server", "clients"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except OSError:
        return "unknown"


def load(path: Path) -> dict[str, dict]:
    """{key: row} of a result log (empty when it does not exist yet)."""
    if not path.exists():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {r["key"]: r for r in rows}
