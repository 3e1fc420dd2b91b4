"""`fl-userdp mean-estimation`: the synthetic ULS-vs-ELS study, one configuration.

Both modes run at the same (ε, δ), the same number of steps and the same
expected examples per step (ULS cohort rate q_users; ELS example rate chosen so
q·n_k matches). σ is calibrated per mode by `accounting.calibrate_noise`.
"""
from __future__ import annotations

import argparse
import math

from .common import emit, json_number
from ..errors import ConfigError


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mode", default="both", choices=["uls", "els", "both"])
    p.add_argument("--epsilon", type=float, default=2.0, metavar="E")
    p.add_argument("--delta", type=float, default=1e-6, metavar="D")
    p.add_argument("--users", type=int, default=2000, metavar="N")
    p.add_argument("--dim", type=int, default=16, metavar="D")
    p.add_argument("--steps", type=int, default=100, metavar="T")
    p.add_argument("--max-examples-per-user", type=int, default=4, metavar="K")
    p.add_argument("--user-rate", type=float, default=0.05, metavar="Q",
                   help="ULS cohort rate; ELS gets the same expected examples per step")
    p.add_argument("--learning-rate", type=float, default=0.2)
    p.add_argument("--clip-norm", type=float, default=2.0)
    p.add_argument("--diversity", type=float, default=1.0, help="within-user std s (tau = 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--secure-mode", action="store_true",
                   help="sampling and noise from OS entropy (the seed then fixes only the data)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _validate(a: argparse.Namespace) -> None:
    for key, v, lo in (("--users", a.users, 1), ("--dim", a.dim, 1), ("--steps", a.steps, 1),
                       ("--max-examples-per-user", a.max_examples_per_user, 1), ("--seed", a.seed, 0)):
        if v < lo:
            raise ConfigError(key, v, f"must be an integer >= {lo}")
    if not (math.isfinite(a.epsilon) and a.epsilon > 0):
        raise ConfigError("--epsilon", a.epsilon, "must be a finite number > 0")
    if not (0 < a.delta < 1):
        raise ConfigError("--delta", a.delta, "must be in (0, 1)")
    if not (0 < a.user_rate <= 1):
        raise ConfigError("--user-rate", a.user_rate, "must be in (0, 1]")
    for key, v in (("--learning-rate", a.learning_rate), ("--clip-norm", a.clip_norm)):
        if not (math.isfinite(v) and v > 0):
            raise ConfigError(key, v, "must be a finite number > 0")
    if not (math.isfinite(a.diversity) and a.diversity >= 0):
        raise ConfigError("--diversity", a.diversity, "must be a finite number >= 0")


def mean_estimation_cmd(a: argparse.Namespace) -> int:
    _validate(a)
    from ..study import mean_estimation as me

    spec = me.TaskSpec(num_users=a.users, dim=a.dim, diversity=a.diversity)
    pop = me.Population(spec, a.seed)
    capped = pop.capped(a.max_examples_per_user)
    examples_per_step = a.user_rate * capped.total
    results = []
    for mode in (me.MODES if a.mode == "both" else (a.mode,)):
        res = me.run(spec, mode, a.epsilon, a.delta, a.max_examples_per_user,
                     examples_per_step=examples_per_step, steps=a.steps, learning_rates=a.learning_rate,
                     clip_norms=a.clip_norm, seed=a.seed, population=pop,
                     secure_mode=a.secure_mode)
        results.append({
            "mode": mode, "epsilon": json_number(res.epsilon), "target_epsilon": a.epsilon, "delta": a.delta,
            "noise_multiplier": res.noise_multiplier, "sampling_rate": res.sampling_rate,
            "final_error": float(res.errors[0]), "max_examples_per_user": a.max_examples_per_user,
            "steps": a.steps, "users": a.users, "dim": a.dim, "expected_examples_per_step": examples_per_step,
            "user_updates": res.user_updates, "examples": res.examples,
            "learning_rate": a.learning_rate, "clip_norm": a.clip_norm, "seed": a.seed,
        })
    text = "\n".join(f"{r['mode']}: epsilon={r['epsilon']:.4g} noise_multiplier={r['noise_multiplier']:.4g} "
                     f"final_error={r['final_error']:.4g}" for r in results)
    emit({"results": results}, a.json, text)
    return 0
