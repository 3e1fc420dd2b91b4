"""Throughput of the private steps on SmolLM2-135M + LoRA vs a non-private step on the same examples.

Model: the exported SmolLM2-135M folder (`fl-userdp assets --export-hf`), LoRA
rank `--rank` on q_proj,v_proj (only the adapters train), float32, CPU. One
batch of `--batch` examples of `--seq-len` tokens, the same tokens for every
measurement. Measured side by side in one process, alternating (so load from
other processes hits all alike), medians over `--reps` after `--warmup`:

* plain: forward + mean loss + backward (a non-private step's gradient work);
* ELS:   `els_clipped_sum` (per-example gradients, each clipped to C, summed);
* ULS:   `uls_clipped_sum` of one round's users: the batch split into users of
         `--per-user` examples each, every user's mean gradient clipped as a whole
         (update="gradient"), all users batched together.

Printed: examples per CPU-second of each (this process's CPU time, which load
from other processes on a shared machine barely moves; the wall times are
printed too) and the private/plain cost ratios, medians over the reps of the
ratio within a rep. Two model copies: the plain one never has per-example hooks attached.

Usage: OMP_NUM_THREADS=1 python experiments/bench_smollm2.py [--batch 16] [--seq-len 32] [--reps 5]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from fl_userdp.assets import hf_model_dir  # noqa: E402
from fl_userdp.config import ModelConfig  # noqa: E402
from fl_userdp.local import build_model, els_clipped_sum, get_trainable, per_example_loss, uls_clipped_sum  # noqa: E402
from fl_userdp.local.model import num_trainable, trainable_params  # noqa: E402


def timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process): CPU time is what load from other processes leaves alone."""
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(hf_model_dir()), help="HF folder (default: the exported SmolLM2)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=32)
    ap.add_argument("--per-user", type=int, default=4, help="ULS: examples per user (batch / per-user users)")
    ap.add_argument("--rank", type=int, default=4)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = ModelConfig(name=args.model, seq_len=args.seq_len, lora_rank=args.rank, lora_alpha=2.0 * args.rank,
                      lora_targets="q_proj,v_proj")
    t0 = time.perf_counter()
    plain_model, private_model = build_model(cfg, 0), build_model(cfg, 0)
    load_s = time.perf_counter() - t0
    # move B away from 0 so every adapter weight has a gradient (as after a few training rounds)
    rng = np.random.default_rng(0)
    for m in (plain_model, private_model):
        from fl_userdp.local.model import set_trainable
        set_trainable(m, [a + 0.01 * rng.standard_normal(a.shape).astype(np.float32) for a in get_trainable(m)])
    vocab = plain_model.config.vocab_size
    examples = np.random.default_rng(1).integers(0, vocab - 1, (args.batch, args.seq_len))
    tokens = torch.as_tensor(examples)
    users = [examples[i:i + args.per_user] for i in range(0, args.batch, args.per_user)]
    start = get_trainable(private_model)
    params = [p for _, p in trainable_params(plain_model)]

    def plain() -> None:
        for p in params:
            p.grad = None
        with torch.enable_grad():
            per_example_loss(plain_model, tokens).mean().backward()

    def els() -> None:
        els_clipped_sum(private_model, examples, clip_norm=1.0, chunk_size=args.batch)

    def uls() -> None:
        uls_clipped_sum(private_model, users, 1.0, "gradient", 1, 0.1, 8, start, chunk_size=args.batch)

    for _ in range(args.warmup):
        plain(), els(), uls()
    wall = {"plain": [], "els": [], "uls": []}
    cpu = {"plain": [], "els": [], "uls": []}
    for _ in range(args.reps):
        for name, fn in (("plain", plain), ("els", els), ("uls", uls)):
            w, c = timed(fn)
            wall[name].append(w)
            cpu[name].append(c)
    for name in wall:
        print(f"  {name:5s} wall s: {' '.join(f'{x:6.2f}' for x in wall[name])}   "
              f"cpu s: {' '.join(f'{x:6.2f}' for x in cpu[name])}")
    med = {k: statistics.median(v) for k, v in cpu.items()}
    ratio = {k: statistics.median([a / b for a, b in zip(cpu[k], cpu["plain"])]) for k in ("els", "uls")}
    wratio = {k: statistics.median([a / b for a, b in zip(wall[k], wall["plain"])]) for k in ("els", "uls")}
    print(f"SmolLM2-135M ({args.model}) + LoRA r={args.rank} q_proj,v_proj: {num_trainable(plain_model):,} "
          f"trainable; batch {args.batch} x {args.seq_len} tokens; ULS {len(users)} users x {args.per_user}; "
          f"threads {args.threads}; reps {args.reps} after {args.warmup} warm-up; model load {load_s:.1f} s")
    print("examples per CPU-second (median CPU time per call); ratio = median over reps of private/plain time")
    print(f"plain step (fwd+bwd)          : {med['plain']:7.2f} s  {args.batch / med['plain']:7.2f} examples/s")
    for k, label in (("els", "ELS per-example clipped sum   "), ("uls", f"ULS round ({len(users)} user updates)   ")):
        print(f"{label}: {med[k]:7.2f} s  {args.batch / med[k]:7.2f} examples/s  "
              f"cost ratio {ratio[k]:.3f}x plain (CPU), {wratio[k]:.3f}x (wall)")
    print(f"load average (1 min) at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
