"""SmolLM2-135M + LoRA on Shakespeare users, each mode tuned on its own: the planner's k and q per mode,
then (C, lr) chosen per mode on a small grid on a tuning seed, then reported on other seeds.

    OMP_NUM_THREADS=1 python experiments/llm/tune.py [--shard 0/2]   # resumable; two shards for 2 cores
    python experiments/llm/tune.py --report                          # the table (tuned.md)

For ε in EPSILONS and each mode, `fl-userdp plan` (the run's config, 8 expected examples per step,
20 steps, δ = 1e-5) recommends k and q (ELS: k = the median, q = 8 / Σ min(n_u, k); ULS: the k whose
cohort gives the lowest noise-to-signal). Every (C, lr) of GRID runs on TUNE_SEED (its own 64 held-out
users, samples and noise); the lowest held-out loss wins and runs on REPORT_SEEDS (the seeds of the
untuned table in experiments/README.md, so the two compare seed by seed). σ is calibrated for (ε, δ) over
the run by the same accountant as every run. The runs are `experiments/llm/run.py`'s (the production
round loop over the in-process transport, one shared model per process); outputs under
experiments/llm/runs/tuned/<name>/. Tuning spends privacy that no ledger counts, as usual in such studies.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import run as llm  # noqa: E402

RUNS = HERE / "runs" / "tuned"
EPSILONS = (1.0, 16.0)
GRID = {"C": (0.3, 1.0), "lr": (0.005, 0.02)}
TUNE_SEED = 7
REPORT_SEEDS = (0, 1)
PLAN = RUNS / "plan.json"


def plan(eps: float) -> dict:
    """The planner's best ELS and ULS (k, q) at this ε (cached in plan.json)."""
    cached = json.loads(PLAN.read_text()) if PLAN.exists() else {}
    if str(eps) not in cached:
        model = os.path.expanduser("~/.cache/fl-userdp/smollm2-hf")
        out = subprocess.run([sys.executable, "-m", "fl_userdp", "plan", "--config", str(HERE / "uls_eps1.toml"),
                              "--set", f"model.name={model}", "--examples-per-step", "8", "--steps", "20",
                              "--epsilon", str(eps), "--delta", "1e-5", "--json"],
                             capture_output=True, text=True, check=True).stdout
        got = json.loads(out)
        cached[str(eps)] = {m: {"k": got[f"best_{m}"]["k"], "q": got[f"best_{m}"]["sampling_rate"]}
                            for m in ("uls", "els")}
        PLAN.parent.mkdir(parents=True, exist_ok=True)
        tmp = PLAN.with_suffix(f".{os.getpid()}.tmp")  # two shards may plan at once: never a torn file
        tmp.write_text(json.dumps(cached, indent=1) + "\n")
        os.replace(tmp, PLAN)
    return cached[str(eps)]


def name_of(mode: str, eps: float, clip: float, lr: float, seed: int) -> str:
    return f"{mode}_eps{eps:g}_C{clip:g}_lr{lr:g}_seed{seed}"


def config_for(mode: str, eps: float, clip: float, lr: float, seed: int):
    p = plan(eps)[mode]
    cfg = llm.load_cfg(f"{mode}_eps1", RUNS, [f"privacy.target-epsilon={eps}", f"privacy.clip-norm={clip}",
                                               f"train.server-lr={lr}", f"seed={seed}",
                                               f"privacy.max-examples-per-user={p['k']}",
                                               f"privacy.sampling-rate={p['q']}"])
    return replace(cfg, out=str(RUNS / name_of(mode, eps, clip, lr, seed)))


def final_loss(out: Path) -> float | None:
    from fl_userdp.records import report

    recs = [r for r in report.read_records(out / report.METRICS) if r.get("eval_loss") is not None]
    return recs[-1]["eval_loss"] if recs and recs[-1]["round"] == 20 else None


def winner(mode: str, eps: float) -> tuple[float, float] | None:
    losses = {(c, lr): final_loss(RUNS / name_of(mode, eps, c, lr, TUNE_SEED))
              for c, lr in itertools.product(GRID["C"], GRID["lr"])}
    return None if None in losses.values() else min(losses, key=losses.get)


def report() -> str:
    from fl_userdp.records import report as rep

    old, base = {}, {}
    for seed, root in ((0, HERE / "runs"), (1, HERE / "runs" / "seed1")):
        for mode, eps in itertools.product(("uls", "els"), EPSILONS):
            old[(mode, eps, seed)] = final_loss(root / f"{mode}_eps{eps:g}")
        recs = rep.read_records(root / "base_model" / rep.METRICS)
        base[seed] = recs[-1]["eval_loss"] if recs else None
    lines = ["Held-out loss after 20 rounds (Δ vs that seed's base model); untuned: the shared k = 8, C = 1, "
             "lr 0.005 runs of the table above.", "",
             "| ε | mode | planner k, q | tuned C, lr | seed 0: tuned | untuned | seed 1: tuned | untuned |",
             "|---|---|---|---|---|---|---|---|"]
    for eps, mode in itertools.product(EPSILONS, ("uls", "els")):
        win, p = winner(mode, eps), plan(eps)[mode]
        if win is None:
            continue
        cells = []
        for seed in REPORT_SEEDS:
            new = final_loss(RUNS / name_of(mode, eps, *win, seed))
            was = old.get((mode, eps, seed))
            for x in (new, was):
                cells.append("–" if x is None else f"{x:.4f} ({x - base[seed]:+.4f})" if base.get(seed) else f"{x:.4f}")
        lines.append(f"| {eps:g} | {mode.upper()} | {p['k']}, {p['q']:.6f} | {win[0]:g}, {win[1]:g} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shard", default="0/1", help="i/n: this process runs every n-th job (of each phase)")
    ap.add_argument("--report", action="store_true")
    a = ap.parse_args(argv)
    if a.report:
        text = report()
        (HERE / "tuned.md").write_text(text + "\n")
        print(text)
        return 0
    i, n = (int(x) for x in a.shard.split("/"))

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    import torch
    torch.set_num_threads(1)
    tune = [(m, e, c, lr, TUNE_SEED) for e, m, c, lr in itertools.product(EPSILONS, ("uls", "els"), *GRID.values())]
    for job in tune[i::n]:
        llm.run_one(name_of(*job), config_for(*job), log)
    while True:  # the other shard may still be tuning: wait for every winner
        wins = {(m, e): winner(m, e) for m, e in itertools.product(("uls", "els"), EPSILONS)}
        if None not in wins.values():
            break
        time.sleep(20)
    rep = [(m, e, *wins[(m, e)], s) for e, m, s in itertools.product(EPSILONS, ("uls", "els"), REPORT_SEEDS)]
    for job in rep[i::n]:
        llm.run_one(name_of(*job), config_for(*job), log)
    log("all done")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
