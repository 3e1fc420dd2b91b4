#!/usr/bin/env python
"""The pipeline audit's detection table: every injected fault × mode × seed, and the correct runs.

    OMP_NUM_THREADS=1 python experiments/audit_table.py [--seeds 10] [--out experiments/audit_table.md]
    OMP_NUM_THREADS=1 python experiments/audit_table.py --run-audit [--seeds 10]   # -> run_audit_table.md

Each cell is `fl-userdp audit --pipeline --mode M --inject-fault F --seed S` (server.audit; 1,000
canaries, d = 2,000, 30 rounds, target ε = 2): the count of flagged seeds, and which statistic flagged
them (lower bound, canary SNR estimate, release noise check, tests of the noise itself: scale, floor,
coordinate pairs, round pairs). With `--run-audit`: `fl-userdp audit --run` on in-process ULS runs kept
with `keep-releases=true` (the linear task, d = 600, and the tiny LM, d = 8,704; σ = 1), correct and with
0.95σ or one draw on both halves of the coordinates put into the release. The audit figures of
docs/guides/audit.md and docs/results/whole-run-privacy.md come from these tables.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def main() -> int:
    import numpy as np

    from fl_userdp.server.audit import FAULTS, PipelineAuditConfig, run_pipeline_audit

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--faults", default=",".join(FAULTS), help="comma-separated (default: all)")
    ap.add_argument("--out", type=Path, help="default: audit_table.md (run_audit_table.md with --run-audit)")
    ap.add_argument("--run-audit", action="store_true", help="the run-folder audit's table instead")
    args = ap.parse_args()
    if args.run_audit:
        return run_audit_table(args.seeds, args.out or HERE / "run_audit_table.md")
    args.out = args.out or HERE / "audit_table.md"
    lines = [f"| fault | mode | flagged (of {args.seeds} seeds) | by lower bound / estimate / noise check / "
             "noise tests (scale, floor, pairs, rounds) | canary SNR ratio (median) | noise scale (median) | "
             "coords below floor (median) | round-scale p (median) | pair statistic (median; flag below) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for fault in args.faults.split(","):
        for mode in ("uls", "els"):
            rows = [run_pipeline_audit(PipelineAuditConfig(mode=mode, fault=fault, seed=s)) for s in range(args.seeds)]
            lb = sum(r.epsilon_lower_bound > r.epsilon_reported for r in rows)
            est = sum(r.epsilon_estimate > r.epsilon_reported for r in rows)
            nc = sum(r.noise_check["flagged"] for r in rows)
            tests = [r.noise_tests for r in rows]
            kinds = [sum(any(f.startswith(p) for f in t["failures"]) for t in tests)
                     for p in ("noise scale", "noise floor", "two coordinates", "two rounds")]
            lines.append(f"| {fault} | {mode.upper()} | {sum(r.flagged for r in rows)} | {lb} / {est} / {nc} / "
                         f"{sum(t['flagged'] for t in tests)} ({', '.join(map(str, kinds))}) | "
                         f"{np.median([r.snr_ratio for r in rows]):.2f} | "
                         f"{np.median([t['scale_ratio'] for t in tests]):.3f} | "
                         f"{np.median([r.noise_check['coords_low'] for r in rows]):.0f} | "
                         f"{np.median([r.noise_check['scale_p'] for r in rows]):.2g} | "
                         f"{np.median([t['pairs_min'] for t in tests]):.3g}; {tests[0]['pairs_threshold']:.3g} |")
            print(lines[-1], flush=True)
    args.out.write_text("\n".join(lines) + "\n")
    return 0


RUN_TASKS = {
    "linear (d = 600, 12 rounds, q = 0.1 of 40 users)": {
        "model.name": "linear", "model.dim": 600, "data.num-users": 41, "data.heldout-users": 1,
        "privacy.sampling-rate": 0.1, "train.rounds": 12},
    "tiny LM (d = 8,704, 10 rounds, q = 0.2 of 64 users)": {
        "model.hidden-size": 32, "model.seq-len": 16, "data.num-users": 66, "data.heldout-users": 2,
        "privacy.sampling-rate": 0.2, "train.rounds": 10},
}


def run_audit_table(seeds: int, out: Path) -> int:
    import tempfile

    import numpy as np

    from fl_userdp.config import parse_config
    from fl_userdp.server import inprocess, strategy
    from fl_userdp.server.audit import faulty_release
    from fl_userdp.study.run_audit import audit_run

    honest = strategy.release
    lines = [f"| run | fault | flagged (of {seeds} seeds) | noise scale (median) | scale test flags noise below "
             "(any signal) | power at 0.95σ (no signal) | signal energy per coordinate (median) | power: one "
             "reused pair / half the coordinates (median) | power: a repeated round (median) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, task in RUN_TASKS.items():
        for fault in ("none", "noise-95", "reused-noise"):
            strategy.release = faulty_release(fault, honest)
            try:
                tests, flagged = [], 0
                for seed in range(seeds):
                    with tempfile.TemporaryDirectory() as folder:
                        inprocess.run(parse_config({**task, "privacy.noise-multiplier": 1.0, "train.eval-every": 0,
                                                    "keep-releases": True, "seed": seed, "out": folder}), ["uls"])
                        (res,) = audit_run(folder)
                    flagged += res.flagged
                    tests.append(res.tests)
            finally:
                strategy.release = honest
            med = lambda key: float(np.median([getattr(t, key) for t in tests]))  # noqa: E731
            lines.append(f"| {name} | {fault} | {flagged} | {med('scale_ratio'):.4f} | {med('scale_detects'):.3g}σ | "
                         f"{med('scale_power_95'):.3g} | {med('signal_energy'):.3g} | {med('pairs_power'):.3g} / "
                         f"{med('pairs_power_half'):.3g} | {med('rounds_power'):.3g} |")
            print(lines[-1], flush=True)
    out.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
