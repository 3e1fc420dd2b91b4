"""Private steps on a device: SmolLM2-135M + LoRA (or the tiny LM), ELS and ULS vs a plain step, with the
fraction of the device's measured matmul throughput they reach.

    python experiments/bench_gpu.py                                  # CUDA when present, else CPU
    python experiments/bench_gpu.py --device cuda --autocast bf16 --batch 256 --seq-len 128
    python experiments/bench_gpu.py --model tiny --batch 8 --reps 1  # the test suite's smoke form

One batch of `--batch` rows of `--seq-len` tokens, the same for every measurement; timed side by side,
alternating, medians over `--reps` after `--warmup` (CUDA synchronised around each call):

* plain: forward + mean loss + backward, non-private (the same autocast setting);
* ELS:   `els_clipped_sum` (per-example gradients, each clipped to C in float32, summed, one copy to host);
* ULS:   `uls_clipped_sum`, the batch split into users of `--per-user` rows (each user's mean gradient
         clipped as a whole).

FLOPs: a LoRA step's forward costs 2·P·t and its backward 2·P·t (activation gradients through the frozen
weights; their weight gradients are never formed), P = the base model's weights, t = tokens in the batch
(adapters and attention scores are left out, so this undercounts a little). The device's limit is measured
here, not looked up: the throughput of a large square matmul in the compute dtype (bfloat16 under
`--autocast bf16`, else the model dtype), so "fraction of limit" = model FLOP/s ÷ measured matmul FLOP/s.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from fl_userdp.assets import hf_model_dir  # noqa: E402
from fl_userdp.config import ModelConfig  # noqa: E402
from fl_userdp.local import build_model, els_clipped_sum, get_trainable, per_example_loss, set_trainable  # noqa: E402
from fl_userdp.local import uls_clipped_sum  # noqa: E402
from fl_userdp.local.model import num_trainable, trainable_params  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def matmul_flops(device: torch.device, dtype: torch.dtype, n: int, reps: int = 3) -> float:
    """FLOP/s of an n×n by n×n matmul on the device (median of reps, after one warm-up)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    times = [timed(lambda: a @ b, device) for _ in range(reps)]
    return 2.0 * n ** 3 / statistics.median(times)


def random_weights_folder(config_json: str) -> str:
    """An HF folder holding the architecture of `config_json` with random weights (timing only: the FLOPs
    and memory traffic of a step do not depend on the weights' values)."""
    import tempfile

    from transformers import AutoConfig, AutoModelForCausalLM

    folder = tempfile.mkdtemp(prefix="fl-userdp-shape-")
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(config_json))
    model.save_pretrained(folder)
    return folder


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_model = str(hf_model_dir()) if hf_model_dir().exists() else "tiny"
    ap.add_argument("--model", default=default_model, help="an HF folder, 'tiny', or 'shape:CONFIG.json' (that "
                    "architecture with random weights: the same FLOPs, for a machine without the assets; "
                    "experiments/gpu/smollm2-135m-config.json is SmolLM2-135M's); default: the exported SmolLM2 "
                    "when `fl-userdp assets --export-hf` has run, else tiny")
    ap.add_argument("--device", default="auto", help="cpu | cuda[:N] | auto")
    ap.add_argument("--autocast", default="none", choices=["none", "bf16"])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--per-user", type=int, default=4)
    ap.add_argument("--rank", type=int, default=4)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--matmul-n", type=int, default=0, help="matmul size for the limit (default 8192 on CUDA, "
                    "1024 on CPU)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    label = a.model
    if a.model.startswith("shape:"):
        a.model = random_weights_folder(a.model[len("shape:"):])
    targets = "q_proj,v_proj" if a.model != "tiny" else "auto"
    cfg = ModelConfig(name=a.model, seq_len=a.seq_len, lora_rank=a.rank, lora_alpha=2.0 * a.rank,
                      lora_targets=targets, device=a.device, autocast=a.autocast)
    plain_model, private_model = build_model(cfg, 0), build_model(cfg, 0)
    device = next(private_model.parameters()).device
    rng = np.random.default_rng(0)
    for m in (plain_model, private_model):  # B away from 0, as after a few rounds
        set_trainable(m, [x + 0.01 * rng.standard_normal(x.shape).astype(np.float32) for x in get_trainable(m)])
    vocab = plain_model.config.vocab_size
    examples = np.random.default_rng(1).integers(0, vocab - 1, (a.batch, a.seq_len))
    tokens = torch.as_tensor(examples, device=device)
    users = [examples[i:i + a.per_user] for i in range(0, a.batch, a.per_user)]
    start = get_trainable(private_model)
    params = [p for _, p in trainable_params(plain_model)]
    cast = a.autocast == "bf16"

    def plain() -> None:
        for p in params:
            p.grad = None
        with torch.enable_grad():
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=cast):
                loss = per_example_loss(plain_model, tokens).mean()
            loss.backward()

    def els() -> None:
        els_clipped_sum(private_model, examples, 1.0, chunk_size=a.batch, autocast=cast)

    def uls() -> None:
        uls_clipped_sum(private_model, users, 1.0, "gradient", 1, 0.1, 8, start, chunk_size=a.batch, autocast=cast)

    for _ in range(a.warmup):
        plain(), els(), uls()
    wall = {"plain": [], "els": [], "uls": []}
    for _ in range(a.reps):
        for name, fn in (("plain", plain), ("els", els), ("uls", uls)):
            wall[name].append(timed(fn, device))
    base_params = sum(p.numel() for n, p in plain_model.named_parameters() if "lora_" not in n)
    flops_per_step = 4.0 * base_params * a.batch * a.seq_len
    dtype = torch.bfloat16 if cast else next(plain_model.parameters()).dtype
    limit = matmul_flops(device, dtype, a.matmul_n or (8192 if device.type == "cuda" else 1024))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    out = {"device": name, "model": label, "autocast": a.autocast, "batch": a.batch, "seq_len": a.seq_len,
           "trainable": num_trainable(plain_model), "base_params": base_params,
           "matmul_tflops": limit / 1e12, "rows": {}}
    for k in wall:
        s = statistics.median(wall[k])
        out["rows"][k] = {"s_per_step": s, "examples_per_s": a.batch / s, "tflops": flops_per_step / s / 1e12,
                          "fraction_of_limit": flops_per_step / s / limit,
                          "ratio_to_plain": statistics.median([x / y for x, y in zip(wall[k], wall["plain"])])}
    if a.json:
        print(json.dumps(out))
        return out
    print(f"{name}; {label} + LoRA r={a.rank} ({out['trainable']:,} trainable, {base_params:,} base weights); "
          f"batch {a.batch} x {a.seq_len} tokens; autocast {a.autocast}; ULS {len(users)} users x {a.per_user}; "
          f"medians of {a.reps} reps after {a.warmup} warm-up")
    print(f"device limit: {limit / 1e12:.2f} TFLOP/s ({dtype} matmul, measured)")
    print(f"{'step':26s} {'s/step':>8s} {'examples/s':>11s} {'TFLOP/s':>8s} {'of limit':>9s} {'x plain':>8s}")
    for k, label in (("plain", "plain (non-private)"), ("els", "ELS per-example clipped"),
                     ("uls", f"ULS ({len(users)} user updates)")):
        r = out["rows"][k]
        print(f"{label:26s} {r['s_per_step']:8.4f} {r['examples_per_s']:11.1f} {r['tflops']:8.3f} "
              f"{100 * r['fraction_of_limit']:8.1f}% {r['ratio_to_plain']:8.2f}")
    return out


if __name__ == "__main__":
    main()
