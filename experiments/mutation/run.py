#!/usr/bin/env python
"""Mutation testing of the privacy-critical modules (mutmut 3; not part of the default test suite).

    pip install -e '.[mutation]'                        # mutmut==3.8.1
    OMP_NUM_THREADS=1 python experiments/mutation/run.py   # fresh run: about an hour on one core
    python experiments/mutation/run.py --report         # only the score of the last run (mutants/)
    python experiments/mutation/run.py --keep 'fl_userdp.mechanism.noise.*'   # re-test some mutants of the last run

What is mutated and which tests run is configured in pyproject.toml [tool.mutmut]: the modules
fl_userdp/{aggregate,clipping,noise,sampling,validation}.py, fl_userdp/accounting/events.py and
server/strategy.py; for each mutant mutmut runs (with -x) only those of the listed fast tests that reach
the mutated function. Work files go to mutants/ (git-ignored).

Prints the score (killed / timeout / survived / no tests / ...) and checks every surviving mutant
against the table of docs/results/mutation-testing.md ("Mutation testing of the privacy-critical modules"): a
survivor must be listed there with a one-line reason (an equivalent or harmless mutant). Exits 1 when a
survivor is unexplained (its diff is printed), 0 otherwise; explained mutants that no longer survive are
listed as stale.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "docs" / "results" / "mutation-testing.md"
SECTION = "# Mutation testing of the privacy-critical modules"
DETECTED = {"killed", "timeout", "caught by type check", "segfault"}
UNRUN = {"not checked", "check was interrupted by user"}


def status_of(code) -> str:
    from mutmut.stats import status_by_exit_code
    return status_by_exit_code[code]


def results() -> dict[str, str]:
    """mutant name -> status, from the .meta files of the last run."""
    out: dict[str, str] = {}
    for meta in sorted((ROOT / "mutants").rglob("*.py.meta")):
        for name, code in json.loads(meta.read_text())["exit_code_by_key"].items():
            out[name] = status_of(code)
    return out


def explained() -> dict[str, str]:
    """mutant name -> reason, from the table rows of the results page (first column: `name`)."""
    text = README.read_text()
    start = text.find(SECTION)
    if start < 0:
        return {}
    end = text.find("\n## ", start + len(SECTION))
    rows = {}
    for line in text[start:end if end > 0 else None].splitlines():
        m = re.match(r"\|\s*`([^`]+)`\s*\|.*\|\s*([^|]+?)\s*\|\s*$", line)
        if m:
            rows[m.group(1)] = m.group(2)
    return rows


def show(name: str) -> str:
    r = subprocess.run(["mutmut", "show", name], cwd=ROOT, capture_output=True, text=True)
    return "\n".join(l for l in r.stdout.splitlines() if re.match(r"^[-+](?![-+])", l))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mutants", nargs="*", help="mutant names or globs to (re-)test (implies --keep)")
    ap.add_argument("--keep", action="store_true", help="reuse mutants/ from the last run")
    ap.add_argument("--report", action="store_true", help="do not run; score the last run")
    ap.add_argument("--max-children", type=int, default=1, help="parallel mutant runs (default 1)")
    args = ap.parse_args()
    os.chdir(ROOT)
    if not args.report:
        if not (args.keep or args.mutants):
            shutil.rmtree(ROOT / "mutants", ignore_errors=True)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        rc = subprocess.run(["mutmut", "run", "--max-children", str(args.max_children), *args.mutants],
                            env=env).returncode
        if rc != 0:
            print(f"mutmut run failed (exit {rc})", file=sys.stderr)
            return rc
    res, why = results(), explained()
    if not res:
        print("no results in mutants/: run without --report first", file=sys.stderr)
        return 2
    counts = Counter(res.values())
    unrun = sorted(n for n, s in res.items() if s in UNRUN)
    undetected = sorted(n for n, s in res.items() if s not in DETECTED | UNRUN)
    unexplained = [n for n in undetected if n not in why]
    stale = sorted(n for n in why if res.get(n) in DETECTED or n not in res)
    detected = sum(counts[s] for s in DETECTED)
    print(f"\nmutants: {len(res)}  " + "  ".join(f"{s}: {c}" for s, c in sorted(counts.items())))
    print(f"score: {detected}/{len(res)} detected ({100 * detected / len(res):.1f}%); "
          f"{len(undetected)} not detected, {len(undetected) - len(unexplained)} of them explained in "
          f"docs/results/mutation-testing.md, {len(unexplained)} unexplained")
    if unrun:
        print(f"INCOMPLETE: {len(unrun)} mutants were not run (interrupted?); run again with --keep")
    for n in stale:
        print(f"stale explanation (mutant now {res.get(n, 'gone')}): {n}")
    for n in unexplained:
        print(f"\nUNEXPLAINED {res[n]}: {n}\n{show(n)}")
    return 1 if unexplained or unrun else 0


if __name__ == "__main__":
    sys.exit(main())
