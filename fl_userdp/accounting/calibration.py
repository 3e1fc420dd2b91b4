"""Noise calibration: the smallest σ whose user-level ε meets a target.

Bisection on σ with the same accountant code that later reports ε; the
returned σ is always on the feasible side (its ε ≤ target), so calibration
never overshoots the target. Relative σ tolerance 1e-3 by default.
"""
from __future__ import annotations

import math

from ..errors import ConfigError
from .accountant import epsilon_for
from .events import MIN_NOISE_MULTIPLIER, check_steps, make_event

MAX_SIGMA = 1e4


def calibrate_noise(
    mode: str,
    target_epsilon: float,
    delta: float,
    sampling_rate: float,
    steps: int,
    max_examples_per_user: int | None = None,
    backend: str = "pld",
    rel_tol: float = 1e-3,
    bands: int = 1,
) -> tuple[float, float]:
    """Return (σ, achieved ε) for `steps` releases of the mode's event (`bands` > 1: banded noise over cyclic
    groups, ⌈steps/bands⌉ participations — `fl_userdp.accounting.events.participations`)."""
    if not isinstance(target_epsilon, (int, float)) or not (target_epsilon > 0) or math.isinf(target_epsilon):
        raise ConfigError("target-epsilon", target_epsilon, "must be a finite number > 0")
    check_steps(steps)

    def eps(sigma: float) -> float:
        if sigma not in seen:  # (the search revisits the σ it doubled to last)
            event = make_event(mode, sampling_rate, sigma, max_examples_per_user, bands)
            seen[sigma] = epsilon_for([(event, steps)], delta, backend)
        return seen[sigma]

    seen: dict[float, float] = {}

    if steps == 0:
        make_event(mode, sampling_rate, 0.0, max_examples_per_user, bands)  # validates
        return 0.0, 0.0
    hi = 1.0
    e_hi = eps(hi)
    while e_hi > target_epsilon:
        hi *= 2.0
        if hi > MAX_SIGMA:
            raise ConfigError("target-epsilon", target_epsilon, f"is unreachable with noise multiplier <= {MAX_SIGMA:g}")
        e_hi = eps(hi)
    lo = hi / 2.0
    e_lo = eps(lo)
    while e_lo <= target_epsilon:
        hi, e_hi = lo, e_lo
        lo /= 2.0
        if lo < MIN_NOISE_MULTIPLIER:  # the smallest σ the accountant takes already meets the target
            return hi, e_hi
        e_lo = eps(lo)
    # Safeguarded regula falsi on log ε vs log σ (ε is smooth and decreasing in σ):
    # aim a hair above the interpolated root so the guess lands on the feasible
    # side, then probe just below it to close the bracket; fall back to the
    # geometric midpoint whenever the bracket did not halve (guaranteed progress).
    # Same contract as plain bisection: hi feasible, lo infeasible, gap <= rel_tol·hi.
    last_gap = math.inf
    while (hi - lo) > rel_tol * hi:
        gap = hi - lo
        if gap > 0.5 * last_gap or not (math.isfinite(e_lo) and e_lo > target_epsilon >= e_hi > 0):
            mid = math.sqrt(lo * hi)
        else:
            frac = (math.log(e_lo) - math.log(target_epsilon)) / (math.log(e_lo) - math.log(e_hi))
            mid = math.exp(math.log(lo) + frac * (math.log(hi) - math.log(lo))) * (1.0 + 0.5 * rel_tol)
            closing = hi * (1.0 - rel_tol)  # a probe here ends the search if it is infeasible
            if mid >= hi * (1.0 - 0.5 * rel_tol) and closing > lo:
                mid = closing
            mid = min(max(mid, lo + 0.01 * gap), hi - 0.01 * gap)
        last_gap = gap
        e_mid = eps(mid)
        if e_mid <= target_epsilon:
            hi, e_hi = mid, e_mid
        else:
            lo, e_lo = mid, e_mid
    return hi, e_hi
