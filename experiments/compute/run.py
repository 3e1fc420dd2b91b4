#!/usr/bin/env python
"""ELS or ULS under large compute as the paper means it: more steps on the same users, from a useful model.

    OMP_NUM_THREADS=1 python experiments/compute/run.py --jobs 2 [--stage tune|report|diversity|all]
    python experiments/compute/report.py            # tests, tables, figure -> results.md and experiments/README

The design and its tests are fixed in PREREGISTERED.md (committed before the first reporting run). In short:

* **Population** fixed: Shakespeare's 1,289 (play, character) users (`data.split-seed` 0: the same 64 held-out
  users and the same 1,289 training users for every seed; the seed moves the model's adapters, the sampling and
  the noise). **Start** from `warm_base.pt` (`warm_start.py`: the tiny LM's base trained on the poems, text no
  user holds).
* **Compute** B = 32 expected examples per step; T ∈ {25, 100, 400} steps on the same users (epochs q·T move
  with T only). ε ∈ {1, 8} at δ = 1e-6, σ calibrated per run.
* **Tuning** per mode and ε at T = 25 and T = 400 on a separate split (`data.split-seed` 1: other held-out
  users), tuning seed 100: server lr (Adam) at cap 4, C 0.5, over (0.001, 0.003, 0.01), stepping past an
  edge (×3 / ÷3) while it improves; then the cap (k for ELS, G for ULS) over (1, 4, 16), and 64 when 16 wins;
  then C over (0.1, 0.5), stepping past an edge (×4 / ÷4) while it improves. T = 100 uses T = 400's choices.
* **Reporting** seeds 0-5, ELS − ULS paired by seed. σ = 0 reference per T and mode (seed 0).
* **Diversity contrast**: a synthetic population of 2,000 users (random start: the synthetic vocabulary is the
  study's own), independent examples (example-similarity 0) vs near-copies (0.95), T ∈ {25, 100}, ε = 8;
  tuned per mode, cell and T on the cap only (1, 4, 16) at lr 0.01, C 0.5, tuning seed 100.
* **Few users** (the advisor's cells): 24 synthetic users with about 300 examples each, independent
  (`few-users`) or near-copies (`few-users-alike`, similarity 0.95), T = 25, ε = 8, cap tuned over (4, 16, 64)
  at lr 0.01, C 0.5.
* **Held-out corpus** (`--stage advisor-cells`, with `few-users-alike`; `heldout_corpus.py` builds it): T = 100,
  ε ∈ {1, 8}, cap tuned over (1, 4, 16) at lr 0.003, C 0.5, seeds 0-2.

Every finished simulation is one keyed line in results.jsonl: an interrupted study resumes where it stopped.
"""
from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from experiments.results_log import commit, load, simulate_row  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results.jsonl"
WARM = HERE / "warm_base.pt"
B, DELTA = 32, 1e-6
STEPS = (25, 400)                  # amendment 4: T = 100 carried no weight in H1 and is dropped from reporting
TUNED_AT = {25: 25, 400: 400}
MATCHED_CAP = 4                    # amendment 4: the matched-cap arm, k = G = 4, each mode's best lr at cap 4
EPSILONS = (1.0, 8.0)
REPORT_SEEDS = (0, 1, 2, 3, 4, 5)
TUNE_SEEDS = {25: (100,), 400: (100,)}
LRS, CAPS, CLIPS = (0.001, 0.003, 0.01), (1, 4, 16), (0.1, 0.5)
LR0, CAP0, CLIP0 = 0.003, 4, 0.5
DIVERSITY = {"independent": 0.0, "near-copies": 0.95}
DIVERSITY_STEPS, DIVERSITY_USERS, DIVERSITY_EPS = (25, 100), 2000, 8.0
DIVERSITY_LR = 0.01
FEW_USERS = {"data.num-users": 24, "data.examples-per-user-median": 300.0, "data.examples-per-user-sigma": 0.3}
FEW_CAPS, FEW_STEPS = (4, 16, 64), 25
HELDOUT = Path.home() / ".cache/fl-userdp/heldout/corpus.jsonl"   # experiments/compute/heldout_corpus.py
HELDOUT_STEPS, HELDOUT_LR, HELDOUT_SEEDS = 100, 0.003, (0, 1, 2)


def base_config(corpus: str, seed: int, split: int = 0) -> dict:
    cfg = {"seed": seed, "privacy.delta": DELTA, "privacy.secure-mode": False, "data.heldout-users": 64,
           "train.eval-examples": 4096}
    if corpus.startswith("shakespeare"):           # "shakespeare-600": the first 600 training users (amendment 5b)
        users = int(corpus.split("-")[1]) if "-" in corpus else 1289
        cfg.update({"data.source": "shakespeare", "data.num-users": users, "data.split-seed": split,
                    "model.init-weights": str(WARM)})
    elif corpus in ("few-users", "few-users-alike"):
        cfg.update({**FEW_USERS, "data.heldout-users": 8,
                    "data.example-similarity": 0.95 if corpus == "few-users-alike" else 0.0})
    elif corpus == "heldout":
        cfg.update({"data.source": str(HELDOUT), "data.num-users": 100_000, "data.heldout-users": 32,
                    "data.split-seed": split, "model.init-weights": str(WARM), "privacy.publish-diagnostics": True})
    else:
        cfg.update({"data.num-users": DIVERSITY_USERS, "data.example-similarity": DIVERSITY[corpus]})
    return cfg


_COUNTS: dict = {}


def counts_of(corpus: str, seed: int, split: int) -> np.ndarray:
    fixed = corpus.startswith("shakespeare") or corpus == "heldout"
    key = (corpus, None if fixed else seed, split)
    if key not in _COUNTS:
        from fl_userdp.config import parse_config
        from fl_userdp.data import load_corpus
        cfg = parse_config(base_config(corpus, seed, split))
        if fixed:
            _COUNTS[key] = np.asarray(load_corpus(cfg.data, cfg.model, seed).counts)
        else:
            from fl_userdp.data.synthetic_text import population_counts
            _COUNTS[key] = population_counts(cfg.data, seed)[:cfg.data.num_users]
    return _COUNTS[key]


def run_config(corpus: str, mode: str, eps: float, steps: int, seed: int, lr: float, cap: int, clip: float,
               split: int = 0, sigma: float | None = None, bands: int = 0) -> dict:
    """One run's config; `bands` > 0: BandMF noise with b = bands and cyclic Poisson sampling at the rate that
    keeps B expected kept examples a step (q_b = b · B / Σ min(n_u, cap), at most 1)."""
    counts = counts_of(corpus, seed, split)
    q = min(1.0, B * max(bands, 1) / float(np.minimum(counts, cap).sum()))
    cfg = base_config(corpus, seed, split)
    cfg.update({"privacy.mode": mode, "privacy.target-epsilon": eps, "privacy.sampling-rate": q,
                "privacy.max-examples-per-user": cap, "privacy.clip-norm": clip, "train.rounds": steps,
                "train.server-lr": lr, "train.eval-every": steps, "sim.users-per-node": len(counts)})
    if sigma is not None:
        cfg["privacy.noise-multiplier"] = sigma
    if bands:
        cfg.update({"privacy.mechanism": "bandmf", "privacy.bands": bands})
    return cfg


class Study:
    """Runs batches of keyed simulations on a process pool, skipping what results.jsonl holds."""

    def __init__(self, jobs: int, out: Path) -> None:
        self.pool = ProcessPoolExecutor(max_workers=jobs)
        self.out, self.done, self.rev = out, load(out), commit()

    def run(self, batch: dict[str, dict]) -> dict[str, float]:
        """{key: config} -> {key: held-out loss}; runs what is missing, longest first."""
        todo = sorted((k for k in batch if k not in self.done), key=lambda k: -batch[k]["train.rounds"])
        futures = {k: self.pool.submit(simulate_row, k, batch[k]) for k in todo}
        for k, fut in futures.items():
            row = fut.result()
            row["commit"], row["time"] = self.rev, time.strftime("%Y-%m-%dT%H:%M:%S")
            self.done[k] = row
            with open(self.out, "a") as f:
                import json
                f.write(json.dumps(row) + "\n")
            print(f"{k}: loss {row['eval_loss']:.4f} σ {row['sigma']:.3f} clipped {row['clipped_fraction'] or 0:.2f}"
                  f" {row['seconds']:.0f} s", flush=True)
        return {k: self.done[k]["eval_loss"] for k in batch}


def tune_key(corpus, mode, eps, steps, lr, cap, clip, seed) -> str:
    return f"tune|{corpus}|{mode}|eps{eps:g}|T{steps}|lr{lr:g}|cap{cap}|C{clip:g}|seed{seed}"


def tune(study: Study, cells: list[tuple], seeds_of, lrs=LRS, caps=CAPS, clips=CLIPS, split: int = 1) -> dict:
    """Coordinate search for every cell (corpus, mode, eps, steps) at once, batch by batch:
    lr at (CAP0, CLIP0), then the cap, then C; an lr or C that wins at a grid edge is stepped past (x3 / ÷3)
    while it improves. Score: mean held-out loss over the cell's tuning seeds. Returns {cell: (lr, cap, clip)}."""
    best = {c: (LR0, CAP0, CLIP0) for c in cells}

    def score(points: dict) -> dict:
        batch = {}
        for cell, pts in points.items():
            corpus, mode, eps, steps = cell
            for lr, cap, clip in pts:
                for s in seeds_of(cell):
                    batch[tune_key(corpus, mode, eps, steps, lr, cap, clip, s)] = run_config(
                        corpus, mode, eps, steps, s, lr, cap, clip, split=split)
        loss = study.run(batch)
        return {cell: {p: float(np.mean([loss[tune_key(*cell, *p, s)] for s in seeds_of(cell)])) for p in pts}
                for cell, pts in points.items()}

    def line(axis: int, grid, edge_step: float | None) -> None:
        def at(c, v):
            return tuple(v if i == axis else best[c][i] for i in range(3))
        tried = score({c: [at(c, v) for v in grid] for c in cells})
        for c in cells:
            best[c] = min(tried[c], key=tried[c].get)
        while edge_step is not None:              # a winner on the edge of what was tried: one step past it
            nxt = {}
            for c in cells:
                values = [p[axis] for p in tried[c]]
                v = best[c][axis]
                if v in (min(values), max(values)):
                    cand = at(c, v / edge_step if v == min(values) else v * edge_step)
                    if cand not in tried[c] and len(values) < len(grid) + 3:
                        nxt[c] = [cand]
            if not nxt:
                return
            for c, sc in score(nxt).items():
                tried[c].update(sc)
                best[c] = min(tried[c], key=tried[c].get)

    line(0, lrs, 3.0)
    line(1, caps, None)
    grown = [c for c in cells if best[c][1] == max(caps)]
    if grown:
        extra = {c: [best[c], (best[c][0], 64, best[c][2])] for c in grown}
        for c, sc in score(extra).items():
            best[c] = min(sc, key=sc.get)
    line(2, clips, 4.0)
    return best


def shakespeare(study: Study, stage: str) -> None:
    cells = [("shakespeare", m, e, t) for t in sorted(set(TUNED_AT.values())) for e in EPSILONS for m in ("uls", "els")]
    chosen = tune(study, cells, lambda c: TUNE_SEEDS[c[3]])
    for c, p in chosen.items():
        print("tuned", c, p, flush=True)
    if stage == "tune":
        return
    matched = matched_lrs(study.done)               # each mode's best lr of the lr stage (cap 4, C 0.5)
    for c in cells:
        print("matched", c, matched[c], flush=True)
    for seed in REPORT_SEEDS:                       # seed by seed: a cut study still has whole seeds
        batch = {}
        for t in STEPS:
            for e in EPSILONS:
                for m in ("uls", "els"):
                    lr, cap, clip = chosen[("shakespeare", m, e, TUNED_AT[t])]
                    batch[f"report|shakespeare|{m}|eps{e:g}|T{t}|seed{seed}"] = run_config(
                        "shakespeare", m, e, t, seed, lr, cap, clip)
                    batch[f"report|shakespeare-cap{MATCHED_CAP}|{m}|eps{e:g}|T{t}|seed{seed}"] = run_config(
                        "shakespeare", m, e, t, seed, matched[("shakespeare", m, e, TUNED_AT[t])], MATCHED_CAP, CLIP0)
        if seed == 0:
            for t in STEPS:
                for m in ("uls", "els"):
                    lr, cap, clip = chosen[("shakespeare", m, 8.0, TUNED_AT[t])]
                    batch[f"reference|shakespeare|{m}|T{t}"] = run_config("shakespeare", m, 8.0, t, 0, lr, cap, clip,
                                                                        sigma=0.0)
        study.run(batch)


BANDMF_BANDS = 16                   # amendment 5a


def matched_lrs(rows: dict) -> dict:
    """Each mode's best lr of the lr stage at cap 4, C 0.5 (the matched-cap arm's), per (corpus, mode, ε, T),
    from the tuning rows of results.jsonl."""
    out = {}
    for t in sorted(set(TUNED_AT.values())):
        for e in EPSILONS:
            for m in ("uls", "els"):
                tried = {float(k.split("|")[5][2:]): r["eval_loss"] for k, r in rows.items()
                         if k.startswith(f"tune|shakespeare|{m}|eps{e:g}|T{t}|")
                         and f"|cap{MATCHED_CAP}|C{CLIP0:g}|" in k}
                out[("shakespeare", m, e, t)] = min(tried, key=tried.get)
    return out


def bandmf_arm(study: Study, tuning: Path = RESULTS) -> None:
    """Amendment 5a: the matched-cap arm with BandMF noise (b = 16), the same lrs, seeds 0-5."""
    matched = matched_lrs(load(tuning))
    for seed in REPORT_SEEDS:
        study.run({f"report|shakespeare-bmf{BANDMF_BANDS}|{m}|eps{e:g}|T{t}|seed{seed}": run_config(
            "shakespeare", m, e, t, seed, matched[("shakespeare", m, e, TUNED_AT[t])], MATCHED_CAP, CLIP0,
            bands=BANDMF_BANDS) for t in STEPS for e in EPSILONS for m in ("uls", "els")})


def capped(study: Study, cells: list[tuple], caps: tuple, lr: float, seeds: tuple = REPORT_SEEDS,
           split: int = 0) -> None:
    """Cells tuned on the cap only (at `lr`, C = CLIP0, tuning seed 100, data split `split`), then the
    reporting seeds (split 0)."""
    loss = study.run({tune_key(*c, lr, cap, CLIP0, 100): run_config(c[0], c[1], c[2], c[3], 100, lr, cap, CLIP0,
                                                                    split=split)
                      for c in cells for cap in caps})
    chosen = {c: min(caps, key=lambda cap: loss[tune_key(*c, lr, cap, CLIP0, 100)]) for c in cells}
    for c in cells:
        print("tuned", c, chosen[c], flush=True)
    for seed in seeds:
        study.run({f"report|{c[0]}|{c[1]}|eps{c[2]:g}|T{c[3]}|seed{seed}": run_config(
            c[0], c[1], c[2], c[3], seed, lr, chosen[c], CLIP0) for c in cells})


def diversity(study: Study) -> None:
    capped(study, [(d, m, DIVERSITY_EPS, t) for d in DIVERSITY for t in DIVERSITY_STEPS for m in ("uls", "els")],
           CAPS, DIVERSITY_LR)


def few_users(study: Study, corpus: str = "few-users") -> None:
    """The advisor's cells: 24 users with about 300 examples each (independent, or near-copies), T = 25, ε = 8."""
    capped(study, [(corpus, m, 8.0, FEW_STEPS) for m in ("uls", "els")], FEW_CAPS, DIVERSITY_LR)


def heldout(study: Study) -> None:
    """The advisor's held-out corpus (nobody tunes on it): T = 100, ε ∈ {1, 8}, cap tuned, three seeds."""
    capped(study, [("heldout", m, e, HELDOUT_STEPS) for e in EPSILONS for m in ("uls", "els")], CAPS, HELDOUT_LR,
           HELDOUT_SEEDS, split=1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--stage", default="all",
                    choices=("tune", "report", "diversity", "few-users", "advisor-cells", "bandmf", "all"))
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    study = Study(args.jobs, args.out)
    if args.stage in ("tune", "report", "all"):
        shakespeare(study, args.stage)
    if args.stage in ("diversity", "all"):
        diversity(study)
    if args.stage in ("few-users", "all"):
        few_users(study)
    if args.stage == "bandmf":              # amendment 5a: run apart, into bandmf.jsonl
        bandmf_arm(study)
    if args.stage == "advisor-cells":       # amendment 2: run apart, into their own results file
        few_users(study, "few-users-alike")
        heldout(study)
    study.pool.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
