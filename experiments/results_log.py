"""What the studies' runners share: the commit a result came from, their keyed JSONL result logs, and one
in-process simulation as a result row (`simulate_row`).

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


def simulate_row(key: str, cfg: dict, spread: bool = False) -> dict:
    """One in-process simulation of `cfg`'s mode, in a worker process: its final held-out loss, ε, σ, q, epochs
    and mean clipped fraction, with `spread` also the smallest clipped fraction and the mean cohort."""
    import os
    import time

    import numpy as np

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch
    torch.set_num_threads(1)
    import fl_userdp
    t0 = time.perf_counter()
    mode = cfg["privacy.mode"]
    run = fl_userdp.simulate(cfg, modes=[mode], backend="inprocess")[mode]
    recs = run.records
    clipped = np.array([r["clipped_fraction"] for r in recs if r.get("clipped_fraction") is not None], dtype=float)
    row = {"key": key, "eval_loss": recs[-1]["eval_loss"], "epsilon": run.epsilon, "sigma": run.noise_multiplier,
           "q": cfg["privacy.sampling-rate"], "epochs": cfg["privacy.sampling-rate"] * cfg["train.rounds"] / cfg.get("privacy.bands", 1),
           "clipped_fraction": float(np.nanmean(clipped)) if clipped.size else None}
    if spread:
        row["clipped_fraction_min"] = float(np.nanmin(clipped)) if clipped.size else None
        row["users_sampled_mean"] = float(np.mean([r.get("users_sampled", 0) for r in recs]))
    row.update({"seconds": round(time.perf_counter() - t0, 2), "config": cfg})
    return row
