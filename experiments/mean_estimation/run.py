"""Run the mean-estimation sweeps; append one JSON line per (question, setting, mode).

    OMP_NUM_THREADS=1 python experiments/mean_estimation/run.py [--questions epsilon,compute,diversity]
        [--out experiments/mean_estimation/results.jsonl] [--quick]

Noise multipliers come from `accounting.calibrate_noise` and are memoised in
sigma_cache.json (keyed by every input of the calibration) so a rerun skips
them; delete the file to recalibrate from scratch.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import configs  # noqa: E402

from fl_userdp.study import mean_estimation as me  # noqa: E402

CACHE = HERE / "sigma_cache.json"


def commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=HERE, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "fl_userdp", str(HERE)], cwd=HERE,
                               capture_output=True, text=True).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except OSError:
        return "unknown"


def load_cache() -> None:
    if CACHE.exists():
        for key, val in json.loads(CACHE.read_text()).items():
            me._SIGMA_CACHE[tuple(json.loads(key))] = tuple(val)


def save_cache() -> None:
    CACHE.write_text(json.dumps({json.dumps(list(k)): list(v) for k, v in sorted(me._SIGMA_CACHE.items(), key=str)},
                                indent=0))


def spec_of(cfg: dict) -> me.TaskSpec:
    return me.TaskSpec(num_users=cfg["num_users"], dim=cfg["dim"], heterogeneity=cfg["heterogeneity"],
                       diversity=cfg["diversity"], median_examples=cfg["median_examples"],
                       count_log_std=cfg["count_log_std"])


def on_edges(k: int, lr: float, clip: float) -> list[str]:
    """Which chosen hyper-parameters sit on an edge of their tuning grid (k = 1 is a natural bound)."""
    edges = []
    if k == max(configs.K_GRID):
        edges.append("k=max")
    for name, v, g in (("lr", lr, configs.LR_GRID), ("clip", clip, configs.CLIP_GRID)):
        if v == min(g):
            edges.append(f"{name}=min")
        elif v == max(g):
            edges.append(f"{name}=max")
    return edges


def setting(cfg: dict, mode: str, grid, pops: dict) -> dict:
    spec = spec_of(cfg)
    lrs = [g[0] for g in grid]
    clips = [g[1] for g in grid]
    per_k = {}
    for k in configs.K_GRID:
        q = cfg["examples_per_step"] / me.expected_kept(spec, k)
        if q > 1:
            continue
        errs = []
        for seed in configs.TUNE_SEEDS:
            pop = pops.setdefault(seed, me.Population(spec, seed))
            res = me.run(spec, mode, cfg["epsilon"], cfg["delta"], k, sampling_rate=q, steps=cfg["steps"],
                         learning_rates=lrs, clip_norms=clips, seed=seed, population=pop)
            errs.append(res.errors)
        mean = np.mean(errs, axis=0)
        g = int(np.argmin(mean))
        per_k[k] = {"tune_error": float(mean[g]), "learning_rate": lrs[g], "clip_norm": clips[g],
                    "sampling_rate": q, "noise_multiplier": res.noise_multiplier}
    best_k = min(per_k, key=lambda kk: per_k[kk]["tune_error"])
    best = per_k[best_k]
    errors, eps, users = [], None, None
    for seed in configs.EVAL_SEEDS:
        res = me.run(spec, mode, cfg["epsilon"], cfg["delta"], best_k, sampling_rate=best["sampling_rate"],
                     steps=cfg["steps"], learning_rates=best["learning_rate"], clip_norms=best["clip_norm"],
                     seed=seed)
        errors.append(float(res.errors[0]))
        eps, users = res.epsilon, res.user_updates / max(res.steps, 1)
    edges = on_edges(best_k, best["learning_rate"], best["clip_norm"])
    return {"mode": mode, "k": best_k, "grid_edges": edges, **{kk: best[kk] for kk in ("learning_rate", "clip_norm", "sampling_rate",
                                                                  "noise_multiplier")},
            "epsilon_spent": eps, "users_per_step": users, "errors": errors,
            "error_mean": float(np.mean(errors)), "error_std": float(np.std(errors, ddof=1)),
            "tuning": {str(k): v for k, v in per_k.items()}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--questions", default=",".join(configs.QUESTIONS))
    ap.add_argument("--out", default=str(HERE / "results.jsonl"))
    args = ap.parse_args(argv)
    load_cache()
    grid = list(itertools.product(configs.LR_GRID, configs.CLIP_GRID))
    rev = commit()
    t_all = time.time()
    with open(args.out, "a") as out:
        for name in args.questions.split(","):
            q = configs.QUESTIONS[name]
            for value in q["values"]:
                cfg = {**configs.BASE, **q.get("base", {}), q["axis"]: value}
                pops: dict = {}
                for mode in me.MODES:
                    t0 = time.time()
                    rec = setting(cfg, mode, grid, pops)
                    rec.update({"question": name, "axis": q["axis"], "value": value, "config": cfg,
                                "epsilon": cfg["epsilon"], "delta": cfg["delta"], "commit": rev,
                                "grid": {"k": configs.K_GRID, "learning_rate": configs.LR_GRID,
                                         "clip_norm": configs.CLIP_GRID, "tune_seeds": configs.TUNE_SEEDS,
                                         "eval_seeds": configs.EVAL_SEEDS},
                                "seconds": round(time.time() - t0, 2)})
                    out.write(json.dumps(rec) + "\n")
                    out.flush()
                    save_cache()
                    print(f"{name}={value} {mode}: k={rec['k']} lr={rec['learning_rate']} C={rec['clip_norm']} "
                          f"err={rec['error_mean']:.4g}±{rec['error_std']:.2g} ({rec['seconds']}s)"
                          + (f" EDGE {','.join(rec['grid_edges'])}" if rec["grid_edges"] else ""), flush=True)
    print(f"total {time.time() - t_all:.0f}s")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
