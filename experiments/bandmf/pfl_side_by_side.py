#!/usr/bin/env python
"""Banded noise side by side with pfl-research 0.6's `BandedMatrixFactorizationMechanism`.

    python experiments/bandmf/pfl_side_by_side.py --pfl-python .pfl-venv/bin/python [--dim 100000]
        [--rounds 100] [--bands 4,16] [--time-rounds 30]

pfl 0.6 pins an older dp-accounting, so it runs in its own environment (experiments/README.md, Population
scale: `python3 -m venv .pfl-venv && .pfl-venv/bin/pip install torch==2.13.0 && .pfl-venv/bin/pip install
pfl==0.6.0`); this script runs itself there with `--inner` in a subprocess and compares, in one run:

1. **The same C, the same noise.** Our b-banded Toeplitz strategy C (sqrt coefficients) given to pfl's
   `ForwardSubstitution` (the online C⁻¹ of its mechanism, bandwidth b) and to our `NoiseStream`, fed the same
   z_1 … z_T (d coordinates): the largest difference of the two w = C⁻¹z streams, and both streams' measured
   prefix-sum error against the closed form (`fl_userdp.mechanism.bandmf.error_ratio`).
2. **Each tool's own C.** pfl builds its C by optimising the prefix-sum workload over T × T banded matrices
   (min_separation b: its C has b − 1 bands, the off-by-one its code notes); ours are Toeplitz (sqrt closed
   form, or optimised). The error ratio against independent noise of each, from the matrices, at each C's
   true sensitivity (its largest column norm), and the largest column and row norms: pfl optimises the Gram
   matrix X = CᵀC with diag(X) ≤ 1 and then streams with the Cholesky factor L of X = LLᵀ, whose *rows* have
   norm 1 — its columns, the sensitivity, are not bounded by 1 and its noise has no factor for them.
3. **Time per round** of adding the noise at d coordinates: pfl's `add_noise` against our `release`,
   median over --time-rounds rounds after 3 warm-up rounds, measured in each process one after the other.

Prints one JSON line per figure and a table.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[2]


def error_of(c_matrix: np.ndarray) -> float:
    """Prefix-sum error ratio of a lower-triangular strategy C against independent noise (C = I): the
    workload A = tril(1) factored as B = A C⁻¹, error ‖B‖_F · max column norm of C, over ‖A‖_F."""
    t = c_matrix.shape[0]
    a = np.tril(np.ones((t, t)))
    b = a @ np.linalg.inv(c_matrix)
    sens = float(np.sqrt((c_matrix ** 2).sum(axis=0)).max())
    return float(np.linalg.norm(b) * sens / np.linalg.norm(a))


def inner(args) -> int:
    """Runs in pfl's environment: pfl's ForwardSubstitution on our C and z, pfl's own C, pfl's time."""
    import torch
    from pfl.internal.ops import pytorch_ops
    from pfl.internal.ops.selector import set_framework_module
    set_framework_module(pytorch_ops)
    torch.set_num_threads(1)
    from pfl.privacy.ftrl_mechanism import BandedMatrixFactorizationMechanism, ForwardSubstitution
    from pfl.privacy import PLDPrivacyAccountant
    from pfl.stats import MappedVectorStatistics

    work = Path(args.work)
    out = {}
    for b in args.bands_list:
        c_ours = np.load(work / f"c_ours_b{b}.npy")
        z = np.load(work / "z.npy")                      # (rounds, dim)
        fs = ForwardSubstitution(c_ours, bandwidth=b)
        w = np.stack([fs.step(torch.from_numpy(z[t]).float()).double().numpy() for t in range(z.shape[0])])  # pfl: float32
        np.save(work / f"w_pfl_b{b}.npy", w)
        os.chdir(work)                                   # pfl writes its C under the working folder
        t0 = time.perf_counter()
        mech = BandedMatrixFactorizationMechanism(
            clipping_bound=1.0, num_iterations=args.rounds, min_separation=b,
            make_privacy_accountant=lambda n: PLDPrivacyAccountant(
                num_compositions=n, sampling_probability=0.1, mechanism="gaussian", epsilon=8.0, delta=1e-6))
        opt_s = time.perf_counter() - t0
        np.save(work / f"c_pfl_b{b}.npy", mech.query_matrix)
        times = []
        stats = MappedVectorStatistics({"w": torch.zeros(args.dim)})
        for r in range(3 + args.time_rounds):
            t0 = time.perf_counter()
            mech.add_noise(stats, cohort_size=1, seed=r)
            if r >= 3:
                times.append(time.perf_counter() - t0)
        out[b] = {"pfl_optimise_s": opt_s, "pfl_add_noise_s": statistics.median(times)}
    (work / "pfl.json").write_text(json.dumps(out))
    return 0


def outer(args) -> int:
    from fl_userdp.mechanism.aggregate import release
    from fl_userdp.mechanism.bandmf import NoiseStream, coefficients, error_ratio, strategy_matrix
    from fl_userdp.rng import rng_for

    rng = np.random.default_rng(0)
    work = Path(tempfile.mkdtemp(prefix="pfl-bandmf-"))
    z = rng.standard_normal((args.rounds, args.err_dim))
    np.save(work / "z.npy", z)
    ours = {}
    for b in args.bands_list:
        coeffs = coefficients("sqrt", b)
        np.save(work / f"c_ours_b{b}.npy", strategy_matrix(coeffs, args.rounds))
        stream = NoiseStream(coeffs, args.err_dim)
        ours[b] = np.stack([stream.next(z[t]) for t in range(args.rounds)])
    cmd = [args.pfl_python, __file__, "--inner", "--work", str(work), "--dim", str(args.dim), "--rounds",
           str(args.rounds), "--bands", args.bands, "--time-rounds", str(args.time_rounds)]
    load0 = os.getloadavg()[0]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if proc.returncode != 0:
        print(proc.stderr[-3000:], file=sys.stderr)
        return proc.returncode
    pfl = {int(k): v for k, v in json.loads((work / "pfl.json").read_text()).items()}
    rows = []
    a = np.tril(np.ones((args.rounds, args.rounds)))
    for b in args.bands_list:
        w_pfl = np.load(work / f"w_pfl_b{b}.npy")
        coeffs = coefficients("sqrt", b)
        measured = {name: float(np.sqrt(((a @ w) ** 2).mean()) / np.sqrt((a ** 2).sum() / args.rounds))
                    for name, w in (("ours", ours[b]), ("pfl", w_pfl))}
        stream = NoiseStream(coeffs, args.dim)
        times = []
        total = np.zeros(args.dim)
        for r in range(3 + args.time_rounds):
            t0 = time.perf_counter()
            release(total, 1.0, 1.0, 1.0, rng_for(0, "noise", r), stream)
            if r >= 3:
                times.append(time.perf_counter() - t0)
        c_pfl = np.load(work / f"c_pfl_b{b}.npy")
        rows.append({"figure": "pfl_side_by_side", "T": args.rounds, "bands": b, "d_error": args.err_dim,
                     "same_C_max_abs_diff": float(np.abs(ours[b] - w_pfl).max()),
                     "measured_error_ratio_ours": measured["ours"], "measured_error_ratio_pfl": measured["pfl"],
                     "closed_form_error_ratio_sqrt": error_ratio(coeffs, args.rounds),
                     "error_ratio_ours_optimized": error_ratio(coefficients("optimized", b, args.rounds), args.rounds),
                     "error_ratio_pfl_own_C": error_of(c_pfl),
                     "pfl_C_max_column_norm": float(np.sqrt((c_pfl ** 2).sum(axis=0)).max()),
                     "pfl_C_max_row_norm": float(np.sqrt((c_pfl ** 2).sum(axis=1)).max()),
                     "ours_C_max_column_norm": float(np.sqrt((strategy_matrix(coeffs, args.rounds) ** 2).sum(axis=0)).max()),
                     "pfl_C_bands": int(max(
                         (i - j + 1) for i in range(args.rounds) for j in range(i + 1) if abs(c_pfl[i, j]) > 1e-12)),
                     "pfl_optimise_s": pfl[b]["pfl_optimise_s"], "d_time": args.dim,
                     "round_s_ours": statistics.median(times), "round_s_pfl": pfl[b]["pfl_add_noise_s"],
                     "loadavg_before": load0, "loadavg_after": os.getloadavg()[0]})
    for r in rows:
        print(json.dumps(r))
    print(f"\n| b | T | same C: max |w_ours − w_pfl| | error ratio measured ours / pfl (closed form) | "
          f"own C: ours sqrt / ours optimised / pfl | round at d = {args.dim:,}: ours / pfl |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['bands']} | {r['T']} | {r['same_C_max_abs_diff']:.2g} | {r['measured_error_ratio_ours']:.4f} / "
              f"{r['measured_error_ratio_pfl']:.4f} ({r['closed_form_error_ratio_sqrt']:.4f}) | "
              f"{r['closed_form_error_ratio_sqrt']:.4f} / {r['error_ratio_ours_optimized']:.4f} / "
              f"{r['error_ratio_pfl_own_C']:.4f} ({r['pfl_C_bands']} bands) | {1e3 * r['round_s_ours']:.2f} ms / "
              f"{1e3 * r['round_s_pfl']:.2f} ms |")
    print("\nSensitivity: a user's one participation in round j moves C·x by ‖C e_j‖ (C's column j). Ours: max "
          "column norm " + ", ".join(f"{r['ours_C_max_column_norm']:.4f} (b = {r['bands']})" for r in rows)
          + "; pfl's own C: " + ", ".join(f"{r['pfl_C_max_column_norm']:.4f} (rows {r['pfl_C_max_row_norm']:.4f}, "
                                          f"b = {r['bands']})" for r in rows)
          + ". pfl's noise is σ·clip with no factor for it: where the column norm is above 1, its noise is that much "
          "below what its accountant assumes.")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pfl-python", default=str(ROOT / ".pfl-venv" / "bin" / "python"))
    ap.add_argument("--dim", type=int, default=100_000, help="coordinates of the timed release")
    ap.add_argument("--err-dim", type=int, default=2000, help="coordinates of the error measurement")
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--bands", default="4,16")
    ap.add_argument("--time-rounds", type=int, default=30)
    ap.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--work", default="", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.bands_list = [int(b) for b in args.bands.split(",")]
    return inner(args) if args.inner else outer(args)


if __name__ == "__main__":
    sys.exit(main())
