#!/usr/bin/env python
"""ELS vs ULS in the paper's regime: the tiny LM + LoRA on the synthetic user-partitioned corpus at
population scale, through the production round loop (`fl_userdp.simulate`, in-process backend), each
mode tuned on its own grid, at a fixed number of steps and a fixed expected number of examples per step.

    OMP_NUM_THREADS=1 python experiments/lm_regime/run.py [--jobs 2] [--cells main,trend] [--quick]
    OMP_NUM_THREADS=1 python experiments/lm_regime/run.py --long 200    # the ε = 1, B = 64 cells for 200 steps
    python experiments/lm_regime/report.py        # tables, figure, verdicts -> results.md

One line per finished simulation is appended to results.jsonl (keyed; a rerun skips what is there, so
an interrupted study resumes where it stopped). For each cell (N, ε, budget, diversity) and mode:

1. tuning: every (k, C, lr) of GRID on the tuning seed (TUNE_SEED: its own corpus draw and held-out
   users, never a reporting seed); the lowest held-out loss wins;
2. reporting, "tuned C": the winner on each of REPORT_SEEDS;
3. reporting, "adaptive C": the winner's (k, lr), C started at ADAPTIVE_C0 and moved toward the median
   record norm (privacy.adaptive-clip-quantile = 0.5; the count's noise enters the ledger).

Every grid has two points per axis, so every choice sits on an edge; after the cells, each (cell, mode)
gets one run past its lr edge (lr × 4 above the top, ÷ 4 below the bottom; the winner's k and C, tuning
seed): the report says whether the edge held. Then a noise-free reference per (N, budget, diversity,
mode) on reporting seed 0 (σ = 0, the most frequent winner k = 4, C = 1, lr = 0.02; no privacy): what
the same compute learns without noise.

The compute budget B is the expected number of examples per step, the same for both modes:
q = B / Σ_u min(n_u, k) (ULS: q·N users of ≤ k examples each; ELS: q per kept example). σ is calibrated
for ε at δ over all T steps (privacy.target-epsilon). Tuning spends privacy that no ledger here counts,
as is usual in such studies (and as the paper does).
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from experiments.results_log import commit, load  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results.jsonl"

STEPS = 20
DELTA = 1e-6
TUNE_SEED = 100
REPORT_SEEDS = (0, 1, 2)
GRID = {"k": (4, 16), "C": (0.3, 1.0), "lr": (0.02, 0.08)}
ADAPTIVE_C0 = 1.0
DIVERSITY = {"low": 0.1, "high": 0.9}
EPSILONS = (1.0, 4.0, 16.0)
BUDGETS = (64, 1024)
HELDOUT_USERS = 64


def cells(which: str) -> list[dict]:
    """main: N = 100,000 over every ε × budget × diversity; trend: N = 10,000 at ε = 4 (both budgets,
    high diversity), to see how the gap moves with N."""
    out = []
    if "main" in which:
        for eps, budget, div in itertools.product(EPSILONS, BUDGETS, DIVERSITY):
            out.append({"N": 100_000, "eps": eps, "budget": budget, "div": div})
    if "trend" in which:
        for budget in BUDGETS:
            out.append({"N": 10_000, "eps": 4.0, "budget": budget, "div": "high"})
    return out


def cell_name(c: dict) -> str:
    return f"N{c['N']}-eps{c['eps']:g}-B{c['budget']}-{c['div']}"


def sampling_rate(n: int, div: str, k: int, budget: int, seed: int) -> float:
    """q = B / Σ_u min(n_u, k) over this seed's training users."""
    from fl_userdp.config import parse_config
    from fl_userdp.data.synthetic_text import population_counts
    data = parse_config({"data.num-users": n, "data.heldout-users": HELDOUT_USERS,
                         "data.user-diversity": DIVERSITY[div]}).data
    kept = np.minimum(population_counts(data, seed)[:n], k).sum()
    return min(1.0, budget / float(kept))


def run_config(cell: dict, mode: str, k: int, clip: float, lr: float, seed: int, adaptive: bool,
               steps: int) -> dict:
    q = sampling_rate(cell["N"], cell["div"], k, cell["budget"], seed)
    cfg = {"seed": seed, "data.num-users": cell["N"], "data.heldout-users": HELDOUT_USERS,
           "data.user-diversity": DIVERSITY[cell["div"]],
           "privacy.mode": mode, "privacy.target-epsilon": cell["eps"], "privacy.delta": DELTA,
           "privacy.sampling-rate": q, "privacy.max-examples-per-user": k, "privacy.clip-norm": clip,
           "train.rounds": steps, "train.server-lr": lr, "train.eval-every": steps,
           "train.eval-examples": 4096, "sim.users-per-node": cell["N"] // 2}
    if adaptive:
        cfg["privacy.adaptive-clip-quantile"] = 0.5
    return cfg


def simulate_one(key: str, cfg: dict, mode: str) -> dict:
    """One simulation in a worker process: the final held-out loss and what the run used."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch
    torch.set_num_threads(1)
    import fl_userdp
    t0 = time.perf_counter()
    res = fl_userdp.simulate(cfg, modes=[mode], backend="inprocess")
    run = res[mode]
    last = run.records[-1]
    return {"key": key, "eval_loss": last["eval_loss"], "epsilon": run.epsilon, "sigma": run.noise_multiplier,
            "q": cfg["privacy.sampling-rate"], "final_clip": last.get("clip_norm"),
            "users_sampled_mean": float(np.mean([r.get("users_sampled", 0) for r in run.records])),
            "seconds": round(time.perf_counter() - t0, 2), "config": cfg}


def tuned(row: dict) -> tuple[int, float, float]:
    """(k, C, lr) of a finished run's config."""
    c = row["config"]
    return c["privacy.max-examples-per-user"], c["privacy.clip-norm"], c["train.server-lr"]


def best(done: dict[str, dict], cname: str, mode: str) -> dict | None:
    """The tuning winner of (cell, mode): lowest held-out loss over the grid (None until all have run)."""
    rows = [done.get(f"tune|{cname}|{mode}|k{k}|C{c:g}|lr{lr:g}") for k, c, lr in
            itertools.product(GRID["k"], GRID["C"], GRID["lr"])]
    if any(r is None for r in rows):
        return None
    return min(rows, key=lambda r: r["eval_loss"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=2, help="simulations in parallel (one core each)")
    ap.add_argument("--cells", default="main,trend", help="main, trend or both (comma-separated)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--quick", action="store_true", help="smoke run: N = 2,000, 3 steps, one cell")
    ap.add_argument("--long", type=int, default=0, metavar="T",
                    help="after the study: re-run the ε = 1, B = 64 cells with each mode's tuned (k, C, lr) for T "
                         "steps (σ recalibrated for T) on the reporting seeds")
    args = ap.parse_args()
    steps = 3 if args.quick else STEPS
    todo = cells(args.cells)
    if args.quick:
        todo = [{"N": 2_000, "eps": 4.0, "budget": 64, "div": "high"}]
    done = load(args.out)
    rev = commit()

    def record(row: dict) -> None:
        row["commit"] = rev
        done[row["key"]] = row
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"{row['key']}: loss {row['eval_loss']:.4f}  σ {row['sigma']:.3f}  {row['seconds']:.0f} s", flush=True)

    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for cell in todo:
            cname = cell_name(cell)
            jobs = {}
            for mode, (k, c, lr) in itertools.product(("uls", "els"), itertools.product(*GRID.values())):
                key = f"tune|{cname}|{mode}|k{k}|C{c:g}|lr{lr:g}"
                if key not in done:
                    cfg = run_config(cell, mode, k, c, lr, TUNE_SEED, False, steps)
                    jobs[pool.submit(simulate_one, key, cfg, mode)] = key
            for fut in as_completed(jobs):
                record(fut.result())
            jobs = {}
            for mode in ("uls", "els"):
                win = best(done, cname, mode)
                k, c, lr = tuned(win)
                for arm, seed in itertools.product(("tuned", "adaptive"), REPORT_SEEDS):
                    key = f"report|{cname}|{mode}|{arm}|seed{seed}"
                    if key not in done:
                        cfg = run_config(cell, mode, k, ADAPTIVE_C0 if arm == "adaptive" else c, lr, seed,
                                         arm == "adaptive", steps)
                        jobs[pool.submit(simulate_one, key, cfg, mode)] = key
            for fut in as_completed(jobs):
                record(fut.result())
        jobs = {}
        for cell, mode in itertools.product(todo, ("uls", "els")):
            win = best(done, cell_name(cell), mode)
            if win is None:
                continue
            k, c, lr = tuned(win)
            past = lr * 4 if lr == max(GRID["lr"]) else lr / 4
            key = f"edge|{cell_name(cell)}|{mode}|k{k}|C{c:g}|lr{past:g}"
            if key not in done:
                jobs[pool.submit(simulate_one, key, run_config(cell, mode, k, c, past, TUNE_SEED, False, steps),
                                 mode)] = key
        for fut in as_completed(jobs):
            record(fut.result())
        jobs = {}
        for cell, mode, seed in itertools.product(todo if args.long else [], ("uls", "els"), REPORT_SEEDS):
            win = best(done, cell_name(cell), mode)
            if win is None or cell["eps"] != 1.0 or cell["budget"] != 64 or cell["N"] != 100_000:
                continue
            k, c, lr = tuned(win)
            key = f"long|T{args.long}|{cell_name(cell)}|{mode}|seed{seed}"
            if key not in done:
                jobs[pool.submit(simulate_one, key, run_config(cell, mode, k, c, lr, seed, False, args.long),
                                 mode)] = key
        for fut in as_completed(jobs):
            record(fut.result())
        jobs = {}
        for cell in todo:
            for mode in ("uls", "els"):
                key = f"reference|N{cell['N']}-B{cell['budget']}-{cell['div']}|{mode}|k4|C1|lr0.02"
                if key not in done and key not in jobs.values():
                    cfg = run_config(cell, mode, 4, 1.0, 0.02, REPORT_SEEDS[0], False, steps)
                    cfg["privacy.noise-multiplier"] = 0.0
                    jobs[pool.submit(simulate_one, key, cfg, mode)] = key
        for fut in as_completed(jobs):
            record(fut.result())
    return 0


if __name__ == "__main__":
    sys.exit(main())
