"""Synthetic user-level DP mean estimation: ULS vs ELS at matched compute (numpy only).

The paper's synthetic study (Charles et al. 2024, arXiv 2407.07737), built on
the same core as the Flower path: `sampling` (Poisson users / the ELS cap /
Poisson examples), `clipping`, `aggregate.release` (sum, noise once, divide by
the expected count), `accounting` (`calibrate_noise`, `UserLevelAccountant`).

The task. N users; user means μ_u ~ N(μ, τ²·I_d) with μ = (1, …, 1); user u
holds n_u = max(1, round(LogNormal(log m, ω²))) examples (skewed), each
x ~ N(μ_u, s²·I_d): s/τ is the within-user diversity. DP-SGD on ½‖θ − x‖²
from θ₀ = 0; metric ‖θ_T − μ‖² against the *population* mean μ.

* ULS (gradient mode): a Poisson cohort (rate q) of users; user u's update is
  the mean gradient over its ≤ k kept examples, θ − x̄_u, clipped to C. The
  mean x̄_u of the kept examples is a sufficient statistic, computed once.
* ELS: each kept example is sampled with rate q; each example's gradient
  θ − x is clipped to C and summed.
Both: g = (Σ + N(0, σ²C²·I)) / expected count; θ ← θ − lr·g.

Memory. Examples are never stored: example j of user u is
μ_u + s·z(u, j), where z is a counter-based (hashed) standard normal vector,
a pure function of (data key, global example id, coordinate). ELS draws only
the examples sampled in a step; ULS's x̄_u are computed once in chunks. The
same example always has the same value, in every step and in both modes, and
the kept subsets are nested in k (the cap is one seeded ordering).

Many (learning rate, clip norm) pairs train at once on common random numbers:
one grid point's run is bit-identical to running it alone with the same seed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ..accounting import UserLevelAccountant, calibrate_noise, make_event
from ..mechanism.aggregate import expected_count, release
from ..mechanism.clipping import clip_factors
from ..errors import ConfigError
from ..mechanism.noise import SecureGenerator, release_rng
from ..rng import hashed_normals, rng_for
from ..mechanism.sampling import MODE_KEYS, CappedExamples, cap_examples, poisson_examples, poisson_users

MODES = ("uls", "els")
CALIBRATION_TOL = 1e-2  # relative σ tolerance; σ is rounded up, so ε never exceeds the target


# -- the task -------------------------------------------------------------------
@dataclass(frozen=True)
class TaskSpec:
    """Population parameters of the synthetic task."""

    num_users: int = 10_000
    dim: int = 16
    heterogeneity: float = 1.0      # τ: std of user means around μ
    diversity: float = 1.0          # s: std of a user's examples around μ_u
    median_examples: float = 8.0    # median of n_u (log-normal)
    count_log_std: float = 1.0      # ω: log-normal shape (skew) of n_u
    max_count: int = 100_000        # n_u is truncated here (keeps the tail finite)

    def __post_init__(self) -> None:
        _check_int("users", self.num_users, 1)
        _check_int("dim", self.dim, 1)
        for key, v in (("heterogeneity", self.heterogeneity), ("diversity", self.diversity),
                       ("count-log-std", self.count_log_std)):
            if not _finite(v) or v < 0:
                raise ConfigError(key, v, "must be a finite number >= 0")
        if not _finite(self.median_examples) or self.median_examples < 1:
            raise ConfigError("median-examples", self.median_examples, "must be a finite number >= 1")
        _check_int("max-count", self.max_count, 1)


def _finite(v) -> bool:
    return isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool) and math.isfinite(v)


def _check_int(key: str, v, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
        raise ConfigError(key, v, f"must be an integer >= {lo}")
    return int(v)


@dataclass(frozen=True)
class Capped:
    """A population's data under cap k: the kept examples and ULS's sufficient statistics."""

    k: int
    kept: CappedExamples       # local ids of each user's kept examples (CSR)
    global_ids: np.ndarray     # (n_k,) global id of every kept example
    means: np.ndarray          # (N, d) x̄_u: mean of user u's kept examples

    @property
    def total(self) -> int:
        return self.kept.total


class Population:
    """One seeded draw of the task. Examples are generated on demand (`examples`)."""

    def __init__(self, spec: TaskSpec, seed: int) -> None:
        self.spec, self.seed = spec, int(seed)
        rng = rng_for(seed, "data")
        n, d = spec.num_users, spec.dim
        self.target = np.ones(d)
        self.user_means = self.target + spec.heterogeneity * rng.standard_normal((n, d))
        raw = np.exp(math.log(spec.median_examples) + spec.count_log_std * rng.standard_normal(n))
        self.counts = np.clip(np.round(raw), 1, spec.max_count).astype(np.int64)
        self.first_id = np.cumsum(self.counts) - self.counts
        self.key = int(rng.integers(0, 2**63))
        self._capped: dict[int, Capped] = {}

    @property
    def num_users(self) -> int:
        return self.spec.num_users

    def examples(self, users: np.ndarray, local_ids: np.ndarray) -> np.ndarray:
        """The examples `local_ids` of `users` (paired arrays), shape (n, d)."""
        users = np.asarray(users, dtype=np.int64)
        gid = self.first_id[users] + np.asarray(local_ids, dtype=np.int64)
        x = self.user_means[users]
        x += self.spec.diversity * hashed_normals(self.key, gid, self.spec.dim)
        return x

    def capped(self, k: int, chunk: int = 1 << 16) -> Capped:
        """Each user's min(n_u, k) kept examples (seeded, nested in k) and their means."""
        k = _check_int("max-examples-per-user", k, 1)
        if k not in self._capped:
            kept = cap_examples(rng_for(self.seed, "cap"), self.counts, k)
            owners = kept.owners
            gid = self.first_id[owners] + kept.example_ids
            sums = np.zeros((self.spec.dim, self.num_users))  # coordinate-major: contiguous rows
            for a in range(0, kept.total, chunk):
                sl = slice(a, a + chunk)
                zt = np.ascontiguousarray(hashed_normals(self.key, gid[sl], self.spec.dim).T, dtype=np.float64)
                for j in range(self.spec.dim):  # per-user sums, one coordinate at a time
                    sums[j] += np.bincount(owners[sl], weights=zt[j], minlength=self.num_users)
            m = kept.kept_counts[:, None].astype(np.float64)
            means = self.user_means + self.spec.diversity * sums.T / m
            self._capped[k] = Capped(k=k, kept=kept, global_ids=gid, means=means)
        return self._capped[k]


# -- training -------------------------------------------------------------------
@dataclass
class TrainResult:
    """Final parameters and errors of every (learning rate, clip norm) grid point."""

    mode: str
    thetas: np.ndarray              # (G, d)
    errors: np.ndarray              # (G,) ‖θ − μ‖²
    learning_rates: np.ndarray      # (G,)
    clip_norms: np.ndarray          # (G,)
    noise_multiplier: float
    sampling_rate: float
    k: int
    steps: int
    expected_count: float
    user_updates: int = 0           # Σ over steps of users contributing
    examples: int = 0               # Σ over steps of examples processed
    epsilon: float | None = None
    history: list[tuple[int, np.ndarray]] = field(default_factory=list)  # (step, errors)


def _as_grid(lrs, clips) -> tuple[np.ndarray, np.ndarray]:
    lrs = np.atleast_1d(np.asarray(lrs, dtype=np.float64))
    clips = np.atleast_1d(np.asarray(clips, dtype=np.float64))
    if lrs.shape != clips.shape:
        raise ValueError("learning_rates and clip_norms must be paired (same length)")
    if np.any(~np.isfinite(lrs)) or np.any(lrs <= 0):
        raise ConfigError("learning-rate", lrs.tolist(), "must be finite and > 0")
    if np.any(np.isnan(clips)) or np.any(clips <= 0):
        raise ConfigError("clip-norm", clips.tolist(), "must be > 0 (inf for no clipping)")
    return lrs, clips


def _clipped_sums(thetas: np.ndarray, x: np.ndarray, clips: np.ndarray) -> np.ndarray:
    """Σ_i clip(θ_g − x_i, C_g) for every grid point g: shape (G, d)."""
    if x.shape[0] == 0:
        return np.zeros_like(thetas)
    # ‖θ − x‖² = ‖θ‖² − 2θ·x + ‖x‖²: avoids materialising (G, n, d) for the norms.
    sq = (thetas**2).sum(1)[:, None] - 2.0 * thetas @ x.T + (x**2).sum(1)[None, :]
    f = clip_factors(np.sqrt(np.maximum(sq, 0.0)), clips[:, None])  # (G, n)
    return f.sum(1)[:, None] * thetas - f @ x


def train(
    pop: Population,
    mode: str,
    k: int,
    sampling_rate: float,
    noise_multiplier: float,
    learning_rates: Sequence[float] | float,
    clip_norms: Sequence[float] | float,
    steps: int,
    seed: int,
    accountant: UserLevelAccountant | None = None,
    record_every: int = 0,
    theta0: np.ndarray | None = None,
    secure_mode: bool = False,
) -> TrainResult:
    """DP-SGD on ½‖θ − x‖² in `mode` for every paired (learning rate, clip norm).

    Randomness: sampling from the mode's own stream rng_for(seed, "sampling", t, key=MODE_KEYS[mode])
    (common to the grid points; ULS users and ELS examples never share a uniform); noise drawn for each
    release on its own (`noise.release_rng`: keyed by mode, step, σC, expected count and the clipped
    sum), so no two releases that can differ — other modes, grid points, configs — share noise. With
    `secure_mode` both come from the OS (`noise.SecureGenerator`), as in the Flower path.
    The accountant, if given, composes the step's event once per reporting
    interval (count = steps in the interval); its ε is stored in the result.
    """
    if mode not in MODES:
        raise ConfigError("mode", mode, f"must be one of {list(MODES)}")
    _check_int("steps", steps, 0)
    if not (0.0 < sampling_rate <= 1.0):
        raise ConfigError("sampling-rate", sampling_rate, "must be in (0, 1]")
    if not _finite(noise_multiplier) or noise_multiplier < 0:
        raise ConfigError("noise-multiplier", noise_multiplier, "must be a finite number >= 0")
    lrs, clips = _as_grid(learning_rates, clip_norms)
    if noise_multiplier > 0 and np.any(np.isinf(clips)):
        raise ConfigError("clip-norm", "inf", "must be finite when noise is added")
    capped = pop.capped(k)
    n, d = pop.num_users, pop.spec.dim
    expected = expected_count(mode, sampling_rate, n, capped.total)
    thetas = np.zeros((lrs.size, d)) if theta0 is None else np.tile(np.asarray(theta0, float), (lrs.size, 1))
    event = make_event(mode, sampling_rate, noise_multiplier, k if mode == "els" else None)
    res = TrainResult(mode, thetas, np.empty(0), lrs, clips, float(noise_multiplier), float(sampling_rate),
                      int(k), int(steps), float(expected))
    composed = 0
    for t in range(steps):
        srng = SecureGenerator() if secure_mode else rng_for(seed, "sampling", t, key=MODE_KEYS[mode])
        if mode == "uls":
            users = poisson_users(srng, n, sampling_rate)
            x = capped.means[users]
            res.user_updates += users.size
            res.examples += int(capped.kept.kept_counts[users].sum())
        else:
            sample = poisson_examples(srng, capped.kept, sampling_rate)
            owners = np.repeat(sample.users, np.diff(sample.offsets))
            x = pop.examples(owners, sample.example_ids)
            res.user_updates += sample.users.size
            res.examples += sample.num_examples
        totals = _clipped_sums(thetas, x, clips)
        for g in range(lrs.size):
            # C = inf (no clipping) is allowed only without noise; the noise std is then 0.
            clip = clips[g] if np.isfinite(clips[g]) else 0.0
            nrng = SecureGenerator() if secure_mode else \
                release_rng(seed, mode, t, clip * noise_multiplier, expected, totals[g])
            upd = release(totals[g], clip, noise_multiplier, expected, nrng)
            thetas[g] -= lrs[g] * upd.update
        if record_every and ((t + 1) % record_every == 0 or t + 1 == steps):
            if accountant is not None:
                accountant.compose(event, t + 1 - composed)
                composed = t + 1
            res.history.append((t + 1, ((thetas - pop.target) ** 2).sum(1)))
    if accountant is not None and steps > composed:
        accountant.compose(event, steps - composed)
    if accountant is not None:
        res.epsilon = accountant.epsilon()
    res.thetas = thetas
    res.errors = ((thetas - pop.target) ** 2).sum(1)
    return res


# -- matched compute ----------------------------------------------------------------
def sampling_rate_for(mode: str, capped: Capped, num_users: int, examples_per_step: float) -> float:
    """q giving `examples_per_step` expected examples per step (ULS: q·Σ min(n_u,k); ELS: q·n_k).

    Both modes process the same kept examples per participant, so for a given k
    the rate is the same formula; returns a value > 1 when the budget is infeasible.
    """
    del mode, num_users  # same expected-examples formula in both modes (DESIGN §1)
    return float(examples_per_step) / capped.total


def expected_kept(spec: TaskSpec, k: int) -> float:
    """E[Σ_u min(n_u, k)] under the task's count distribution (exact sum over n = 1..k)."""
    from scipy.stats import norm

    mu, om = math.log(spec.median_examples), spec.count_log_std
    top = min(int(k), spec.max_count)
    c = np.arange(1, top + 1, dtype=float)
    if om == 0:
        n0 = float(np.clip(np.round(spec.median_examples), 1, spec.max_count))
        return spec.num_users * min(n0, k)
    upper = norm.cdf((np.log(c + 0.5) - mu) / om)  # P(round(raw) <= c)
    upper[-1] = 1.0  # min(n, k) = k for every n >= k (and the max_count truncation)
    pmf = np.diff(np.concatenate([[0.0], upper]))
    return float(spec.num_users * (pmf * c).sum())


_SIGMA_CACHE: dict[tuple, tuple[float, float]] = {}


def calibrated_sigma(mode: str, epsilon: float, delta: float, q: float, steps: int, k: int,
                     rel_tol: float = CALIBRATION_TOL) -> tuple[float, float]:
    """(σ, achieved ε) from `accounting.calibrate_noise`, memoised per configuration."""
    key = (mode, float(epsilon), float(delta), round(float(q), 15), int(steps),
           int(k) if mode == "els" else None, rel_tol)
    if key not in _SIGMA_CACHE:
        _SIGMA_CACHE[key] = calibrate_noise(mode, epsilon, delta, q, steps,
                                            int(k) if mode == "els" else None, rel_tol=rel_tol)
    return _SIGMA_CACHE[key]


def run(
    spec: TaskSpec,
    mode: str,
    epsilon: float,
    delta: float,
    k: int,
    examples_per_step: float | None = None,
    sampling_rate: float | None = None,
    steps: int = 200,
    learning_rates: Sequence[float] | float = 0.1,
    clip_norms: Sequence[float] | float = 1.0,
    seed: int = 0,
    population: Population | None = None,
    record_every: int = 0,
    secure_mode: bool = False,
) -> TrainResult:
    """One private run: rate from the compute budget, σ calibrated, a fresh accountant."""
    if not _finite(epsilon) or epsilon <= 0:
        raise ConfigError("epsilon", epsilon, "must be a finite number > 0")
    if not (isinstance(delta, (int, float)) and 0 < delta < 1):
        raise ConfigError("delta", delta, "must be in (0, 1)")
    pop = population if population is not None else Population(spec, seed)
    capped = pop.capped(k)
    if sampling_rate is None:
        if examples_per_step is None:
            raise ValueError("give examples_per_step or sampling_rate")
        sampling_rate = sampling_rate_for(mode, capped, pop.num_users, examples_per_step)
    if not (0 < sampling_rate <= 1):
        raise ConfigError("sampling-rate", sampling_rate,
                          "must be in (0, 1] (the compute budget exceeds the capped data)")
    sigma, _ = calibrated_sigma(mode, epsilon, delta, sampling_rate, steps, k)
    accountant = UserLevelAccountant(delta)
    res = train(pop, mode, k, sampling_rate, sigma, learning_rates, clip_norms, steps, seed,
                accountant=accountant, record_every=record_every, secure_mode=secure_mode)
    if res.epsilon is not None and res.epsilon > epsilon * (1 + 1e-9):
        raise RuntimeError(f"accountant reports ε={res.epsilon} above the target {epsilon}")
    return res
