"""User-level epsilon by privacy loss distributions, with adaptive discretisation.

Every PLD here is dp_accounting's *pessimistic* connect-the-dots PLD, which is
an upper bound on the true privacy loss at any discretisation interval h. We
therefore evaluate a short ladder of intervals from coarse to fine (never finer
than dp_accounting's default 1e-4) and stop once two successive rungs agree to
`REL_TOL`; the reported epsilon is the smaller of those two upper bounds. When
the ladder never settles (tiny per-step losses, where a coarse grid is badly
off), it ends at 1e-4, i.e. at dp_accounting's own default answer.
"""
from __future__ import annotations

import functools
import math
from typing import Sequence

import numpy as np
from dp_accounting.pld import privacy_loss_distribution as pld_lib
from dp_accounting.pld import privacy_loss_mechanism as plm

from .events import ElsStep, Event, UlsRound
from .mixture import FastMixtureGaussianPrivacyLoss

FINEST_INTERVAL = 1e-4
LADDER_RATIO = 4
LADDER_RUNGS = 7  # coarsest interval = 1e-4 * 4**6 ≈ 0.41
REL_TOL = 5e-3
START_POINTS = 3000  # support size of the coarsest rung actually tried

Run = tuple[Event, int]  # an event released `count` times


def _ladder() -> list[float]:
    return [FINEST_INTERVAL * LADDER_RATIO**j for j in reversed(range(LADDER_RUNGS))]


def _mixture_loss(event: ElsStep, adjacency: plm.AdjacencyType) -> FastMixtureGaussianPrivacyLoss:
    js, probs = event.sensitivity_distribution()
    return FastMixtureGaussianPrivacyLoss(
        event.noise_multiplier, js, probs, adjacency_type=adjacency
    )


@functools.lru_cache(maxsize=256)
def step_pld(event: Event, interval: float) -> pld_lib.PrivacyLossDistribution:
    """Pessimistic PLD of one release of `event` (σ must be > 0)."""
    if isinstance(event, UlsRound):
        return pld_lib.from_gaussian_mechanism(
            standard_deviation=event.noise_multiplier,
            sampling_prob=event.sampling_rate,
            value_discretization_interval=interval,
        )
    make = pld_lib._create_pld_pmf_from_monotone_privacy_loss  # noqa: SLF001
    pmfs = [
        make(
            _mixture_loss(event, adj),
            pessimistic_estimate=True,
            value_discretization_interval=interval,
            use_connect_dots=True,
        )
        for adj in (plm.AdjacencyType.REMOVE, plm.AdjacencyType.ADD)
    ]
    return pld_lib.PrivacyLossDistribution(pmfs[0], pmfs[1])


@functools.lru_cache(maxsize=256)
def _loss_range(event: Event) -> float:
    """Width of the per-step privacy-loss support (tails cut at mass e^-50)."""
    if isinstance(event, UlsRound):
        sens, probs = np.array([0.0, 1.0]), np.array([1 - event.sampling_rate, event.sampling_rate])
        if event.sampling_rate == 1.0:
            sens, probs = np.array([1.0]), np.array([1.0])
    else:
        sens, probs = event.sensitivity_distribution()
    loss = plm.MixtureGaussianPrivacyLoss(event.noise_multiplier, sens, probs)
    bounds = loss.connect_dots_bounds()
    return float(bounds.epsilon_upper - bounds.epsilon_lower)


def is_infinite(runs: Sequence[Run]) -> bool:
    """True when some release carries no noise at all."""
    return any(count > 0 and event.noise_multiplier == 0 for event, count in runs)


def composed_pld(runs: Sequence[Run], interval: float) -> pld_lib.PrivacyLossDistribution | None:
    """PLD of all runs composed at one interval; None when nothing was released."""
    total = None
    for event, count in runs:
        if count <= 0:
            continue
        part = step_pld(event, interval).self_compose(count) if count > 1 else step_pld(event, interval)
        total = part if total is None else total.compose(part)
    return total


def _start_rung(runs: Sequence[Run]) -> int:
    widest = max(_loss_range(e) for e, c in runs if c > 0)
    ladder = _ladder()
    for i, h in enumerate(ladder):
        if widest / h >= START_POINTS:
            return i
    return len(ladder) - 1


def epsilon(runs: Sequence[Run], delta: float) -> float:
    """Smallest certified user-level epsilon at `delta` for the composed runs."""
    runs = [(e, int(c)) for e, c in runs if int(c) > 0]
    if not runs:
        return 0.0
    if is_infinite(runs):
        return math.inf
    ladder = _ladder()
    previous = None
    for h in ladder[_start_rung(runs):]:
        current = composed_pld(runs, h).get_epsilon_for_delta(delta)
        if previous is not None and abs(previous - current) <= REL_TOL * max(current, 1e-12):
            return min(previous, current)
        previous = current if previous is None else min(previous, current)
    return previous


def delta_for_epsilon(runs: Sequence[Run], eps: float) -> float:
    """Delta at `eps` at the finest interval (used for group privacy)."""
    runs = [(e, int(c)) for e, c in runs if int(c) > 0]
    if not runs:
        return 0.0
    if is_infinite(runs):
        return 1.0
    return float(composed_pld(runs, FINEST_INTERVAL).get_delta_for_epsilon(eps))
