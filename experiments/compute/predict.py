#!/usr/bin/env python
"""The advisor's predictions for the large-compute study's cells, before their results are read.

    OMP_NUM_THREADS=1 python experiments/compute/predict.py [--cells study,advisor]   # -> predictions.jsonl

For each corpus a pilot (`fl_userdp.local.pilot.measure_pilot`, 128 users of the tuning split or seed, at
the runs' starting weights) and, for each cell (corpus, ε, T), `fl_userdp.study.advisor.advise` with the
study's budget (B = 32) and caps. Each line carries the commit of the advisor's code and a timestamp; nothing
here reads results.jsonl or advisor_cells.jsonl. A line already in predictions.jsonl is kept (the first
prediction counts).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from experiments.compute import run as study  # noqa: E402
from experiments.results_log import commit, load  # noqa: E402

HERE = Path(__file__).resolve().parent
PREDICTIONS = HERE / "predictions.jsonl"
PILOT_USERS = 128


def cells(which: str) -> list[tuple]:
    out = []
    if "study" in which:
        out += [("shakespeare", e, t, (1, 4, 16, 64)) for e in study.EPSILONS for t in study.STEPS]
        out += [(d, study.DIVERSITY_EPS, t, study.CAPS) for d in study.DIVERSITY for t in study.DIVERSITY_STEPS]
        out += [("few-users", 8.0, study.FEW_STEPS, study.FEW_CAPS)]
    if "advisor" in which:
        out += [("few-users-alike", 8.0, study.FEW_STEPS, study.FEW_CAPS)]
        out += [("heldout", e, study.HELDOUT_STEPS, study.CAPS) for e in study.EPSILONS]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", default="study,advisor")
    ap.add_argument("--out", type=Path, default=PREDICTIONS)
    args = ap.parse_args()
    from fl_userdp.config import parse_config
    from fl_userdp.local.pilot import measure_pilot
    from fl_userdp.study.advisor import advise

    done, rev, pilots = load(args.out), commit(), {}
    for corpus, eps, steps, caps in cells(args.cells):
        key = f"predict|{corpus}|eps{eps:g}|T{steps}"
        if key in done:
            continue
        split = 1 if corpus in ("shakespeare", "heldout") else 0
        if corpus not in pilots:
            cfg = parse_config(study.base_config(corpus, 100, split))
            pilots[corpus] = measure_pilot(cfg, users=PILOT_USERS, caps=tuple(sorted(set(caps) | {1, 4, 16, 64})))
        counts = study.counts_of(corpus, 100, split)
        adv = advise(counts, study.B, steps, eps, study.DELTA, pilots[corpus], caps=caps)
        e, u = adv.best_els, adv.best_uls
        row = {"key": key, "corpus": corpus, "eps": eps, "steps": steps, "commit": rev,
               "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "call": adv.call, "winner": adv.winner,
               "margin": adv.margin, "interval": adv.interval, "same_algorithm": adv.same_algorithm,
               "els": {"cap": e.cap, "q": e.sampling_rate, "sigma": e.noise_multiplier, "clip": e.clip_norm,
                       "score": e.snr, "epochs": e.epochs},
               "uls": {"cap": u.cap, "q": u.sampling_rate, "sigma": u.noise_multiplier, "clip": u.clip_norm,
                       "score": u.snr, "epochs": u.epochs},
               "uls_epochs_at_cap4": study.B / float(sum(min(int(n), 4) for n in counts)) * steps,
               "within_user_share": pilots[corpus].within_user_share}
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"{key}: {adv.call} (ELS/ULS {adv.margin:.3f}, interval {adv.interval})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
