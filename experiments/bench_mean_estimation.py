"""Scale benchmark: user-level DP mean estimation, N = 100,000 users, d = 64, 1,000 steps per mode.

    OMP_NUM_THREADS=1 python experiments/bench_mean_estimation.py [--users 100000] [--dim 64] [--steps 1000]

Per mode it prints the setup time (population + cap + noise calibration), the
training time of the 1,000 private steps (sampling, clipping, noise via
aggregate.release, accountant composed once per 100 steps), and the rates:
user updates per second (users contributing per step, summed over steps) and
examples per second. Matched compute: both modes process the same expected
examples per step (cohort of 1% of users under ULS).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

from fl_userdp.study import mean_estimation as me  # noqa: E402
from fl_userdp.accounting import UserLevelAccountant  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--user-rate", type=float, default=0.01, help="ULS cohort rate; ELS matches its examples/step")
    ap.add_argument("--epsilon", type=float, default=2.0)
    ap.add_argument("--delta", type=float, default=1e-6)
    a = ap.parse_args(argv)
    spec = me.TaskSpec(num_users=a.users, dim=a.dim)
    t0 = time.perf_counter()
    pop = me.Population(spec, 0)
    capped = pop.capped(a.k)
    t_data = time.perf_counter() - t0
    examples_per_step = a.user_rate * capped.total  # ULS at rate q processes q·Σ min(n_u, k) examples
    print(f"N={a.users} d={a.dim} T={a.steps} k={a.k} n_k={capped.total} "
          f"expected examples/step={examples_per_step:.0f}; data {t_data:.1f}s")
    worst = 0.0
    for mode in me.MODES:
        q = me.sampling_rate_for(mode, capped, a.users, examples_per_step)
        t1 = time.perf_counter()
        sigma, _ = me.calibrated_sigma(mode, a.epsilon, a.delta, q, a.steps, a.k)
        t_cal = time.perf_counter() - t1
        acc = UserLevelAccountant(a.delta)
        t2, c2 = time.perf_counter(), time.process_time()
        res = me.train(pop, mode, a.k, q, sigma, 0.2, 2.0, a.steps, seed=0, accountant=acc, record_every=100)
        t_train = time.perf_counter() - t2
        cpu_train = time.process_time() - c2
        total = t_data + t_cal + t_train
        worst = max(worst, total)
        print(f"{mode}: q={q:.4g} sigma={sigma:.4g} eps={res.epsilon:.4g} | calibration {t_cal:.1f}s, "
              f"{a.steps} steps {t_train:.1f}s wall / {cpu_train:.1f}s CPU | {res.user_updates / t_train:,.0f} user updates/s, "
              f"{res.examples / t_train:,.0f} examples/s | final error {res.errors[0]:.4g} | "
              f"total incl. data {total:.1f}s; CPU-time rate {res.user_updates / cpu_train:,.0f} user updates/s")
    print(f"slowest configuration: {worst:.1f}s wall (target <= 60s); process CPU {time.process_time():.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
