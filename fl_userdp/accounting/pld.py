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
START_POINTS = 1000  # support size (per step) of the coarsest rung actually tried

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


# -- the same numbers as dp_accounting, faster for a ledger that grows by one release per round --------------
# A round's epsilon self-composes the (cached) one-step PLD `count` times. dp_accounting's self_compose spends
# most of its time on Chernoff truncation bounds whose log-MGFs depend only on the one-step PMF, not on
# `count`; `_self_compose` caches them per step PMF (identical bounds, identical PMF). `_epsilon_for_delta`
# is dp_accounting's epsilon-for-delta scan with the scalar loop over the support replaced by cumulative sums
# (same bound; equal up to float rounding). Both fall back to the library for PMFs that are not dense.
_MGF_CACHE: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
TAIL_MASS_TRUNCATION = 1e-15  # dp_accounting's default for self_compose


def _log_mgfs(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """dp_accounting's Chernoff orders and log-MGFs of a one-step PMF (cached per array)."""
    hit = _MGF_CACHE.get(id(probs))
    if hit is None or hit[0] is not probs:
        from scipy import special

        orders = np.concatenate((np.arange(-20, 0), np.arange(1, 21))) / len(probs)
        grid = np.arange(len(probs))
        hit = (probs, orders, np.array([special.logsumexp(grid * o, b=probs) for o in orders]))
        if len(_MGF_CACHE) > 512:
            _MGF_CACHE.clear()
        _MGF_CACHE[id(probs)] = hit
    return hit[1], hit[2]


def _self_convolve_bounds(probs: np.ndarray, num_times: int, tail: float) -> tuple[int, int]:
    """dp_accounting.pld.common.compute_self_convolve_bounds with cached log-MGFs."""
    upper, lower = (len(probs) - 1) * num_times, 0
    orders, log_mgfs = _log_mgfs(probs)
    for order, log_mgf in zip(orders, log_mgfs):
        bound = (num_times * log_mgf + math.log(2 / tail)) / order
        if not math.isfinite(bound):
            continue
        if order > 0:
            upper = min(upper, math.ceil(bound))
        if order < 0:
            lower = max(lower, math.floor(bound))
    return lower, upper


def _pmf_self_compose(pmf, num_times: int):
    """DensePLDPmf.self_compose(num_times) (dp_accounting 0.6), with cached truncation bounds."""
    from dp_accounting.pld import pld_pmf
    from scipy import fft

    if not isinstance(pmf, pld_pmf.DensePLDPmf):
        return pmf.self_compose(num_times)
    probs = pmf._probs  # noqa: SLF001
    lower, upper = _self_convolve_bounds(probs, num_times, TAIL_MASS_TRUNCATION)
    out_len = upper - lower + 1
    fast_len = fft.next_fast_len(max(out_len, len(probs)))
    conv = np.real(fft.ifft(fft.fft(probs, fast_len) ** num_times))
    out = np.array(np.roll(conv, -lower)[:out_len])
    inf_prob = TAIL_MASS_TRUNCATION - math.expm1(num_times * math.log1p(-pmf._infinity_mass))  # noqa: SLF001
    return pld_pmf.DensePLDPmf(pmf._discretization, pmf._lower_loss * num_times + lower, out,  # noqa: SLF001
                               inf_prob, pmf._pessimistic_estimate)  # noqa: SLF001


def _self_compose(pld: pld_lib.PrivacyLossDistribution, count: int) -> pld_lib.PrivacyLossDistribution:
    remove = _pmf_self_compose(pld._pmf_remove, count)  # noqa: SLF001
    if pld._symmetric:  # noqa: SLF001
        return pld_lib.PrivacyLossDistribution(remove)
    return pld_lib.PrivacyLossDistribution(remove, _pmf_self_compose(pld._pmf_add, count))  # noqa: SLF001


def _pmf_epsilon(pmf, delta: float) -> float:
    """dp_accounting's `_get_epsilon_for_delta` scan (losses from the top down), vectorised."""
    from dp_accounting.pld import pld_pmf

    if not isinstance(pmf, pld_pmf.DensePLDPmf):
        return pmf.get_epsilon_for_delta(delta)
    inf_mass, h = pmf._infinity_mass, pmf._discretization  # noqa: SLF001
    if inf_mass > delta:
        return math.inf
    p = np.flip(pmf._probs)  # noqa: SLF001
    n = p.size
    if n == 0:
        return 0.0 if inf_mass <= delta else math.inf
    top = (pmf._lower_loss + n - 1) * h  # noqa: SLF001
    losses = np.cumsum(np.concatenate([[top], np.full(n - 1, -h)]))       # itertools.count(top, -h)
    upper = np.cumsum(np.concatenate([[inf_mass], p]))                    # mass_upper before step i: upper[i]
    lower = np.cumsum(np.concatenate([[0.0], np.exp(-losses) * p]))      # mass_lower before step i: lower[i]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # inf, as Python floats give
        stop = (upper[:-1] > delta) & (lower[:-1] > 0) & (np.log((upper[:-1] - delta) / lower[:-1]) >= losses)
    post = (upper[1:] >= delta) & (lower[1:] == 0)                        # checked after adding step i
    i_stop = int(np.argmax(stop)) if stop.any() else n
    i_post = int(np.argmax(post)) if post.any() else n
    if i_post < i_stop:
        return max(0.0, float(losses[i_post]))
    mu, ml = float(upper[i_stop]), float(lower[i_stop])
    if mu <= ml + delta:
        return 0.0
    return math.log((mu - delta) / ml)


def pld_epsilon_for_delta(pld: pld_lib.PrivacyLossDistribution, delta: float) -> float:
    """PrivacyLossDistribution.get_epsilon_for_delta (max over remove/add), vectorised."""
    eps = _pmf_epsilon(pld._pmf_remove, delta)  # noqa: SLF001
    if pld._symmetric:  # noqa: SLF001
        return eps
    return max(eps, _pmf_epsilon(pld._pmf_add, delta))  # noqa: SLF001


def composed_pld(runs: Sequence[Run], interval: float) -> pld_lib.PrivacyLossDistribution | None:
    """PLD of all runs composed at one interval; None when nothing was released."""
    total = None
    for event, count in runs:
        if count <= 0:
            continue
        part = _self_compose(step_pld(event, interval), count) if count > 1 else step_pld(event, interval)
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
        current = pld_epsilon_for_delta(composed_pld(runs, h), delta)
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
