"""`fl-userdp audit`: empirical lower bound on ε from canary users, next to the accountant's ε."""
from __future__ import annotations

import argparse

from .common import emit, fmt_eps


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mode", default="uls", help="uls or els")
    p.add_argument("--canaries", type=int, default=2000)
    p.add_argument("--dim", type=int, default=4000, help="dimension of the canary directions")
    p.add_argument("--rounds", type=int, default=50)
    p.add_argument("--sampling-rate", type=float, default=0.5)
    p.add_argument("--noise-multiplier", type=float, help="σ (default: calibrated to --target-epsilon)")
    p.add_argument("--target-epsilon", type=float, default=1.5)
    p.add_argument("--max-examples-per-user", type=int, default=4)
    p.add_argument("--delta", type=float, default=1e-6)
    p.add_argument("--confidence", type=float, default=0.95)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--noise-scale", type=float, default=1.0,
                   help="fault injection: multiply the noise actually added (not the accounted σ)")
    p.add_argument("--json", action="store_true")


def audit_cmd(a: argparse.Namespace) -> int:
    from ..audit import AuditConfig, run_audit

    cfg = AuditConfig(mode=a.mode, canaries=a.canaries, dim=a.dim, rounds=a.rounds, sampling_rate=a.sampling_rate,
                      noise_multiplier=a.noise_multiplier, target_epsilon=a.target_epsilon,
                      max_examples_per_user=a.max_examples_per_user, delta=a.delta, confidence=a.confidence,
                      seed=a.seed, noise_scale=a.noise_scale)
    res = run_audit(cfg)
    verdict = ("FLAGGED: the empirical lower bound exceeds the reported epsilon" if res.flagged
               else "consistent: the lower bound does not exceed the reported epsilon")
    text = (f"reported epsilon {fmt_eps(res.epsilon_reported)} (delta {res.delta:g}, sigma {res.noise_multiplier:.4g})\n"
            f"empirical lower bound {res.epsilon_lower_bound:.4g} at {res.confidence:.0%} confidence "
            f"({res.correct}/{res.guesses} guesses correct, {res.canaries} canaries)\n{verdict}")
    emit(res.to_dict(), a.json, text)
    return 3 if res.flagged else 0
