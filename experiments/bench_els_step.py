"""Cost of one ELS step's per-example clipped gradient sum vs a plain (non-private) step.

On the default tiny model (ModelConfig defaults, LoRA adapters only trainable)
and one batch of `--batch` examples, times (median of `--reps` after warm-up):

* plain:   forward + mean loss + backward (what non-private training costs);
* clipped: `els_clipped_sum` (per-example gradients, clip each to C, sum).

Usage: OMP_NUM_THREADS=1 python experiments/bench_els_step.py [--batch 64] [--reps 31] [--method hooks|opacus]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from fl_userdp.config import ModelConfig  # noqa: E402
from fl_userdp.local import build_model, els_clipped_sum, per_example_loss  # noqa: E402
from fl_userdp.local.model import trainable_params  # noqa: E402


def median_time(fn, reps: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--reps", type=int, default=31)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--method", choices=["hooks", "opacus"], default="hooks")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = ModelConfig()
    plain_model = build_model(cfg, seed=0)     # no opacus hooks attached: a truly plain step
    private_model = build_model(cfg, seed=0)
    examples = np.random.default_rng(0).integers(0, cfg.vocab_size, (args.batch, cfg.seq_len))
    tokens = torch.as_tensor(examples)
    params = [p for _, p in trainable_params(plain_model)]

    def plain() -> None:
        for p in params:
            p.grad = None
        per_example_loss(plain_model, tokens).mean().backward()

    def clipped() -> None:
        els_clipped_sum(private_model, examples, clip_norm=1.0, chunk_size=args.batch, method=args.method)

    # alternate the two so that load from other processes on the machine hits both alike
    for _ in range(3):
        plain(), clipped()
    t_plain, t_clip = [], []
    for _ in range(args.reps):
        t_plain.append(median_time(plain, 1, warmup=0))
        t_clip.append(median_time(clipped, 1, warmup=0))
    tp, tc = statistics.median(t_plain), statistics.median(t_clip)
    ratio = statistics.median([c / p for c, p in zip(t_clip, t_plain)])
    print(f"model=tiny {cfg} batch={args.batch} threads={args.threads} method={args.method}")
    print(f"plain forward+backward : {tp * 1e3:8.2f} ms")
    print(f"per-example clipped sum: {tc * 1e3:8.2f} ms")
    print(f"ratio (median of pairs): {ratio:8.3f}x  (target <= 1.2x)")


if __name__ == "__main__":
    main()
