"""The crossover study's report (experiments/crossover/report.py) on a few synthetic log rows: a cell's
epochs come from its own runs' budget, and a prediction that names no mode is never a hit."""
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments" / "crossover"))
import report  # noqa: E402
import run  # noqa: E402

COUNTS = np.array([40] * 20 + [3] * 30 + [1] * 50)


def logged(cell: dict, mode: str, cap: int, lr: float, seed: int, loss: float) -> dict:
    """One results.jsonl row as run.py writes it, for a run at the cell's own budget."""
    q = min(1.0, run.budget_of(cell) / float(np.minimum(COUNTS, cap).sum()))
    cfg = {"seed": seed, "privacy.mode": mode, "privacy.sampling-rate": q, "privacy.max-examples-per-user": cap,
           "train.rounds": run.steps_of(cell), "train.server-lr": lr}
    return {"eval_loss": loss, "sigma": 1.0, "q": q, "epochs": q * run.steps_of(cell), "clipped_fraction_min": 1.0,
            "config": cfg}


def test_epochs_come_from_each_runs_own_budget(monkeypatch):
    monkeypatch.setattr(run, "counts_of", lambda cell, seed: COUNTS)
    for cell in run.cells("smollm2,main"):
        if cell["sim"] not in ("smollm2", "independent") or cell["N"] not in (32, 150):
            continue
        lr = cell.get("lr", 0.02)
        done = {}
        gen = {mode: run.tuning(cell, mode) for mode in ("uls", "els")}
        for mode, g in gen.items():          # answer the tuning search: cap 1 always best, losses fall with lr
            reply = None
            try:
                while True:
                    points = g.send(reply)
                    reply = {}
                    for c, l in points:
                        done[run.tune_key(cell, mode, c, l)] = logged(cell, mode, c, l, run.TUNE_SEED, c - l)
                        reply[(c, l)] = c - l
            except StopIteration as stop:
                cap, lr = stop.value
            seeds = run.SMOLLM2_SEEDS if cell["sim"] == "smollm2" else run.REPORT_SEEDS
            for i, s in enumerate(seeds):
                done[f"report|{run.cell_name(cell)}|{mode}|seed{s}"] = logged(cell, mode, cap, lr, s, 5.0 + 0.01 * i
                                                                              + (0.02 if mode == "els" else 0))
        out = report.analyse(done, {}, cell)
        b = 16 if cell["sim"] == "smollm2" else 64     # run.py's budgets: SmolLM2 cells ran at B = 16
        assert out["epochs4"] == pytest.approx(b * run.steps_of(cell) / np.minimum(COUNTS, 4).sum(), rel=1e-9)


def decided(winner: str, margin: float, caps: tuple[int, int], outcome: str) -> dict:
    pred = {"winner": winner, "margin": margin, "close": abs(margin - 1) < 0.25,
            "els": {"cap": caps[0]}, "uls": {"cap": caps[1]}}
    return {"name": f"{winner}-{margin}-{caps}", "pred": pred, "outcome": outcome,
            "diff": -0.09 if outcome == "els" else 0.09, "se": 0.01, "p": 0.001}


def test_a_coin_flip_is_no_call_and_never_a_hit():
    flips = [decided("els", 1.0000000002, (1, 1), "els"),          # both at cap 1: one algorithm
             decided("uls", 0.99, (1, 1), "uls"),                  # both at cap 1, accountants' σ apart
             decided("els", 1.0000000002, (4, 1), "els")]          # scores equal up to rounding
    real = decided("uls", 0.5, (1, 8), "uls")
    for r in flips:
        assert report.hit_mark(r) == "—"
    assert report.hit_mark(real) == "✓"
    text, misses = report.hit_rate(flips + [real])
    assert "**1 of 1**" in text and not misses
    assert "**0 of 0**" in report.hit_rate(flips)[0]
