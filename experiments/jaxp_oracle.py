"""jax-privacy 2.0 as an oracle for banded-noise accounting and error (its own environment).

jax-privacy pulls in JAX, so it lives in a separate virtual environment (`.jaxp-venv`, ignored by git):

    python experiments/jaxp_oracle.py --setup          # creates .jaxp-venv with jax-privacy==2.0.0 (once)
    .jaxp-venv/bin/python experiments/jaxp_oracle.py   # writes tests/accounting/bandmf_oracle.json

What it writes, per case: (a) ε of jax-privacy's `amplified_bandmf_event(σ, T, num_bands=b, sampling_prob=q)`
under dp_accounting's PLD accountant (its default discretisation), and of its `DpsgdTrainingAccountant`
with `cycle_length=b`; (b) the mean squared prefix-sum error per round of a banded Toeplitz strategy
(`toeplitz.per_query_error`) for our square-root coefficients and for jax-privacy's own optimised banded
coefficients (`toeplitz.optimize_banded_toeplitz`). tests/accounting/test_bandmf_accounting.py and
tests/test_bandmf.py compare ours against the stored values (and against a live run when the
environment exists).
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / ".jaxp-venv"
OUT = ROOT / "tests" / "accounting" / "bandmf_oracle.json"
PIN = "jax-privacy==2.0.0"

# (q, σ, T, b, δ): ULS cases spanning small/large q, few/many participations
EPSILON_CASES = [(0.05, 1.0, 100, 4, 1e-5), (0.1, 0.8, 64, 16, 1e-5), (0.02, 1.5, 1000, 64, 1e-6),
                 (0.2, 2.0, 500, 16, 1e-5), (0.01, 0.7, 1000, 4, 1e-6)]
ERROR_CASES = [(4, 100), (16, 100), (64, 100), (4, 1000), (16, 1000), (64, 1000)]


def setup() -> None:
    if not (VENV / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    subprocess.run([str(VENV / "bin" / "pip"), "install", "-q", PIN], check=True)


def sqrt_coefficients(bands: int) -> list[float]:
    """Our closed form, written out again here (this script must not import fl_userdp: other environment)."""
    c = [1.0]
    for j in range(1, bands):
        c.append(c[-1] * (2 * j - 1) / (2 * j))
    norm = math.sqrt(sum(x * x for x in c))
    return [x / norm for x in c]


def epsilons(cases=EPSILON_CASES) -> list[dict]:
    import dp_accounting
    from jax_privacy.accounting import accountants, analysis
    from jax_privacy.experimental.accounting import amplified_bandmf_event

    rows = []
    for q, sigma, T, b, delta in cases:
        acc = dp_accounting.pld.PLDAccountant()
        acc.compose(amplified_bandmf_event(sigma, T, num_bands=b, sampling_prob=q))
        n = 100_000 * b  # batch_size / (n // b) = q exactly
        params = analysis.DpParams(noise_multipliers=sigma, num_samples=n, delta=delta,
                                   batch_size=int(round(q * n / b)), cycle_length=b)
        training = analysis.DpsgdTrainingAccountant(accountants.PldAccountantConfig()).compute_epsilon(T, params)
        rows.append({"q": q, "sigma": sigma, "T": T, "bands": b, "delta": delta,
                     "epsilon_event": float(acc.get_epsilon(delta)), "epsilon_training": float(training)})
    return rows


def errors(cases=ERROR_CASES) -> list[dict]:
    import jax
    import jax.numpy as jnp
    from jax_privacy.matrix_factorization import toeplitz

    jax.config.update("jax_enable_x64", True)
    rows = []
    for b, T in cases:
        c = jnp.asarray(sqrt_coefficients(b), dtype=jnp.float64)
        opt = toeplitz.optimize_banded_toeplitz(T, b)
        rows.append({"bands": b, "T": T,
                     "mse_sqrt": float(jnp.mean(toeplitz.per_query_error(strategy_coef=c, n=T))),
                     "mse_optimized": float(jnp.mean(toeplitz.per_query_error(strategy_coef=opt, n=T))),
                     "optimized_coefficients": [float(x) for x in opt]})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--setup", action="store_true", help=f"create {VENV.name} with {PIN} and exit")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--stdout", action="store_true", help="print the JSON instead of writing --out")
    a = ap.parse_args(argv)
    if a.setup:
        setup()
        return 0
    import jax_privacy

    data = {"jax_privacy": getattr(jax_privacy, "__version__", PIN.split("==")[1]),
            "epsilon": epsilons(), "prefix_error": errors()}
    text = json.dumps(data, indent=1)
    if a.stdout:
        print(text)
    else:
        Path(a.out).write_text(text + "\n")
        print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
