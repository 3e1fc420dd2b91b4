"""Benchmark: our ELS/ULS user-level epsilon vs dp_accounting's default PLD accountant.

For each (mode, q, σ, k, T) the two computations run side by side in this
process: ours (`fl_userdp.accounting.epsilon_for`, adaptive discretisation and
a vectorised mixture inversion) and dp_accounting's `PLDAccountant()` at its
default discretisation 1e-4 composing the same event T times. Printed per
row: both times, the speed-up ratio, both epsilons, the relative difference
(ours − library) / library and the discretisation intervals our ladder ran
(ending at 1e-4 where it falls back to the finest rung). Ours must never be
more than 0.1 % below nor more than 0.5 % above.

    python experiments/bench_accounting.py            # the full grid (~10–20 min)
    python experiments/bench_accounting.py --quick    # four rows
    python experiments/bench_accounting.py --json out.jsonl
"""
from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

from dp_accounting.pld import pld_privacy_accountant  # noqa: E402

from fl_userdp.accounting import epsilon_for, make_event  # noqa: E402
from fl_userdp.accounting import pld as ours_pld  # noqa: E402

DELTA = 1e-6
GRID = [  # mode, q, sigma, k, T
    ("uls", 0.01, 1.0, None, 1000),
    ("els", 0.01, 1.0, 1, 1000),
    ("els", 0.01, 1.0, 8, 1000),
    ("els", 0.001, 1.0, 4, 10000),
    ("els", 0.001, 2.0, 1, 100),
    ("els", 0.05, 2.0, 16, 100),
    ("els", 0.1, 5.0, 2, 10),
    ("els", 0.001, 0.8, 8, 1000),
    ("els", 0.02, 1.5, 32, 3000),
    ("els", 0.01, 3.0, 64, 1000),
    ("els", 0.0001, 1.0, 256, 10000),
    ("els", 0.01, 2.0, 128, 1000),
]
FALLBACK = [  # small q, large T: the ladder cannot stop before 1e-4 (it used to cost ~4/3 of 1e-4 alone)
    ("uls", 0.001, 0.8, None, 5000),
    ("uls", 0.001, 1.0, None, 10000),
    ("uls", 0.0001, 1.0, None, 10000),
    ("els", 0.001, 0.8, 2, 20000),
]
GRID += FALLBACK
QUICK = GRID[:3] + FALLBACK[:1]


def library_epsilon(event, steps: int) -> float:
    acc = pld_privacy_accountant.PLDAccountant()  # default: value_discretization_interval=1e-4
    acc.compose(event.dp_event(), steps)
    return float(acc.get_epsilon(DELTA))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", help="also append one JSON line per row to this file")
    args = ap.parse_args()
    print(f"{'mode':4} {'q':>7} {'sigma':>5} {'k':>4} {'T':>6} | {'ours s':>7} {'lib s':>8} {'speed-up':>8} | "
          f"{'eps ours':>10} {'eps lib':>10} {'rel diff':>9} | rungs")
    for mode, q, sigma, k, steps in (QUICK if args.quick else GRID):
        event = make_event(mode, q, sigma, k)
        ours_pld.step_pld.cache_clear()
        t0 = time.perf_counter()
        eps_ours = epsilon_for([(event, steps)], DELTA)
        t_ours = time.perf_counter() - t0
        rungs = [h for h, _ in ours_pld.last_rungs]
        t0 = time.perf_counter()
        eps_lib = library_epsilon(event, steps)
        t_lib = time.perf_counter() - t0
        rel = (eps_ours - eps_lib) / eps_lib
        print(f"{mode:4} {q:7g} {sigma:5g} {k or '-':>4} {steps:6d} | {t_ours:7.2f} {t_lib:8.2f} "
              f"{t_lib / t_ours:7.1f}x | {eps_ours:10.5g} {eps_lib:10.5g} {rel:+9.3%} | "
              f"{','.join(f'{h:g}' for h in rungs)}", flush=True)
        if args.json:
            with open(args.json, "a") as fh:
                fh.write(json.dumps({"mode": mode, "q": q, "sigma": sigma, "k": k, "steps": steps, "delta": DELTA,
                                     "seconds_ours": t_ours, "seconds_library": t_lib,
                                     "epsilon_ours": eps_ours, "epsilon_library": eps_lib, "rel_diff": rel,
                                     "rungs": rungs}) + "\n")


if __name__ == "__main__":
    main()
