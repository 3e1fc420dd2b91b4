#!/usr/bin/env python
"""ELS or ULS across the predicted boundary: compute in epochs, ε, caps tuned per mode, and the advisor.

    OMP_NUM_THREADS=1 python experiments/crossover/run.py --jobs 2 [--cells main,diversity,shakespeare]
    python experiments/crossover/report.py           # tables, figure, advisor hit rate -> README section

Design (one cell = a population N, an ε, a corpus):

* **Compute** is fixed per run: B = 64 expected examples per step for T = 100 steps. The cell's
  compute in *epochs* (q·T: passes over the kept data) is moved by the population: the same B·T is
  0.02 epochs of 100,000 users and about 12 epochs of 150 (at a cap of 4; each mode's own cap gives
  its own q·T, which is logged). σ is calibrated per run for (ε, δ = 1e-6) over the T steps.
* **Records** are clipped at C = 0.02, below every example's and user mean's gradient norm in these
  runs (the clipped fraction of every run is logged), so C only scales and no C search is needed.
* **Tuning per mode and cell, on the tuning seed** (its own corpus draw and held-out users): the
  server lr at cap 4 (0.01, 0.02, 0.04, then further ×2 / ÷2 while it improves: every lr edge is
  checked by construction), then the cap — k for ELS, G (examples per sampled user) for ULS — over
  (1, 4, 16, 32) at that lr (64 as well when 32 wins), then the lr again at the chosen cap.
* **Reporting** on seeds 0–4 with each mode's (cap, lr); ELS − ULS paired by seed (same corpus), a
  paired t-test with 4 degrees of freedom.
* **Prediction first.** Before a cell's first run, the advisor (`fl_userdp.study.advisor`, pilot cosines
  measured on the tuning seed's model and users) writes its prediction for the cell to
  predictions.jsonl with a timestamp; nothing it uses comes from the runs.
* **σ = 0 reference** per population (the cell's T, cap 4, lr 0.02, seed 0) for each mode.
* **SmolLM2-135M + LoRA** (`--cells smollm2`, after `fl-userdp assets --export-hf`): the two decisive
  cells at ε = 1 — all 1,289 Shakespeare users and 32 of them (0.078 and 2.9 epochs at a cap of 4 for
  seed 0's users, at B = 16; the held-out users, and so the training users' rows, change with the seed),
  16 held out, LoRA r = 4 on q_proj, v_proj, B = 16, T = 20; cut to fit a CPU: the server lr is fixed at
  0.02 (the earlier SmolLM2 tuning's usual choice), each mode tunes only its cap over (1, 8), two reporting
  seeds, pilot on 32 users.
* **Real users** (`--cells shakespeare`): the 1,353 Shakespeare (play, character) users (1,289 training,
  64 held out), byte-level tiny LM, T = 300 steps at B = 64 (about 4 epochs of the rows kept at cap 4),
  ε = 1 and 16, the same tuning and reporting.

Every finished simulation is one line in results.jsonl (keyed; a rerun skips what is there), so an
interrupted study resumes where it stopped. The tuning spends privacy no ledger here counts, as is
usual in such studies.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from experiments.results_log import commit, load, simulate_row  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
RESULTS = HERE / "results.jsonl"
PREDICTIONS = HERE / "predictions.jsonl"

B = 64
STEPS = 100
DELTA = 1e-6
CLIP = 0.02
TUNE_SEED = 100
REPORT_SEEDS = (0, 1, 2, 3, 4)
CAPS = (1, 4, 16, 32)
LR0 = (0.01, 0.02, 0.04)
HELDOUT_USERS = 64
POPULATIONS = (100_000, 10_000, 2_000, 500, 150)
EPSILONS = (1.0, 4.0, 16.0)
SIMILARITY = {"independent": 0.0, "mixed": 0.8, "near-copies": 0.95}
SMOLLM2 = {"model.name": str(Path.home() / ".cache/fl-userdp/smollm2-hf"), "model.lora-rank": 4,
           "model.lora-targets": "q_proj,v_proj", "model.seq-len": 32}
SMOLLM2_BUDGET, SMOLLM2_STEPS = 16, 20
SMOLLM2_USERS = (1289, 32)   # the two decisive cells: few and many epochs (0.078, 2.9 at cap 4, B = 16, seed 0)
SMOLLM2_CAPS, SMOLLM2_LR, SMOLLM2_SEEDS = (1, 8), 0.02, (0, 1)
SHAKESPEARE_USERS = 1289   # every (play, character) with text but the 64 held out
SHAKESPEARE_STEPS = 300    # B·T = 19,200 rows: about 4 epochs of the kept rows at a cap of 4


def cells(which: str) -> list[dict]:
    """Cells in the order they run (the decisive ones first)."""
    out: list[dict] = []
    if "main" in which:
        for eps in (1.0, 4.0, 16.0):
            for n in POPULATIONS:
                out.append({"N": n, "eps": eps, "sim": "independent"})
    if "diversity" in which:
        for n in (2_000, 150):
            for level in ("mixed", "near-copies"):
                out.append({"N": n, "eps": 4.0, "sim": level})
    if "shakespeare" in which:
        for eps in (1.0, 16.0):
            out.append({"N": SHAKESPEARE_USERS, "eps": eps, "sim": "shakespeare", "steps": SHAKESPEARE_STEPS})
    if "smollm2" in which:
        for n in SMOLLM2_USERS:
            out.append({"N": n, "eps": 1.0, "sim": "smollm2", "steps": SMOLLM2_STEPS,
                        "budget": SMOLLM2_BUDGET, "caps": SMOLLM2_CAPS, "lr": SMOLLM2_LR})
    return out


def cell_name(c: dict) -> str:
    if c["sim"] == "smollm2":
        return f"smollm2-N{c['N']}-eps{c['eps']:g}"
    if c["sim"] == "shakespeare":
        return f"{c['sim']}-eps{c['eps']:g}"
    return f"N{c['N']}-eps{c['eps']:g}-{c['sim']}"


def base_config(cell: dict, seed: int) -> dict:
    cfg = {"seed": seed, "data.heldout-users": HELDOUT_USERS, "privacy.delta": DELTA}
    if cell["sim"] == "smollm2":
        cfg.update({"data.source": "shakespeare", "data.num-users": cell["N"], "data.heldout-users": 16,
                    "privacy.secure-mode": False, **SMOLLM2})
    elif cell["sim"] == "shakespeare":
        # public text: seeded, so the study reproduces (own data would default to secure mode)
        cfg.update({"data.source": "shakespeare", "data.num-users": SHAKESPEARE_USERS, "privacy.secure-mode": False})
    else:
        cfg.update({"data.num-users": cell["N"], "data.example-similarity": SIMILARITY[cell["sim"]]})
    return cfg


def counts_of(cell: dict, seed: int) -> np.ndarray:
    from fl_userdp.config import parse_config
    from fl_userdp.data import load_corpus
    cfg = parse_config(base_config(cell, seed))
    if cell["sim"] not in ("shakespeare", "smollm2"):
        from fl_userdp.data.synthetic_text import population_counts
        return population_counts(cfg.data, seed)[:cfg.data.num_users]
    return np.asarray(load_corpus(cfg.data, cfg.model, seed).counts)


def steps_of(cell: dict) -> int:
    return int(cell.get("steps", STEPS))


def budget_of(cell: dict) -> float:
    return float(cell.get("budget", B))


def run_config(cell: dict, mode: str, cap: int, lr: float, seed: int) -> dict:
    counts = counts_of(cell, seed)
    q = min(1.0, budget_of(cell) / float(np.minimum(counts, cap).sum()))
    cfg = base_config(cell, seed)
    cfg.update({"privacy.mode": mode, "privacy.target-epsilon": cell["eps"], "privacy.sampling-rate": q,
                "privacy.max-examples-per-user": cap, "privacy.clip-norm": CLIP, "train.rounds": steps_of(cell),
                "train.server-lr": lr, "train.eval-every": steps_of(cell),
                "train.eval-examples": 64 if cell["sim"] == "smollm2" else 4096,
                "sim.users-per-node": max(1, len(counts) // 2)})
    return cfg


def tune_key(cell: dict, mode: str, cap: int, lr: float) -> str:
    return f"tune|{cell_name(cell)}|{mode}|cap{cap}|lr{lr:g}"


def tuning(cell: dict, mode: str):
    """A generator: yields lists of (cap, lr) to run on the tuning seed, receives {(cap, lr): loss}, and
    returns the chosen (cap, lr)."""
    seen: dict[tuple[int, float], float] = {}

    def ask(points):
        todo = [p for p in points if p not in seen]
        if todo:
            seen.update((yield todo))
        return min(points, key=lambda p: seen[p])

    def lr_line(cap: int, lrs: tuple[float, ...]):
        best = yield from ask([(cap, lr) for lr in lrs])
        lrs = sorted(lrs)
        while best[1] in (lrs[0], lrs[-1]):          # on an edge: step past it until it worsens
            nxt = best[1] / 2 if best[1] == lrs[0] else best[1] * 2
            if nxt < 1e-4 or nxt > 1.0:
                break
            lrs = sorted(lrs + [nxt])
            best = yield from ask([best, (cap, nxt)])
        return best

    if "lr" in cell:                                  # a fixed lr (SmolLM2: CPU time): the caps only
        best = yield from ask([(c, cell["lr"]) for c in cell["caps"]])
        return best
    best = yield from lr_line(4, LR0)
    lr = best[1]
    best = yield from ask([(c, lr) for c in CAPS])
    caps = list(CAPS)
    while best[0] == caps[-1] and caps[-1] < 64:
        caps.append(caps[-1] * 2)
        best = yield from ask([best, (caps[-1], lr)])
    if best[0] != 4:
        best = yield from lr_line(best[0], (lr / 2, lr, lr * 2))
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=2, help="simulations in parallel (one core each)")
    ap.add_argument("--cells", default="main", help="main, diversity, shakespeare, smollm2 (comma-separated)")
    ap.add_argument("--only", default="", help="run only the cells whose name contains this")
    ap.add_argument("--skip", default="", help="comma-separated cell names not to run (cut for time)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    todo = [c for c in cells(args.cells) if args.only in cell_name(c) and cell_name(c) not in skip]
    done = load(args.out)
    predicted = load(PREDICTIONS)
    rev = commit()
    pilots: dict = {}

    def predict(cell: dict) -> None:
        key = f"predict|{cell_name(cell)}"
        if key in predicted:
            return
        from fl_userdp.study.advisor import advise
        from fl_userdp.config import parse_config
        from fl_userdp.local.pilot import measure_pilot
        pkey = json.dumps(base_config(cell, TUNE_SEED), sort_keys=True)
        if pkey not in pilots:
            small = cell["sim"] == "smollm2"          # 2 passes of per-example gradients on a 135M model
            pilots[pkey] = measure_pilot(parse_config(base_config(cell, TUNE_SEED)), users=32 if small else 128,
                                         caps=cell.get("caps", (1, 2, 4, 8, 16, 32, 64)))
        pilot = pilots[pkey]
        adv = advise(counts_of(cell, TUNE_SEED), budget_of(cell), steps_of(cell), cell["eps"], DELTA, pilot)
        row = {"key": key, "cell": cell, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "commit": rev,
               "pilot": {"dim": pilot.dim, "example_cosine": pilot.example_cosine, "user_cosine": pilot.user_cosine,
                         "within_user_share": pilot.within_user_share},
               "winner": adv.winner, "margin": adv.margin, "close": adv.close, "components": adv.components,
               "els": {"cap": adv.best_els.cap, "q": adv.best_els.sampling_rate, "sigma": adv.best_els.noise_multiplier},
               "uls": {"cap": adv.best_uls.cap, "q": adv.best_uls.sampling_rate, "sigma": adv.best_uls.noise_multiplier}}
        predicted[key] = row
        with open(PREDICTIONS, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"prediction {cell_name(cell)}: {adv.winner} (ELS/ULS SNR {adv.margin:.3f}{', close' if adv.close else ''})",
              flush=True)

    def record(row: dict) -> None:
        row["commit"] = rev
        done[row["key"]] = row
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"{row['key']}: loss {row['eval_loss']:.4f}  σ {row['sigma']:.3f}  clipped {row['clipped_fraction'] or 0:.3f}"
              f"  {row['seconds']:.0f} s", flush=True)

    def chain(cell: dict, mode: str):
        """Tuning, then the reporting seeds: yields lists of (key, config), receives their rows."""
        gen = tuning(cell, mode)
        reply = None
        try:
            while True:
                points = gen.send(reply)
                rows = yield [(tune_key(cell, mode, c, lr), run_config(cell, mode, c, lr, TUNE_SEED))
                              for c, lr in points]
                reply = {p: r["eval_loss"] for p, r in zip(points, rows)}
        except StopIteration as stop:
            cap, lr = stop.value
        seeds = SMOLLM2_SEEDS if cell["sim"] == "smollm2" else REPORT_SEEDS
        yield [(f"report|{cell_name(cell)}|{mode}|seed{s}", run_config(cell, mode, cap, lr, s)) for s in seeds]

    def reference(cell: dict):
        if cell["sim"] == "smollm2":
            return
            yield
        if cell["sim"] == "shakespeare":
            name = "shakespeare"
        else:
            name = f"N{cell['N']}-{cell['sim']}"
        jobs = []
        for mode in ("uls", "els"):
            cfg = run_config(cell, mode, 4, 0.02, REPORT_SEEDS[0])
            cfg["privacy.noise-multiplier"] = 0.0
            jobs.append((f"reference|{name}|{mode}", cfg))
        yield jobs

    chains = []
    for cell in todo:
        predict(cell)
        chains += [chain(cell, "uls"), chain(cell, "els"), reference(cell)]

    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        running: dict = {}       # future -> (chain, key)
        waiting: dict = {}       # chain -> {key: row or None}
        ready = list(chains)     # chains to advance (first send None), the earliest cell's first
        replies: dict = {id(c): None for c in chains}
        order = {id(c): i for i, c in enumerate(chains)}

        def advance(ch) -> None:
            try:
                batch = ch.send(replies[id(ch)])
            except StopIteration:
                return
            slots = {key: done.get(key) for key, _ in batch}
            waiting[id(ch)] = (ch, [k for k, _ in batch], slots)
            for key, cfg in batch:
                if slots[key] is None and key not in {k for _, k in running.values()}:
                    running[pool.submit(simulate_row, key, cfg, True)] = (ch, key)
            settle(ch)

        def settle(ch) -> None:
            entry = waiting.get(id(ch))
            if entry is None:
                return
            _, keys, slots = entry
            for k in keys:
                if slots[k] is None and k in done:
                    slots[k] = done[k]
            if all(slots[k] is not None for k in keys):
                del waiting[id(ch)]
                replies[id(ch)] = [slots[k] for k in keys]
                ready.append(ch)

        while ready or running:
            while ready and len(running) < 4 * args.jobs:
                ready.sort(key=lambda c: order[id(c)])
                advance(ready.pop(0))
            if not running:
                continue
            finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for fut in finished:
                ch, key = running.pop(fut)
                record(fut.result())
                for cid, (c, _, _) in list(waiting.items()):
                    settle(c)
    return 0


if __name__ == "__main__":
    sys.exit(main())
