"""Banded correlated noise (privacy.mechanism = "bandmf"): its error against independent noise, and its cost.

1. **Error.** For T in --rounds-list and b in --bands-list: the prefix-sum RMSE of the strategy over that of
   independent noise at equal σ (`fl_userdp.mechanism.bandmf.error_ratio`, closed form), for the square-root
   and the optimised coefficients, and the same ratio *measured* from the noise stream itself (T rounds of
   `NoiseStream.next` on --coords independent coordinates: mean over coordinates of Σ_t (Σ_{s≤t} w_s)²).
2. **Time.** Tiny-LM rounds through the real strategy and in-process nodes, independent noise and b = --bands
   alternating round by round in one process (so load from other processes hits both alike) at the same
   expected cohort (--cohort users: q = cohort/N, and b·cohort/N within a group for BandMF), the secret
   noise record written as in a run; medians over --time-rounds rounds each, the load average before and
   after. Also the release step alone (draw, stream, divide) on the same d.
3. **Memory.** The stream's b·d float64 (the buffer's (b−1)·d plus z_t and w_t) against the process's peak
   RSS (tiny LM), and against SmolLM2-135M + LoRA (rank --lora-rank on every projection, d counted from the
   model built from the exported folder's config, random weights; skipped when the folder is absent).

Writes one JSON line per figure to --out and prints a table.

    OMP_NUM_THREADS=1 python experiments/bench_bandmf.py                  # the figures of experiments/README
    OMP_NUM_THREADS=1 python experiments/bench_bandmf.py --smoke          # seconds: the smallest setting
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from fl_userdp.mechanism.bandmf import NoiseStream, coefficients, error_ratio  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def measured_ratio(coeffs: np.ndarray, rounds: int, coords: int, seed: int = 0) -> float:
    """The prefix-sum RMSE ratio measured from the stream: sqrt(mean_coords Σ_t (Σ_{s≤t} w_s)² / (T(T+1)/2))."""
    rng = np.random.default_rng(seed)
    stream, prefix, total = NoiseStream(coeffs, coords), np.zeros(coords), np.zeros(coords)
    for _ in range(rounds):
        prefix += stream.next(rng.standard_normal(coords))
        total += prefix * prefix
    return float(np.sqrt(total.mean() / (rounds * (rounds + 1) / 2)))


def error_rows(rounds_list, bands_list, coords) -> list[dict]:
    rows = []
    for T in rounds_list:
        for b in bands_list:
            for kind in ("sqrt", "optimized"):
                c = coefficients(kind, b, T)
                rows.append({"figure": "error_ratio", "T": T, "bands": b, "coefficients": kind,
                             "closed_form": error_ratio(c, T), "measured": measured_ratio(c, T, coords),
                             "coords": coords})
    return rows


def tiny_cfg(args, mechanism: str, bands: int, out: Path):
    from fl_userdp.config import parse_config

    rate = min(1.0, args.cohort * bands / args.users)  # the same expected cohort: q is within one of b groups
    flat = {"data.num-users": args.users, "privacy.sampling-rate": rate, "privacy.noise-multiplier": 1.0,
            "train.rounds": 2 * args.time_rounds + 1, "train.eval-every": 0, "privacy.mode": args.mode,
            "privacy.mechanism": mechanism, "privacy.bands": bands, "out": str(out), "seed": 3,
            "sim.users-per-node": args.users, "model.name": args.model}
    return parse_config(flat)


def time_rows(args) -> list[dict]:
    """Rounds of independent and banded noise, alternating, through the real strategy and in-process nodes."""
    from fl_userdp.server.inprocess import InProcessTransport
    from fl_userdp.server.noise_record import NoiseRecord
    from fl_userdp.server.runner import prepare
    from fl_userdp.server.strategy import UserDPStrategy

    tmp = Path(tempfile.mkdtemp(prefix="bench_bandmf_"))
    cfgs = {"independent": tiny_cfg(args, "independent", 1, tmp / "ind"),
            f"bandmf b={args.bands}": tiny_cfg(args, "bandmf", args.bands, tmp / "band")}
    setup = prepare(next(iter(cfgs.values())), [args.mode])
    runs = {}
    for name, cfg in cfgs.items():
        s = UserDPStrategy(cfg, setup.counts, setup.init_weights, 1.0)
        if s.stream is not None and s.stream.bands > 1:
            record = NoiseRecord(tmp / "band", args.mode)
            record.start("bench")
            s.noise_record = record.write
        runs[name] = (s, InProcessTransport(cfg), [])
    load0 = os.getloadavg()
    for name, (s, t, _) in runs.items():  # warm-up round each (model build, first allocations)
        s.run_round(t)
    for _ in range(args.time_rounds):
        for name, (s, t, times) in runs.items():
            t0 = time.perf_counter()
            s.run_round(t)
            times.append(time.perf_counter() - t0)
    load1 = os.getloadavg()
    d = int(next(iter(runs.values()))[0].weights.size)
    med = {name: statistics.median(times) for name, (_, _, times) in runs.items()}
    base, banded = med["independent"], med[f"bandmf b={args.bands}"]
    # the release step alone on the same d: draw z, (stream), add, divide
    from fl_userdp.mechanism.aggregate import release

    total, reps, alone = np.zeros(d), max(20, args.time_rounds), {}
    for name, stream in (("independent", None), (f"bandmf b={args.bands}", NoiseStream(coefficients(
            "sqrt", args.bands), d))):
        rng = np.random.default_rng(0)
        for _ in range(args.bands):  # fill the buffer first
            release(total, 1.0, 1.0, 10.0, rng, stream)
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            release(total, 1.0, 1.0, 10.0, rng, stream)
            ts.append(time.perf_counter() - t0)
        alone[name] = statistics.median(ts)
    users = {name: statistics.mean(len(sum((list(r.users) for r in s.sample(t).values()), []))
                                   for t in range(1, 2 * args.time_rounds + 2)) for name, (s, _, _) in runs.items()}
    return [{"figure": "round_time", "model": args.model, "mode": args.mode, "mean_users_sampled": users, "d": d, "bands": args.bands, "rounds_each": args.time_rounds,
             "median_s": med, "overhead_fraction": banded / base - 1.0, "release_step_s": alone,
             "release_step_extra_s": alone[f"bandmf b={args.bands}"] - alone["independent"],
             "loadavg_before": load0, "loadavg_after": load1, "cpus": os.cpu_count()}]


def memory_rows(args, d_tiny: int | None) -> list[dict]:
    rows = []
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # bytes (Linux: KiB)
    if d_tiny is not None:
        stream = args.bands * d_tiny * 8
        rows.append({"figure": "memory", "model": args.model, "d": d_tiny, "bands": args.bands, "stream_bytes": stream,
                     "process_peak_rss_bytes": peak, "fraction_of_peak_rss": stream / peak})
    if args.smollm2:
        from fl_userdp.assets import hf_model_dir

        folder = hf_model_dir()
        if not (folder / "config.json").exists():
            rows.append({"figure": "memory", "model": "smollm2-135m", "skipped": f"no {folder}/config.json"})
            return rows
        import torch
        from peft import LoraConfig, get_peft_model
        from transformers import AutoConfig, AutoModelForCausalLM

        from fl_userdp.config import ModelConfig
        from fl_userdp.local.model import lora_targets

        config = AutoConfig.from_pretrained(folder)
        with torch.device("meta"):  # shapes only: no weights are allocated or loaded
            base = AutoModelForCausalLM.from_config(config)
        targets = lora_targets(ModelConfig(name=str(folder), lora_rank=args.lora_rank), base)
        model = get_peft_model(base, LoraConfig(r=args.lora_rank, lora_alpha=args.lora_rank, target_modules=targets,
                                                lora_dropout=0.0, bias="none"))
        d = sum(p.numel() for p in model.parameters() if p.requires_grad)
        params = sum(p.numel() for p in model.parameters())
        stream = args.bands * d * 8
        weights = params * 4  # float32
        rows.append({"figure": "memory", "model": "smollm2-135m", "lora_rank": args.lora_rank, "lora_targets": targets,
                     "d": int(d), "bands": args.bands, "stream_bytes": stream, "model_float32_bytes": weights,
                     "fraction_of_model_bytes": stream / weights,
                     "stream_bytes_float32_buffer": args.bands * d * 4})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds-list", default="100,1000")
    ap.add_argument("--bands-list", default="4,16,64")
    ap.add_argument("--coords", type=int, default=4000, help="coordinates for the measured error ratio")
    ap.add_argument("--bands", type=int, default=64, help="b of the time and memory figures")
    ap.add_argument("--time-rounds", type=int, default=15, help="timed rounds of each mechanism")
    ap.add_argument("--users", type=int, default=2048)
    ap.add_argument("--cohort", type=float, default=16.0,
                    help="expected users per round of both mechanisms (q = cohort/N, and b·cohort/N within a group)")
    ap.add_argument("--mode", default="uls", choices=["uls", "els"])
    ap.add_argument("--model", default="tiny", help="model.name of the timed rounds: tiny (the LM) or linear")
    ap.add_argument("--lora-rank", type=int, default=8)
    ap.add_argument("--no-smollm2", dest="smollm2", action="store_false")
    ap.add_argument("--smoke", action="store_true",
                    help="smallest setting (seconds): T=20, b=4, 2 timed rounds of the linear task, 64 users")
    ap.add_argument("--out", default=str(ROOT / "experiments" / "bandmf" / "results.jsonl"))
    a = ap.parse_args(argv)
    if a.smoke:
        a.rounds_list, a.bands_list, a.coords, a.bands, a.time_rounds, a.users, a.cohort, a.smollm2, a.model = \
            "20", "4", 200, 4, 2, 64, 8.0, False, "linear"
    rounds_list = [int(x) for x in a.rounds_list.split(",")]
    bands_list = [int(x) for x in a.bands_list.split(",")]
    rows = error_rows(rounds_list, bands_list, a.coords)
    timing = time_rows(a)
    rows += timing + memory_rows(a, timing[0]["d"])
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w") as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n")
    for r in rows:
        if r["figure"] == "error_ratio":
            print(f"T={r['T']:>5} b={r['bands']:>3} {r['coefficients']:>9}: prefix-sum RMSE ratio "
                  f"{r['closed_form']:.4f} (closed form), {r['measured']:.4f} (measured, {r['coords']} coords)")
        elif r["figure"] == "round_time":
            m = r["median_s"]
            print(f"round time ({r['model']}, {r['mode']}, d={r['d']}): " + ", ".join(f"{k} {v:.3f} s" for k, v in m.items())
                  + f"; overhead {100 * r['overhead_fraction']:+.1f} %; release step alone "
                  + ", ".join(f"{k} {1e3 * v:.2f} ms" for k, v in r["release_step_s"].items())
                  + f"; load average {r['loadavg_before'][0]:.1f} -> {r['loadavg_after'][0]:.1f} on {r['cpus']} CPUs")
        elif "skipped" in r:
            print(f"memory {r['model']}: skipped ({r['skipped']})")
        else:
            frac = r.get("fraction_of_peak_rss", r.get("fraction_of_model_bytes"))
            what = "the process's peak RSS" if "fraction_of_peak_rss" in r else "the model's float32 weights"
            print(f"memory {r['model']}: d={r['d']:,}, b={r['bands']}: stream {r['stream_bytes'] / 2**20:.1f} MiB "
                  f"= {100 * frac:.2f} % of {what}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
