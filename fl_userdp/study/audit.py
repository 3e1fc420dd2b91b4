"""Empirical privacy audit with canary users, in one training run.

Method: Steinke, Nasr & Jagielski, "Privacy Auditing with One (1) Training
Run", NeurIPS 2023 (arXiv 2305.08846). m canary users are created; each is
included in the population independently with probability 1/2. A canary's
contribution is a fixed random unit direction u_i scaled to the clip norm
(ULS: C·u_i when its user is sampled; ELS: a user of k identical examples,
each with gradient C·u_i, so it adds J·C·u_i with J ~ Binomial(k, q)). The
mechanism runs exactly as in training — Poisson sampling, clipping, one
Gaussian release per round through `aggregate.release` — and the auditor sees
every round's release (the per-round white-box adversary the DP guarantee
covers). Scores s_i = Σ_t ⟨release_t, u_i⟩; the auditor guesses "included" for
the r/2 highest scores and "excluded" for the r/2 lowest. With v correct out
of r guesses, the lower bound is the largest ε whose p-value (the paper's
bound for (ε, δ)-DP, Theorem 3 / its appendix code: a Binomial(r, e^ε/(1+e^ε))
tail plus a 2mδ-weighted term) stays below β; a Bonferroni correction covers
the few r values tried. With probability ≥ 1 − β a correct implementation
gives a lower bound ≤ the accountant's ε.

`noise_scale` exists to test the auditor: it multiplies the noise actually
added (not the σ given to the accountant), simulating a run whose noise was
secretly cut.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

from ..accounting import UserLevelAccountant, calibrate_noise, make_event
from ..mechanism.aggregate import expected_count, release
from ..errors import ConfigError
from ..rng import rng_for


@dataclass(frozen=True)
class AuditConfig:
    mode: str = "uls"
    canaries: int = 2000
    dim: int = 4000
    rounds: int = 50
    sampling_rate: float = 0.5
    noise_multiplier: float | None = None  # None: calibrated to target_epsilon
    target_epsilon: float = 1.5
    max_examples_per_user: int = 4
    clip_norm: float = 1.0
    delta: float = 1e-6
    confidence: float = 0.95
    guesses: tuple[int, ...] = ()  # r values tried; () = 5 %, 10 %, 20 %, 40 % of the canaries
    seed: int = 0
    noise_scale: float = 1.0  # fault injection: actual noise = noise_scale·σ·C

    def __post_init__(self) -> None:
        def need(ok: bool, key: str, value, req: str) -> None:
            if not ok:
                raise ConfigError(key, value, req)
        need(self.mode in ("uls", "els"), "mode", self.mode, "must be 'uls' or 'els'")
        need(self.canaries >= 2, "canaries", self.canaries, "must be >= 2")
        need(self.dim >= 1, "dim", self.dim, "must be >= 1")
        need(self.rounds >= 1, "rounds", self.rounds, "must be >= 1")
        need(0 < self.sampling_rate <= 1, "sampling-rate", self.sampling_rate, "must be in (0, 1]")
        need(self.noise_multiplier is None or self.noise_multiplier > 0, "noise-multiplier",
             self.noise_multiplier, "must be > 0")
        need(self.target_epsilon > 0, "target-epsilon", self.target_epsilon, "must be > 0")
        need(self.max_examples_per_user >= 1, "max-examples-per-user", self.max_examples_per_user, "must be >= 1")
        need(0 < self.delta < 1, "delta", self.delta, "must be in (0, 1)")
        need(0 < self.confidence < 1, "confidence", self.confidence, "must be in (0, 1)")
        need(all(2 <= r <= self.canaries for r in self.guess_counts), "guesses", self.guesses,
             f"must each be in [2, canaries={self.canaries}]")
        need(self.noise_scale >= 0, "noise-scale", self.noise_scale, "must be >= 0")


    @property
    def guess_counts(self) -> tuple[int, ...]:
        return tuple(self.guesses) if self.guesses else default_guess_counts(self.canaries)


@dataclass(frozen=True)
class AuditResult:
    epsilon_lower_bound: float
    confidence: float
    epsilon_reported: float
    delta: float
    guesses: int
    correct: int
    canaries: int
    noise_multiplier: float
    flagged: bool  # lower bound above the reported epsilon: the run spent more privacy than it says

    def to_dict(self) -> dict:
        return asdict(self)


def p_value(m: int, r: int, v: int, eps: float, delta: float) -> float:
    """P[≥ v of r guesses correct] under (ε, δ)-DP with m canaries (Steinke et al. 2023, appendix code)."""
    q = 1.0 / (1.0 + math.exp(-eps))
    beta = stats.binom.sf(v - 1, r, q)
    alpha, tail = 0.0, 0.0
    pmf = stats.binom.pmf(np.arange(v - 1, -1, -1), r, q)  # v-1, v-2, ..., 0
    for i, p in enumerate(pmf, start=1):
        tail += p
        alpha = max(alpha, tail / i)
    return min(1.0, beta + alpha * delta * 2 * m)


def epsilon_lower_bound(m: int, r: int, v: int, delta: float, beta: float) -> float:
    """Largest ε (to 1e-6) whose p-value for v correct out of r is still below β; 0 if none."""
    if p_value(m, r, v, 0.0, delta) >= beta:
        return 0.0
    lo, hi = 0.0, 1.0
    while p_value(m, r, v, hi, delta) < beta and hi < 100:
        lo, hi = hi, hi * 2
    for _ in range(50):
        mid = 0.5 * (lo + hi)
        if p_value(m, r, v, mid, delta) < beta:
            lo = mid
        else:
            hi = mid
    return lo


def resolved_sigma(cfg: AuditConfig) -> float:
    """σ of the audited run: given, or calibrated to the target ε."""
    if cfg.noise_multiplier is not None:
        return cfg.noise_multiplier
    k = cfg.max_examples_per_user if cfg.mode == "els" else None
    return calibrate_noise(cfg.mode, cfg.target_epsilon, cfg.delta, cfg.sampling_rate, cfg.rounds, k)[0]


STREAM_KEYS = {"uls": 1, "els": 2}  # each mode's audit draws its own noise


def canary_scores(cfg: AuditConfig, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Run the mechanism with canaries; return (scores, included) per canary."""
    rng = rng_for(cfg.seed, "audit", 0, 0)
    directions = rng.standard_normal((cfg.canaries, cfg.dim))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    included = rng.random(cfg.canaries) < 0.5
    members = np.flatnonzero(included)
    capped_total = members.size * cfg.max_examples_per_user
    expected = expected_count(cfg.mode, cfg.sampling_rate, max(members.size, 1), max(capped_total, 1))
    total = np.zeros(cfg.dim)
    for t in range(cfg.rounds):
        rs = rng_for(cfg.seed, "sampling", t)
        if cfg.mode == "uls":
            weights = (rs.random(members.size) < cfg.sampling_rate).astype(float)
        else:
            weights = rs.binomial(cfg.max_examples_per_user, cfg.sampling_rate, members.size).astype(float)
        contribution = cfg.clip_norm * (weights @ directions[members])
        out = release(contribution, cfg.clip_norm, sigma * cfg.noise_scale, expected,
                      rng_for(cfg.seed, "noise", t, key=STREAM_KEYS[cfg.mode]))
        total += out.update
    return directions @ total, included


def default_guess_counts(canaries: int) -> tuple[int, ...]:
    """r values tried: 5 %, 10 %, 20 % and 40 % of the canaries (at least 2)."""
    return tuple(sorted({max(2, int(canaries * f)) for f in (0.05, 0.1, 0.2, 0.4)}))


def lower_bound_from_scores(scores: np.ndarray, included: np.ndarray, delta: float, confidence: float,
                            guess_counts: tuple[int, ...]) -> tuple[float, int, int]:
    """(ε lower bound, r, correct): guess "in" for the r/2 highest scores and "out" for the r/2 lowest, for
    each r tried (Bonferroni-corrected), and keep the best bound."""
    order = np.argsort(scores)
    beta = (1 - confidence) / len(guess_counts)
    best = (0.0, guess_counts[0], 0)
    for r in guess_counts:
        low, high = order[: r // 2], order[len(order) - (r - r // 2):]
        correct = int((~included[low]).sum() + included[high].sum())
        eps_lb = epsilon_lower_bound(len(scores), r, correct, delta, beta)
        if eps_lb >= best[0]:
            best = (eps_lb, r, correct)
    return best


def run_audit(cfg: AuditConfig) -> AuditResult:
    """Audit one run: the empirical lower bound next to the accountant's ε."""
    sigma = resolved_sigma(cfg)
    acc = UserLevelAccountant(cfg.delta)
    event = make_event(cfg.mode, cfg.sampling_rate, sigma, cfg.max_examples_per_user if cfg.mode == "els" else None)
    reported = acc.compose(event, cfg.rounds)
    scores, included = canary_scores(cfg, sigma)
    eps_lb, r, correct = lower_bound_from_scores(scores, included, cfg.delta, cfg.confidence, cfg.guess_counts)
    return AuditResult(epsilon_lower_bound=eps_lb, confidence=cfg.confidence, epsilon_reported=reported,
                       delta=cfg.delta, guesses=r, correct=correct, canaries=cfg.canaries, noise_multiplier=sigma,
                       flagged=eps_lb > reported)


@dataclass(frozen=True)
class NoiseCheck:
    """What the released updates say about the noise each of them carried (see `check_release_noise`)."""
    coords_low: int            # coordinates whose variance over rounds is below the noise floor's low quantile
    coords_allowed: int        # how many a correct run may show (binomial upper bound at `alpha`)
    scale_chi2: float          # homogeneity of the rounds' noise scales (χ² with rounds − 1 df)
    scale_p: float
    mean_scale: float          # mean over rounds of (released std per coordinate) / (σC / E)

    @property
    def flagged(self) -> bool:
        return self.coords_low > self.coords_allowed or self.scale_p < ALPHA_NOISE

    def to_dict(self) -> dict:
        return {**asdict(self), "flagged": self.flagged}


ALPHA_NOISE = 1e-4       # false-flag rate per statistic of a correct run
COORD_QUANTILE = 1e-3    # a coordinate is "low" below this quantile of the noise floor's χ² law


def check_release_noise(updates: np.ndarray, noise_std: float, expected: float,
                        alpha: float = ALPHA_NOISE) -> NoiseCheck:
    """Check released updates (rounds × d) against the claimed noise N(0, (σC/E)²) per coordinate.

    Each released coordinate is (clipped sum + noise) / E, and the clipped sums only *add* variance, so:

    * **per coordinate**: its variance over the T rounds is at least the noise's, (σC/E)² · χ²_{T−1}/(T−1)
      in law. Noise withheld from some coordinates leaves them far below; more "low" coordinates (under
      the COORD_QUANTILE quantile) than Binomial(d, COORD_QUANTILE) allows at `alpha` is flagged;
    * **per round**: the mean square over coordinates estimates the round's noise scale with relative sd
      √(2/d); divided by the expected count E every round has the same scale, divided by the realised
      count n_t it moves with E/n_t. The rounds' scales are tested for homogeneity (χ² with T − 1 df on
      their logs, sd √(2/d) each); a p-value below `alpha` is flagged. Large signals can push a correct
      run's round scales apart too, so this check is for runs whose noise dominates each coordinate (the
      pipeline audit's configuration).
    """
    u = np.asarray(updates, np.float64)
    rounds, d = u.shape
    if rounds < 3 or d < 10:
        raise ValueError("need at least 3 rounds and 10 coordinates")
    floor = (noise_std / expected) ** 2
    var = u.var(axis=0, ddof=1) / floor
    low = int((var < stats.chi2.ppf(COORD_QUANTILE, rounds - 1) / (rounds - 1)).sum())
    allowed = int(stats.binom.ppf(1 - alpha, d, COORD_QUANTILE))
    scales = (u ** 2).mean(axis=1) / floor
    logs = np.log(scales)
    chi2 = float(((logs - logs.mean()) ** 2).sum() / (2.0 / d))
    p = float(stats.chi2.sf(chi2, rounds - 1))
    return NoiseCheck(low, allowed, chi2, p, float(np.sqrt(scales).mean()))
