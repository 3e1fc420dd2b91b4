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

The noise itself is tested by `noise_tests` (scale, per-coordinate floor, one
draw on two coordinates or two rounds; each one-sided at a stated α, with its
power), on the exact noise where the signal is known (the pipeline audit) or
on released updates (`fl_userdp.study.run_audit`: `fl-userdp audit --run`).
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


# -- tests of the noise itself: scale, floor, reuse ----------------------------------------------------------
ALPHA_SCALE = 1e-3   # false-flag rate of the one-sided noise-scale test (all rounds together)
ALPHA_ROUND_SCALE = 1e-3  # ... of the same test per round (Bonferroni over the rounds)
ALPHA_FLOOR = 1e-4   # ... of the per-coordinate floor
ALPHA_PAIRS = 1e-3   # ... of the coordinate-pair (cross-coordinate reuse) scan, Bonferroni over every pair and sign
ALPHA_ROUNDS = 1e-3  # ... of the round-pair (cross-round reuse) scan, Bonferroni over every pair and sign
MAX_PAIR_COORDS = 16384  # the pair scan covers every pair of up to this many coordinates (a seeded sample above)


@dataclass(frozen=True)
class NoiseTests:
    """Four one-sided tests of noise in units of its claimed sd (see `noise_tests`), each with its α, and the
    power of each against the fault it is for."""
    exact: bool                # True: the noise itself (signal known and removed); False: released updates
    rounds: int
    coords: int
    scale_ratio: float         # √(Σ v² / (T·d)): noise sd seen / claimed (released updates: signal inflates it)
    scale_p: float             # P[χ²_{Td} ≤ Σ v²] (one-sided: too little noise)
    round_scale_min: float     # the smallest round's √(Σ_j v_tj² / d)
    round_scale_p: float       # T · min_t P[χ²_d ≤ Σ_j v_tj²] (Bonferroni: one round short of noise)
    scale_power_95: float      # P[flag] if the noise were 0.95 × the claimed, with no signal
    scale_detects: float       # the noise factor flagged with probability ≥ 0.9 (any signal within the bound)
    floor_low: int             # coordinates with Σ_t v² below the COORD_QUANTILE quantile of χ²_T
    floor_allowed: int         # the most a correct run shows at ALPHA_FLOOR
    pairs_coords: int          # coordinates in the pair scan (all, or a seeded sample of MAX_PAIR_COORDS)
    pairs_min: float           # min over coordinate pairs j < j' and signs of Σ_t (v_tj ∓ v_tj')² / 2
    pairs_p: float             # its Bonferroni p-value against χ²_T
    pairs_threshold: float     # the χ²_T quantile a pair must fall below to flag
    rounds_min: float          # min over round pairs t < t' and signs of the cross-round statistic
    rounds_p: float            # its Bonferroni p-value against χ²_d
    signal_energy: float       # estimated signal energy per coordinate and round (mean v² − 1, ≥ 0)
    pairs_power: float         # P[flag] for one pair of coordinates whose noise is one draw, at that signal
    pairs_power_half: float    # ... when half the coordinates reuse the other half's draws (d/2 such pairs)
    rounds_power: float        # P[flag] for one round whose noise repeats another's, at that signal

    @property
    def failures(self) -> list[str]:
        out = []
        if self.scale_p < ALPHA_SCALE:
            out.append(f"noise scale {self.scale_ratio:.4f} of the claimed (p {self.scale_p:.2g} < {ALPHA_SCALE:g})")
        if self.round_scale_p < ALPHA_ROUND_SCALE:
            out.append(f"noise scale of one round {self.round_scale_min:.4f} of the claimed (p {self.round_scale_p:.2g}"
                       f" < {ALPHA_ROUND_SCALE:g})")
        if self.floor_low > self.floor_allowed:
            out.append(f"noise floor: {self.floor_low} coordinates below it (a correct run: <= {self.floor_allowed})")
        if self.pairs_p < ALPHA_PAIRS:
            out.append(f"two coordinates carry one noise draw (pair statistic {self.pairs_min:.3g}, "
                       f"p {self.pairs_p:.2g} < {ALPHA_PAIRS:g})")
        if self.rounds_p < ALPHA_ROUNDS:
            out.append(f"two rounds carry one noise draw (round statistic {self.rounds_min:.4g}, "
                       f"p {self.rounds_p:.2g} < {ALPHA_ROUNDS:g})")
        return out

    @property
    def flagged(self) -> bool:
        return bool(self.failures)

    def to_dict(self) -> dict:
        return {**asdict(self), "flagged": self.flagged, "failures": self.failures,
                "alpha": {"scale": ALPHA_SCALE, "round_scale": ALPHA_ROUND_SCALE, "floor": ALPHA_FLOOR,
                          "pairs": ALPHA_PAIRS, "rounds": ALPHA_ROUNDS}}


def _scale_power(q: float, dof: float, factor: float) -> float:
    """P[factor² · χ²_dof ≤ q]: the scale test's power when the noise is `factor` × the claimed, no signal."""
    return float(stats.chi2.cdf(q / factor ** 2, dof))


def _scale_detects(q: float, d: int, bounds: np.ndarray) -> float:
    """The largest noise factor f flagged with probability ≥ 0.9 whatever the signal within `bounds` (per round,
    in noise sd units): the statistic is at most Σ_t (R_t + f‖z_t‖)², ‖z_t‖² ~ χ²_d (taken at its 0.9
    quantile share, normal approximation)."""
    t = bounds.size
    big = float(stats.chi2.ppf(0.9, d * t)) / (d * t)   # Σ‖z_t‖² ≤ big · d·T with probability 0.9
    norm = np.sqrt(big * d)

    def stat(f: float) -> float:
        return float(np.sum((bounds + f * norm) ** 2))

    if stat(0.0) > q:
        return 0.0
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if stat(mid) <= q else (lo, mid)
    return lo


def _pair_scan(v: np.ndarray) -> float:
    """min over coordinate pairs j < j' and both signs of Σ_t (v_tj ∓ v_tj')² / 2 (v: rounds × coords),
    computed in blocks of columns."""
    sq = np.einsum("tj,tj->j", v, v)
    best, block = np.inf, 512
    for lo in range(0, v.shape[1] - 1, block):
        hi = min(lo + block, v.shape[1])
        gram = np.abs(v[:, lo:hi].T @ v[:, lo:])                    # (hi − lo) × (d − lo)
        stat = (sq[lo:hi, None] + sq[None, lo:] - 2.0 * gram) / 2.0
        rows = np.arange(hi - lo)[:, None]
        stat[np.arange(stat.shape[1])[None, :] <= rows] = np.inf   # only j' > j
        best = min(best, float(stat.min()))
    return best


def noise_tests(v: np.ndarray, exact: bool, bounds: np.ndarray | None = None, seed: int = 0) -> NoiseTests:
    """Test released noise in units of its claimed sd: `v` (rounds × coords) is either the noise itself (`exact`:
    the signal was known and removed, v ~ N(0, 1) i.i.d. for a correct run) or the released updates scaled by
    E_t/(σ·C_t) (v_t = a_t + z_t, a_t the round's clipped sum in the same units, drawn before z_t).

    Each test is one-sided and stays valid with any signal, because a round's signal is fixed before its noise
    is drawn, so adding it can only make these statistics larger (noncentral χ² ≥ central χ² in law):

    * **scale**: Σ_{t,j} v² against χ²_{T·d}, flagged below its ALPHA_SCALE quantile, and each round's Σ_j v_tj²
      against χ²_d (ALPHA_ROUND_SCALE, Bonferroni over the rounds: one round short of noise). With the exact noise the
      statistic is χ²_{Td} itself: at T·d = 60,000, a noise 5 % short is 17 sd below (power ≈ 1). On released
      updates the signal inflates it; `scale_detects` is the noise factor found with probability 0.9 whatever
      the signal, given `bounds` (per round, in sd units: records ≤ n_max, each ≤ C, so ‖a_t‖ ≤ n_max/σ);
    * **floor**: per coordinate Σ_t v_tj² against χ²_T: noise withheld from some coordinates leaves them low;
    * **coordinate pairs** (exact noise: in units of its own sd, so that this tests reuse, not the scale):
      Σ_t (v_tj ∓ v_tj')² / 2 is χ²_T for two independently noised coordinates (at least,
      with signal); one noise draw used for both cancels it to the signal's difference. The minimum over every
      pair and sign is tested with a Bonferroni bound (ALPHA_PAIRS over d(d − 1) tests). Above
      MAX_PAIR_COORDS coordinates a seeded sample of that many is scanned;
    * **round pairs**: ‖v_t ∓ v_t'‖² over coordinates, the same for two rounds (ALPHA_ROUNDS over T(T − 1)
      tests). With the exact noise the statistic /2 is χ²_d; on released updates only the later round's
      noise is surely independent of the rest (the signal of round t' may depend on round t's noise through
      the weights), so ‖v_t ∓ v_t'‖² itself is compared with χ²_d (conservative).
    """
    v = np.asarray(v, np.float64)
    if v.ndim != 2 or v.shape[0] < 2 or v.shape[1] < 2:
        raise ValueError("need at least 2 rounds of at least 2 coordinates")
    t, d = v.shape
    total = float(np.einsum("tj,tj->", v, v))
    q_scale = float(stats.chi2.ppf(ALPHA_SCALE, t * d))
    bounds = np.zeros(t) if exact or bounds is None else np.asarray(bounds, np.float64)
    per_round = np.einsum("tj,tj->t", v, v)
    round_scale_p = min(1.0, t * float(stats.chi2.cdf(per_round, d).min()))
    col = np.einsum("tj,tj->j", v, v)
    low = int((col < stats.chi2.ppf(COORD_QUANTILE, t)).sum())
    allowed = int(stats.binom.ppf(1 - ALPHA_FLOOR, d, COORD_QUANTILE))
    if exact:  # the reuse scans test reuse, not the scale: in units of the noise's own sd (T·d values estimate it)
        v = v / np.sqrt(total / (t * d))
    cols = v if d <= MAX_PAIR_COORDS else \
        v[:, np.sort(rng_for(seed, "audit", 0, 2).choice(d, MAX_PAIR_COORDS, replace=False))]
    m = cols.shape[1]
    pairs_min = max(0.0, _pair_scan(cols))  # (a reused pair of exact noise can come out −1e-14)
    tests_pairs = m * (m - 1)
    pairs_p = min(1.0, tests_pairs * float(stats.chi2.cdf(pairs_min, t)))
    pairs_threshold = float(stats.chi2.ppf(ALPHA_PAIRS / tests_pairs, t))
    sq = np.einsum("tj,tj->t", v, v)
    gram = np.abs(v @ v.T)
    stat = sq[:, None] + sq[None, :] - 2.0 * gram
    rounds_min = max(0.0, float(stat[np.triu_indices(t, 1)].min()))
    if exact:
        rounds_min /= 2.0
    tests_rounds = t * (t - 1)
    rounds_p = min(1.0, tests_rounds * float(stats.chi2.cdf(rounds_min, d)))
    energy = 0.0 if exact else max(0.0, total / (t * d) - 1.0)
    # a reused pair (or round) keeps only the signal's difference: about 2·energy per coordinate and round
    pairs_power = 1.0 if energy == 0 else float(stats.chi2.cdf(pairs_threshold / energy, t))
    kept = (d / 2) * (m / d) ** 2   # of d/2 reused pairs, those with both coordinates in the scan
    pairs_power_half = float(1.0 - (1.0 - pairs_power) ** kept)
    q_rounds = float(stats.chi2.ppf(ALPHA_ROUNDS / tests_rounds, d))
    rounds_power = 1.0 if energy == 0 else float(stats.chi2.cdf(q_rounds / (2 * energy), d))
    return NoiseTests(exact, t, d, float(np.sqrt(total / (t * d))), float(stats.chi2.cdf(total, t * d)),
                      float(np.sqrt(per_round.min() / d)), round_scale_p,
                      _scale_power(q_scale, t * d, 0.95), _scale_detects(q_scale, d, bounds), low, allowed, m,
                      pairs_min, pairs_p, pairs_threshold, rounds_min, rounds_p, energy, pairs_power, pairs_power_half,
                      rounds_power)
