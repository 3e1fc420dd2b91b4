"""One linear-task node's computation, the current code next to the plain numpy reference, in one process.

    OMP_NUM_THREADS=1 python experiments/bench_linear_node.py [--users 5000] [--reps 12]

The node of the million-user row (`bench_population.py --scale`: 1,000,000 users on 2 nodes, cohort
~10,000, so ~5,000 sampled users per node) computes its users' clipped ULS updates with
`fl_userdp.clients.compute.LinearWorker.uls`. Two of its steps have a plain numpy form: the per-user segment sums
(`np.add.reduceat` along axis 0) and the per-user example choice (`np.lexsort` by owner, then hash). This
script times `uls` with the current helpers (`segment_sum` through a sparse 0/1 matrix,
`order_by_owner_then_hash`: one 64-bit sort key) and with the numpy forms swapped in, alternating,
checks that both give the same sum, and prints the medians and their ratio.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

import fl_userdp.clients.compute as compute  # noqa: E402
from bench_population import config  # noqa: E402


def numpy_segment_sum(values: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    return np.add.reduceat(values, offsets[:-1], axis=0)


def numpy_order(owner: np.ndarray, h: np.ndarray) -> np.ndarray:
    return np.lexsort((h, owner))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=5000)
    ap.add_argument("--reps", type=int, default=12)
    a = ap.parse_args()
    cfg = config(1_000_000, 2, 5, "unused", 10_000)
    worker = compute.LinearWorker(cfg)
    users = np.sort(np.random.default_rng(0).choice(500_000, a.users, replace=False))
    weights = [np.zeros(cfg.model.dim, np.float32)]
    current = (compute.segment_sum, compute.order_by_owner_then_hash)
    variants = {"numpy reference": (numpy_segment_sum, numpy_order), "current": current}
    times = {k: [] for k in variants}
    try:
        for rep in range(a.reps):
            totals = {}
            for name, (seg, order) in variants.items():
                compute.segment_sum, compute.order_by_owner_then_hash = seg, order
                t0 = time.perf_counter()
                totals[name] = worker.uls(cfg, weights, rep, users).total
                times[name].append(time.perf_counter() - t0)
            np.testing.assert_allclose(totals["current"], totals["numpy reference"], rtol=1e-12, atol=1e-12)
    finally:
        compute.segment_sum, compute.order_by_owner_then_hash = current
    med = {k: statistics.median(v[2:]) for k, v in times.items()}
    print(f"{a.users:,} users of a 500,000-user node, d = {cfg.model.dim}; medians of {a.reps - 2} alternating "
          f"reps (2 warm-up); the same sums")
    for k, v in med.items():
        print(f"  {k:16s} {v:.4f} s")
    print(f"  numpy reference / current: {med['numpy reference'] / med['current']:.2f}x   "
          f"(load average {os.getloadavg()[0]:.2f})")


if __name__ == "__main__":
    main()
