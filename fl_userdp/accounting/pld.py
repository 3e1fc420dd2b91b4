"""User-level epsilon by privacy loss distributions, with adaptive discretisation.

Every PLD here is dp_accounting's *pessimistic* connect-the-dots PLD, which is
an upper bound on the true privacy loss at any discretisation interval h. We
evaluate a short ladder of intervals from coarse to fine (never finer than
dp_accounting's default 1e-4) and stop once two successive rungs agree to
`REL_TOL`; the reported epsilon is the smaller of those two upper bounds.

The ladder only pays when it stops before the finest rung: each rung costs
about 4x the one before (the composed support grows as 1/h), so a ladder that
has to reach 1e-4 costs about 4/3 of computing 1e-4 alone. It therefore falls
back to the finest rung alone whenever it cannot, or is not expected to, stop
earlier:

* the first rung that may end the ladder (per-step support >= `START_POINTS`)
  is already 4e-4 or finer: the first pair it could compare includes 1e-4;
* otherwise, after each rung, the gap between the last two rungs predicts the
  next gaps as gap / `CONTRACTION` per rung (the asymptotic rate of
  connect-the-dots, whose error is O(h^2); the rate observed before that is
  mostly slower, and a wrong guess costs time, never accuracy). When no pair
  coarser than (4e-4, 1e-4) is predicted to agree, the ladder jumps straight
  to 1e-4. So that the 4e-4 rung (a quarter of the work of 1e-4) never runs
  unmeasured, a ladder starting at 1.6e-3 first runs a probe at 6.4e-3, which
  only predicts and never ends the ladder.

Every rung is bounded in size, so that an answer takes bounded time and memory
(seconds and a few hundred MB at the bounds): a step's PLD has at most
`MAX_STEP_POINTS` points and at most `MAX_STEP_WORK` points × mixture components
(what its construction evaluates), and each composed PLD at most `MAX_POINTS`.
A rung that would pass a bound runs at the finest interval that keeps within it
instead (each coarser interval is still an upper bound) and ends the ladder; a
composition no interval up to `MAX_INTERVAL` can hold (a step's loss spanning
more than 2.7·10⁸ nats, or 1.1·10⁹ / its mixture components; composed, more than
1.1·10⁹) is reported as ε = inf (`fitting_interval`). Noise multipliers above
`MAX_ACCOUNTED_NOISE` are accounted as `MAX_ACCOUNTED_NOISE` (`accounted`): more
noise is post-processing of less, so the ε of less noise bounds the ε of more,
and the library's arithmetic overflows at σ near 1e154. Dense single-step PMFs
are built from the library's connect-the-dots arithmetic without its Python
round trip through a dict (`_pessimistic_pmf`: the same PMF).

Whenever the finest rung runs, its value is the answer, composed onto the
identity PLD as `PLDAccountant()` does: for ULS that is dp_accounting's own
default answer up to float rounding; for ELS it differs from the library's only
by the library's inexact inversion of the mixture loss (see mixture.py).

ULS steps use a vectorised copy of dp_accounting's closed-form inverse of the
subsampled-Gaussian privacy loss (the library inverts one grid point at a time
in Python, which is most of the cost of a ULS PLD at 1e-4); the single-step
PMFs are the library's (identical in our tests). `last_rungs` records the
rungs the latest `epsilon` call evaluated.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from typing import Sequence

import numpy as np
from dp_accounting.pld import pld_pmf
from dp_accounting.pld import privacy_loss_distribution as pld_lib
from dp_accounting.pld import privacy_loss_mechanism as plm

from .events import ElsStep, Event, UlsRound
from .mixture import FastMixtureGaussianPrivacyLoss

FINEST_INTERVAL = 1e-4
LADDER_RATIO = 4
LADDER_RUNGS = 7  # coarsest interval = 1e-4 * 4**6 ≈ 0.41
REL_TOL = 5e-3
START_POINTS = 1000  # per-step support size of the coarsest rung that may end the ladder
CONTRACTION = 16.0  # predicted shrink of the gap between successive rungs, per rung (error O(h^2))
MAX_POINTS = 2**21  # support of a composed PLD (each adjacency)
MAX_STEP_POINTS = 2**19  # support of one step's PLD (the library builds it at a few microseconds a point)
MAX_STEP_WORK = 2**21  # one step's support x its mixture components (the arrays its construction evaluates)
CACHE_POINTS = 2**24  # support points of step PLDs (and their log-MGFs) kept for reuse, in all
MAX_ACCOUNTED_NOISE = 1e6  # larger noise multipliers are accounted at this one (an upper bound)
MAX_COARSENINGS = 16  # tries at coarser intervals before a composition is reported as inf
FEW_RELEASES = 64  # up to this many releases, a composed support is estimated as count x the step's
MAX_INTERVAL = 512.0  # coarsest interval (the library's connect-the-dots overflows at e^h, h > 709)

Run = tuple[Event, int]  # an event released `count` times

last_rungs: list[tuple[float, float]] = []  # (interval, epsilon) of every rung the latest `epsilon` call ran


def _ladder() -> list[float]:
    return [FINEST_INTERVAL * LADDER_RATIO**j for j in reversed(range(LADDER_RUNGS))]


def accounted(runs: Sequence[Run]) -> list[Run]:
    """The runs with each noise multiplier above MAX_ACCOUNTED_NOISE lowered to it (an upper bound on ε)."""
    return [(dataclasses.replace(e, noise_multiplier=MAX_ACCOUNTED_NOISE)
             if e.noise_multiplier > MAX_ACCOUNTED_NOISE else e, c) for e, c in runs]


def _mixture_loss(event: ElsStep, adjacency: plm.AdjacencyType) -> FastMixtureGaussianPrivacyLoss:
    js, probs = event.sensitivity_distribution()
    return FastMixtureGaussianPrivacyLoss(
        event.noise_multiplier, js, probs, adjacency_type=adjacency
    )


class FastGaussianPrivacyLoss(plm.GaussianPrivacyLoss):
    """`GaussianPrivacyLoss` whose hockey-stick divergences invert the privacy loss for all grid points at once.

    `get_delta_for_epsilon` is the library's, with the per-point call of the closed-form inverse
    (`_inverse_privacy_loss_{add,remove}` through `common.log_a_times_exp_b_plus_c`) replaced by the same
    operations on arrays, in the same order. Points the scalar code would treat specially fall back to it.
    """

    def _inverse_privacy_losses(self, losses: np.ndarray) -> np.ndarray:
        q, s = self.sampling_prob, self.sensitivity
        var = self._standard_deviation**2
        add = self.adjacency_type == plm.AdjacencyType.ADD

        def remove_without_subsampling(loss):
            return -0.5 * s - loss * var / s

        if q == 1.0:
            x = remove_without_subsampling(losses)
            return s + x if add else x
        b = -losses if add else losses
        threshold = -math.log(1 - q) if add else math.log(1 - q)
        a, c = 1 / q, 1 - 1 / q  # log(a e^b + c) with a > 0 > c: log_a_times_exp_b_plus_c's `_log_sub` branch
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            d = b + np.log(a)
            log_minus_c = np.log(-c)
            loss = d + np.log1p(-np.exp(log_minus_c - d))
        loss = np.where(b == 0, np.log(a + c), loss)
        close = np.abs(losses - threshold) <= 1e-9 * np.maximum(np.abs(losses), abs(threshold))  # math.isclose
        if add:
            x = np.where(close, -math.inf, s + remove_without_subsampling(-loss))
        else:
            x = np.where(close, math.inf, remove_without_subsampling(loss))
        odd = ~close & (b != 0) & ~(d > log_minus_c)  # the scalar code raises (or returns nan) here
        if odd.any():
            x[odd] = [self.inverse_privacy_loss(float(e)) for e in losses[odd]]
        return x

    def get_delta_for_epsilon(self, epsilon):
        if self.adjacency_type not in (plm.AdjacencyType.ADD, plm.AdjacencyType.REMOVE):
            return super().get_delta_for_epsilon(epsilon)
        is_scalar = isinstance(epsilon, numbers.Number)
        epsilons = np.array([epsilon]) if is_scalar else np.asarray(epsilon)
        deltas = np.zeros_like(epsilons, dtype=float)
        if self.sampling_prob == 1.0:
            inverse = np.full_like(epsilons, True, dtype=bool)
        elif self.adjacency_type == plm.AdjacencyType.ADD:
            inverse = epsilons < -math.log1p(-self.sampling_prob)
        else:
            inverse = epsilons > math.log1p(-self.sampling_prob)
            deltas[~inverse] = -np.expm1(epsilons[~inverse])
        eps_in = np.asarray(epsilons[inverse], dtype=float)
        x_cutoffs = self._inverse_privacy_losses(eps_in)
        deltas[inverse] = self.mu_upper_cdf(x_cutoffs) - np.exp(eps_in + self.mu_lower_log_cdf(x_cutoffs))
        deltas = np.clip(deltas, 0, 1)
        return float(deltas[0]) if is_scalar else deltas


def _pessimistic_pmf(loss: plm.MonotonePrivacyLoss, interval: float):
    """dp_accounting's pessimistic connect-the-dots PMF (`_create_pld_pmf_from_monotone_privacy_loss` with
    `use_connect_dots`, continuous noise, then `create_pmf_pessimistic_connect_dots_fixed_gap`). A dense one is
    built here from the same arithmetic, without the library's round trip through a dict and a list (a few
    microseconds a point in Python): the same PMF."""
    bounds = loss.connect_dots_bounds()
    upper = math.ceil(bounds.epsilon_upper / interval)
    lower = math.floor(bounds.epsilon_lower / interval)
    if upper - lower + 1 <= pld_pmf._MAX_PMF_SPARSE_SIZE:  # noqa: SLF001  (sparse: the library's own path)
        return pld_lib._create_pld_pmf_from_monotone_privacy_loss(  # noqa: SLF001
            loss, pessimistic_estimate=True, value_discretization_interval=interval, use_connect_dots=True
        )
    deltas = np.asarray(loss.get_delta_for_epsilon(np.arange(lower, upper + 1) * interval), dtype=np.float64)
    if np.any(deltas < 0) or np.any(deltas > 1):
        raise ValueError(f"deltas are not between 0 and 1 : deltas={deltas}.")
    if np.any(np.diff(deltas) > pld_pmf._DELTA_DIFF_TOLERANCE):  # noqa: SLF001
        raise ValueError(f"deltas are not in non-increasing order: deltas={deltas}.")
    deltas = np.minimum.accumulate(deltas)
    diffs = np.diff(deltas)
    probs = np.zeros_like(deltas)
    probs[0] = 1 - deltas[0] + diffs[0] / math.expm1(interval)
    probs[1:-1] = (diffs[1:] - diffs[:-1] * math.exp(interval)) / math.expm1(interval)
    probs[-1] = diffs[-1] / math.expm1(-interval)
    probs = np.maximum(0.0, probs)
    return pld_pmf.DensePLDPmf(interval, lower, probs, deltas[-1], True)


def _pld_points(pld: pld_lib.PrivacyLossDistribution) -> int:
    return pld._pmf_remove.size + (0 if pld._symmetric else pld._pmf_add.size)  # noqa: SLF001


class _StepCache:
    """Step PLDs by (event, interval), least recently used out first, at most CACHE_POINTS points in all."""

    def __init__(self, fn) -> None:
        self._fn = fn
        self._entries: dict[tuple, tuple[pld_lib.PrivacyLossDistribution, int]] = {}
        self._points = 0
        functools.update_wrapper(self, fn)

    def __call__(self, event: Event, interval: float) -> pld_lib.PrivacyLossDistribution:
        key = (event, interval)
        hit = self._entries.pop(key, None)
        if hit is None:
            pld = self._fn(event, interval)
            hit = (pld, _pld_points(pld))
            self._points += hit[1]
        self._entries[key] = hit
        while self._points > CACHE_POINTS and len(self._entries) > 1:
            self._points -= self._entries.pop(next(iter(self._entries)))[1]
        return hit[0]

    def cache_clear(self) -> None:
        self._entries.clear()
        self._points = 0


@_StepCache
def step_pld(event: Event, interval: float) -> pld_lib.PrivacyLossDistribution:
    """Pessimistic PLD of one release of `event` (σ must be > 0)."""
    if isinstance(event, UlsRound):  # = pld_lib.from_gaussian_mechanism(σ, sampling_prob=q, ...interval)
        def gaussian(adj: plm.AdjacencyType) -> plm.MonotonePrivacyLoss:
            return FastGaussianPrivacyLoss(
                event.noise_multiplier, sampling_prob=event.sampling_rate, adjacency_type=adj
            )

        remove = _pessimistic_pmf(gaussian(plm.AdjacencyType.REMOVE), interval)
        if event.sampling_rate == 1.0:
            return pld_lib.PrivacyLossDistribution(remove)
        return pld_lib.PrivacyLossDistribution(remove, _pessimistic_pmf(gaussian(plm.AdjacencyType.ADD), interval))
    pmfs = [_pessimistic_pmf(_mixture_loss(event, adj), interval)
            for adj in (plm.AdjacencyType.REMOVE, plm.AdjacencyType.ADD)]
    return pld_lib.PrivacyLossDistribution(pmfs[0], pmfs[1])


@functools.lru_cache(maxsize=256)
def _loss_range(event: Event, adjacencies: tuple = (plm.AdjacencyType.REMOVE,)) -> float:
    """Width of the per-step privacy-loss support (tails cut at mass e^-50), the widest of `adjacencies`."""
    if isinstance(event, UlsRound):
        sens, probs = np.array([0.0, 1.0]), np.array([1 - event.sampling_rate, event.sampling_rate])
        if event.sampling_rate == 1.0:
            sens, probs = np.array([1.0]), np.array([1.0])
    else:
        sens, probs = event.sensitivity_distribution()
    widths = []
    for adjacency in adjacencies:
        loss = FastMixtureGaussianPrivacyLoss(event.noise_multiplier, sens, probs, adjacency_type=adjacency)
        bounds = loss.connect_dots_bounds()
        widths.append(float(bounds.epsilon_upper - bounds.epsilon_lower))
    return max(widths)


def _step_work(event: Event, interval: float) -> tuple[float, float]:
    """(support points, support points x mixture components) of `step_pld(event, interval)`, estimated."""
    points = _loss_range(event, (plm.AdjacencyType.REMOVE, plm.AdjacencyType.ADD)) / interval + 2
    components = len(event.sensitivity_distribution()[0]) if isinstance(event, ElsStep) else 1
    return points, points * components


def _composed_points(runs: Sequence[Run], interval: float) -> int:
    """Support of the runs' PLD composed at `interval` (the larger adjacency's), from the step PLDs' bounds."""
    total = {"remove": 1, "add": 1}
    for event, count in runs:
        pld = step_pld(event, interval)
        for side, pmf in (("remove", pld._pmf_remove), ("add", pld._pmf_add)):  # noqa: SLF001
            if count == 1 or _library_self_compose(pmf, count):
                total[side] += pmf.size if count == 1 else pld_pmf._MAX_PMF_SPARSE_SIZE  # noqa: SLF001
                continue
            dense = pmf if isinstance(pmf, pld_pmf.DensePLDPmf) else pmf.to_dense_pmf()
            lower, upper = _self_convolve_bounds(dense._probs, count, TAIL_MASS_TRUNCATION)  # noqa: SLF001
            total[side] += max(upper - lower + 1, dense.size)
    return max(total.values())


def fitting_interval(runs: Sequence[Run], interval: float) -> float | None:
    """The smallest interval >= `interval` (up to a factor) at which the runs' step and composed PLDs keep within
    the size bounds; None when none up to MAX_INTERVAL does: a step's privacy loss spanning more than
    MAX_INTERVAL · MAX_STEP_POINTS ≈ 2.7·10⁸ nats, or MAX_INTERVAL · MAX_STEP_WORK ≈ 1.1·10⁹ over its mixture
    components, or a composed one more than MAX_INTERVAL · MAX_POINTS ≈ 1.1·10⁹ nats. ε is then reported as inf
    (an upper bound)."""
    runs = [(e, int(c)) for e, c in runs if int(c) > 0]
    for event, count in runs:  # estimated before any PLD is built...
        points, work = _step_work(event, interval)
        composed = points * count if count <= FEW_RELEASES else 0.0  # (few releases: their supports add up)
        interval *= max(1.0, points / MAX_STEP_POINTS, work / MAX_STEP_WORK, composed / MAX_POINTS)
    # ...then measured on the step PLDs (the composition's truncation bounds: for many releases far below
    # count x support)
    for _ in range(MAX_COARSENINGS):
        if interval > MAX_INTERVAL:
            return None
        size = _composed_points(runs, interval)
        if size <= MAX_POINTS:
            return interval
        interval *= max(2.0, 1.25 * size / MAX_POINTS)
    return None


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
        if len(_MGF_CACHE) > 512 or sum(len(h[0]) for h in _MGF_CACHE.values()) + len(probs) > CACHE_POINTS:
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


def _library_self_compose(pmf, num_times: int) -> bool:
    """Whether a sparse PMF self-composes by the library's own exact loop: only where that stays sparse
    (size**num_times <= the library's sparse size); elsewhere the library's loop (size 1) or its big-integer
    size**num_times (a huge num_times) would not end in reasonable time, and the PMF goes dense here."""
    if isinstance(pmf, pld_pmf.DensePLDPmf):
        return False
    limit = pld_pmf._MAX_PMF_SPARSE_SIZE  # noqa: SLF001
    return pmf.size >= 2 and num_times * math.log(pmf.size) <= math.log(limit)


def _pmf_self_compose(pmf, num_times: int):
    """DensePLDPmf.self_compose(num_times) (dp_accounting 0.6), with cached truncation bounds."""
    from scipy import fft

    if _library_self_compose(pmf, num_times):
        return pmf.self_compose(num_times)
    if not isinstance(pmf, pld_pmf.DensePLDPmf):
        pmf = pmf.to_dense_pmf()
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


def _lower_weights(probs: np.ndarray, losses: np.ndarray) -> np.ndarray:
    """probs · e^-loss, the lower distribution's mass. Where e^-loss overflows (losses below about -709, far
    under any ε >= 0 a scan stops at) a positive probability weighs +inf and any other (zero, or the FFT's
    rounding noise below it) 0, so that running sums never meet inf - inf or 0 · inf (nan)."""
    with np.errstate(over="ignore", invalid="ignore"):
        weights = np.exp(-losses) * probs
    bad = ~np.isfinite(weights)
    if bad.any():
        weights[bad] = np.where(probs[bad] > 0, np.inf, 0.0)
    return weights


def _pmf_epsilon(pmf, delta: float) -> float:
    """dp_accounting's `_get_epsilon_for_delta` scan (losses from the top down), vectorised."""
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
    lower = np.cumsum(np.concatenate([[0.0], _lower_weights(p, losses)]))  # mass_lower before step i: lower[i]
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


def _pmf_deltas(pmf, epsilons: np.ndarray) -> np.ndarray:
    """dp_accounting's `_get_delta_for_epsilon_vectorized` (epsilons ascending), its loop over the support as
    suffix sums taken in the same order; where no loss exceeds ε it gives the infinity mass, not 0·e^ε (nan)."""
    if not isinstance(pmf, pld_pmf.DensePLDPmf):
        return np.asarray(pmf.get_delta_for_epsilon(epsilons), dtype=float)
    probs, n = pmf._probs, pmf.size  # noqa: SLF001
    losses = (np.arange(n) + pmf._lower_loss) * pmf._discretization  # noqa: SLF001
    upper = np.cumsum(np.concatenate([[pmf._infinity_mass], probs[::-1]]))  # noqa: SLF001
    lower = np.cumsum(np.concatenate([[0.0], _lower_weights(probs, losses)[::-1]]))
    above = n - np.searchsorted(losses, epsilons, side="right")  # losses > ε: the top `above` entries
    with np.errstate(over="ignore", invalid="ignore"):
        deltas = upper[above] - np.exp(epsilons) * lower[above]
    return np.where(above == 0, upper[0], deltas)


def pld_deltas(pld: pld_lib.PrivacyLossDistribution, epsilons: np.ndarray) -> np.ndarray:
    """PrivacyLossDistribution.get_delta_for_epsilon on ascending epsilons (max over remove/add), vectorised."""
    epsilons = np.asarray(epsilons, dtype=float)
    deltas = _pmf_deltas(pld._pmf_remove, epsilons)  # noqa: SLF001
    if pld._symmetric:  # noqa: SLF001
        return deltas
    return np.maximum(deltas, _pmf_deltas(pld._pmf_add, epsilons))  # noqa: SLF001


def pld_epsilon_for_delta(pld: pld_lib.PrivacyLossDistribution, delta: float) -> float:
    """PrivacyLossDistribution.get_epsilon_for_delta (max over remove/add), vectorised."""
    eps = _pmf_epsilon(pld._pmf_remove, delta)  # noqa: SLF001
    if pld._symmetric:  # noqa: SLF001
        return eps
    return max(eps, _pmf_epsilon(pld._pmf_add, delta))  # noqa: SLF001


def composed_pld(
    runs: Sequence[Run], interval: float, from_identity: bool = False
) -> pld_lib.PrivacyLossDistribution | None:
    """PLD of all runs composed at one interval; None when nothing was released.

    `from_identity` composes onto the identity PLD first, as `PLDAccountant` does (its extra composition
    moves up to another 1e-15 of tail mass to infinity, raising epsilon by ~1e-9 relative at most).
    """
    total = pld_lib.identity(value_discretization_interval=interval) if from_identity else None
    for event, count in runs:
        if count <= 0:
            continue
        part = _self_compose(step_pld(event, interval), count) if count > 1 else step_pld(event, interval)
        total = part if total is None else total.compose(part)
    return total


def _start_rung(runs: Sequence[Run]) -> int:
    """Index of the coarsest rung that may end the ladder (per-step support >= START_POINTS)."""
    widest = max(_loss_range(e) for e, c in runs if c > 0)
    ladder = _ladder()
    for i, h in enumerate(ladder):
        if widest / h >= START_POINTS:
            return i
    return len(ladder) - 1


def _predicted_to_settle(gap: float, eps: float, rungs_ahead: int) -> bool:
    """Whether `gap`, shrinking by CONTRACTION per rung, is within REL_TOL after `rungs_ahead` (>= 1) rungs."""
    return rungs_ahead >= 1 and gap / CONTRACTION**rungs_ahead <= REL_TOL * max(eps, 1e-12)


class _LadderEnds(Exception):
    """A rung could not run at its own interval (the size bounds): the ladder ends with what it has."""


def epsilon(runs: Sequence[Run], delta: float) -> float:
    """Smallest certified user-level epsilon at `delta` for the composed runs."""
    last_rungs.clear()
    runs = accounted([(e, int(c)) for e, c in runs if int(c) > 0])
    if not runs:
        return 0.0
    if is_infinite(runs):
        return math.inf
    try:
        return _ladder_epsilon(runs, delta)
    except _LadderEnds:
        return min([eps for _, eps in last_rungs], default=math.inf)


def _ladder_epsilon(runs: Sequence[Run], delta: float) -> float:
    def run(i: int) -> float:
        interval = fitting_interval(runs, ladder[i])
        if interval is None:
            raise _LadderEnds
        eps = pld_epsilon_for_delta(composed_pld(runs, interval, from_identity=i == finest), delta)
        last_rungs.append((interval, eps))
        if interval > ladder[i]:
            raise _LadderEnds
        return eps

    ladder = _ladder()
    finest = len(ladder) - 1
    start = _start_rung(runs)
    if start >= finest - 1:  # the first pair that could agree already includes the finest rung
        return run(finest)
    # Before spending a quarter of the finest rung's work on the second-finest one, measure a gap: when
    # that rung would be the second one run, first run a probe one rung coarser (it never ends the ladder).
    i = start - 1 if start == finest - 2 else start
    previous = run(i)
    while i < finest - 1:
        i += 1
        current = run(i)
        gap = abs(previous - current)
        if i > start and gap <= REL_TOL * max(current, 1e-12):
            return min(previous, current)
        # The ladder stops at the first pair (i + m - 1, i + m) whose gap is within REL_TOL. When that is
        # not predicted to happen before the pair that includes the finest rung (m = finest - i), the
        # rungs in between would be work on top of the finest rung's: go there directly.
        if not _predicted_to_settle(gap, current, finest - i - 1):
            break
        previous = current if i <= start else min(previous, current)
    return run(finest)


def delta_for_epsilon(runs: Sequence[Run], eps: float) -> float:
    """Delta at `eps` at the finest interval the size bounds allow (1.0 where none does)."""
    runs = accounted([(e, int(c)) for e, c in runs if int(c) > 0])
    if not runs:
        return 0.0
    if is_infinite(runs):
        return 1.0
    interval = fitting_interval(runs, FINEST_INTERVAL)
    if interval is None:
        return 1.0
    return float(composed_pld(runs, interval).get_delta_for_epsilon(eps))
