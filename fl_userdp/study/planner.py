"""Budget planner: k, q (cohort size) and σ for ELS and ULS at fixed compute and (ε, δ). Pure.

Inputs: the users' example counts n_u (N users), a compute budget of B
expected examples per step for T steps, a target (ε, δ) and the clip norm C.
For each mode we evaluate a few per-user caps k, each taken at a quantile of
n_u (rounded up, at least 1), spend the whole budget on the sampling rate,
calibrate σ with the same accountant that reports ε during training
(`calibrate_noise`, PLD; the achieved ε never exceeds the target), and score
the candidate by its **noise-to-signal ratio** (NSR): the standard deviation
of the noise per coordinate of the averaged update, σC / expected count, in
units of one clipped contribution.

**ELS** (per-example clipping, cap k). Kept examples n_k = Σ min(n_u, k);
q = B / n_k, so the expected batch is exactly B for every k and
NSR = σC / B depends on k only through σ: a small k makes each user's
contribution small (σ falls) but throws data away and raises q; a large k keeps
data but the per-step event is a mixture over up to k sampled examples of one
user (σ rises). Following the paper, k is set near a quantile of examples per
user: we try the quantiles in `ELS_QUANTILES` and recommend the lowest NSR,
reporting the fraction of examples kept so the data loss is visible.

**ULS** (per-user clipping, each sampled user uses min(n_u, k) examples).
Compute per step is q · Σ min(n_u, k) = B, so q = B / Σ min(n_u, k): at fixed
compute a larger k means a smaller cohort (q·N users) and vice versa. The
signal is one clipped update per user, NSR = σC / (qN); σ depends on q only,
and σ/q falls as q grows, so the NSR favours large cohorts (small k). But a
user's update from more examples has less sampling variance, which the NSR
does not see; so among the candidates whose NSR is within `ULS_SLACK` (10 %)
of the best we recommend the **largest** k (most data per user at nearly the
best noise). When even k = max n_u cannot spend B (q would exceed 1), q = 1
and the budget is under-spent; the result says so (`budget_met`).

A candidate is infeasible (skipped) when q > 1 would be needed for B, except
for the largest k, which is then reported with q = 1.

**The averaging gain.** The NSR above counts noise per clipped *record* and
so treats a clipped user mean (ULS) and a clipped example (ELS) as carrying the
same signal. They do not: a user's mean over G examples points along the mean
gradient better than one example, by the averaging gain a(G) = c_U(G) / c_E
(cosines to the mean gradient; measured on the tiny LM at its starting weights,
a ≈ 1.9 at G = 4 and ≈ 2.8 at G = 16 for independent examples, ≈ 1.1 for
near-copies). Given a `Pilot` (`fl_userdp.local.pilot.measure_pilot`, or a
file saved by `fl-userdp advise --save-pilot`), each candidate's ratio is
divided by its record's measured cosine — `signal_noise_ratio` is then the noise
per unit of signal along the mean gradient — and ULS takes the lowest, without
the 10 % slack. Without one, the ratio is per record and its ULS-vs-ELS
comparison is biased toward ELS by a; `fl-userdp advise` makes the comparison
between modes with the measured gain (`fl_userdp.study.advisor`).

**Banded correlated noise** (`bands` = b > 1: privacy.mechanism "bandmf"). Users are split into b cyclic
groups and a step draws within one group, so spending B per step takes q = b·B / Σ min(n_u, k); σ is
calibrated for ⌈T/b⌉ participations (`calibrate_noise(..., bands=b)`); and since the noise is correlated
across steps, each candidate's ratio is multiplied by the prefix-sum RMSE of the strategy relative to
independent noise at equal σ over T steps (`fl_userdp.mechanism.bandmf.error_ratio`, `noise_factor`):
the noise the model's iterate accumulates, which is what the banded strategy lowers.

**Units.** An example is one row of `model.seq-len` tokens of a user's
tokenised text (the run packs each user's texts into such rows), so n_u, k
and B all count rows of the run's `model.seq-len`; the same text gives other
counts, and another k, at another seq-len. `seq_len` records the unit in the
plan (None: counts in whatever unit the caller used, e.g. the linear task).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import numpy as np

from ..errors import ConfigError

ELS_QUANTILES = (0.5, 0.75, 0.9)
ULS_QUANTILES = (0.25, 0.5, 0.75, 0.9)
ULS_SLACK = 0.10
REL_TOL = 1e-2   # σ tolerance of the calibration (σ stays on the feasible side: ε ≤ target)


@dataclass(frozen=True)
class Candidate:
    mode: str
    quantile: float | None     # the quantile of n_u that gave k (None: added by hand)
    k: int
    sampling_rate: float       # q
    expected_examples: float   # q · Σ min(n_u, k): the compute actually spent per step
    expected_cohort: float     # ULS: qN; ELS: expected users with >= 1 sampled example
    noise_multiplier: float    # σ
    epsilon: float             # achieved ε (<= target)
    noise_to_signal: float     # σC / expected count (ULS: qN users; ELS: q·n_k examples)
    kept_fraction: float       # Σ min(n_u, k) / Σ n_u
    budget_met: bool
    record_cosine: float | None = None   # measured cosine of a record to the mean gradient (with a pilot)

    @property
    def score(self) -> float:
        """Noise per unit of signal: the NSR divided by the record's measured cosine (the NSR without a pilot)."""
        return self.noise_to_signal / self.record_cosine if self.record_cosine else self.noise_to_signal


@dataclass(frozen=True)
class Plan:
    target_epsilon: float
    delta: float
    examples_per_step: float
    steps: int
    clip_norm: float
    num_users: int
    num_examples: int
    count_quantiles: dict[str, float]
    els: list[Candidate] = field(default_factory=list)
    uls: list[Candidate] = field(default_factory=list)
    best_els: Candidate | None = None
    best_uls: Candidate | None = None
    seq_len: int | None = None  # tokens per example row (model.seq-len): the unit of n_u, k and B
    bands: int = 1              # b > 1: banded correlated noise over b cyclic groups (module docstring)
    noise_factor: float = 1.0   # the strategy's prefix-sum RMSE over independent noise's (1 for b = 1)

    @property
    def k_caps(self) -> str:
        """What k caps, in words."""
        if self.seq_len is None:
            return "k caps each user's examples"
        return f"k caps each user's rows of {self.seq_len} tokens (model.seq-len)"

    def to_dict(self) -> dict:
        return {**asdict(self), "k_caps": self.k_caps}


def check_counts(counts: Sequence[int] | np.ndarray, key: str = "counts") -> np.ndarray:
    arr = np.asarray(counts)
    if arr.ndim != 1 or arr.size == 0:
        raise ConfigError(key, f"{arr.size} values", "must be a non-empty list of examples per user")
    if not np.issubdtype(arr.dtype, np.number) or np.any(arr != np.round(arr)) or np.any(arr < 1):
        raise ConfigError(key, arr[:5].tolist(), "must be integers >= 1 (examples per user)")
    return arr.astype(np.int64)


def check_budget(examples_per_step: float, steps: int, epsilon: float, delta: float) -> None:
    """A compute budget (B examples per step × T steps) and an (ε, δ) target, or ConfigError naming the field."""
    if not (examples_per_step > 0) or math.isinf(examples_per_step):
        raise ConfigError("examples-per-step", examples_per_step, "must be a finite number > 0")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError("steps", steps, "must be an integer >= 1")
    if not (epsilon > 0) or math.isinf(epsilon):
        raise ConfigError("epsilon", epsilon, "must be a finite number > 0")
    if not 0 < delta < 1:
        raise ConfigError("delta", delta, "must be in (0, 1)")


def k_at(counts: np.ndarray, quantile: float) -> int:
    """k at a quantile of the examples per user: ceil of the (linear) quantile, at least 1."""
    return max(1, int(math.ceil(float(np.quantile(counts, quantile)) - 1e-9)))


def _candidates(counts: np.ndarray, quantiles: Sequence[float]) -> list[tuple[float, int]]:
    seen: dict[int, float] = {}
    for qt in quantiles:
        seen.setdefault(k_at(counts, qt), qt)
    return sorted(((qt, k) for k, qt in seen.items()), key=lambda t: t[1])


def banded(bands: int, coefficients: str, steps: int) -> tuple[dict, float]:
    """The calibration's extra keywords for `bands` ({} for b = 1) and the noise factor: the prefix-sum RMSE of
    the b-banded strategy over independent noise's at equal σ over `steps` (1.0 for b = 1)."""
    if isinstance(bands, bool) or not isinstance(bands, int) or bands < 1:
        raise ConfigError("privacy.bands", bands, "must be an integer >= 1")
    if bands == 1:
        return {}, 1.0
    from ..mechanism.bandmf import coefficients as strategy, error_ratio

    return {"bands": bands}, error_ratio(strategy(coefficients, bands, steps), steps)


def make_plan(counts: Sequence[int] | np.ndarray, examples_per_step: float, steps: int, epsilon: float,
              delta: float, clip_norm: float = 1.0, els_quantiles: Sequence[float] = ELS_QUANTILES,
              uls_quantiles: Sequence[float] = ULS_QUANTILES,
              calibrate: Callable | None = None, seq_len: int | None = None, pilot=None, bands: int = 1,
              coefficients: str = "sqrt") -> Plan:
    """Evaluate the ELS and ULS candidates and pick one of each (see the module docstring).

    `pilot` (a `fl_userdp.study.advisor.Pilot`): score candidates per unit of measured signal (`Candidate.score`).

    `seq_len` (tokens per example row, `model.seq-len`) only labels the unit of the counts.
    """
    if calibrate is None:
        from ..accounting import calibrate_noise as calibrate
    n = check_counts(counts)
    check_budget(examples_per_step, steps, epsilon, delta)
    if not (clip_norm > 0):
        raise ConfigError("clip-norm", clip_norm, "must be > 0")
    if seq_len is not None and (isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 2):
        raise ConfigError("seq-len", seq_len, "must be an integer >= 2 (a row needs a next-token target)")
    for name, qs in (("els-quantiles", els_quantiles), ("uls-quantiles", uls_quantiles)):
        if not qs or any(not 0 <= q <= 1 for q in qs):
            raise ConfigError(name, list(qs), "must be a non-empty list of numbers in [0, 1]")
    total, num = int(n.sum()), int(n.size)
    B = float(examples_per_step)
    extra, factor = banded(bands, coefficients, int(steps))

    def candidate(mode: str, qt: float | None, k: int, last: bool) -> Candidate | None:
        kept = np.minimum(n, k)
        s_k = float(kept.sum())
        q = B * bands / s_k  # a step draws from one of the b groups (about 1/b of the kept examples)
        if q > 1 and not last:
            return None
        q = min(q, 1.0)
        sigma, eps = calibrate(mode, epsilon, delta, q, steps, k if mode == "els" else None, rel_tol=REL_TOL,
                               **extra)
        spent = q * s_k / bands
        if mode == "els":
            cohort = float(np.sum(1.0 - (1.0 - q) ** kept)) / bands
            nsr = sigma * factor * clip_norm / spent
        else:
            cohort = q * num / bands
            nsr = sigma * factor * clip_norm / cohort
        cos = None if pilot is None else pilot_cosine(pilot, mode, int(k))
        return Candidate(mode, qt, int(k), q, spent, cohort, float(sigma), float(eps), float(nsr),
                         s_k / total, spent >= B * (1 - 1e-9), cos)

    def evaluate(mode: str, quantiles: Sequence[float]) -> list[Candidate]:
        ks = _candidates(n, quantiles)
        out = [candidate(mode, qt, k, i == len(ks) - 1) for i, (qt, k) in enumerate(ks)]
        return [c for c in out if c is not None]

    els, uls = evaluate("els", els_quantiles), evaluate("uls", uls_quantiles)
    best_els = min(els, key=lambda c: (not c.budget_met, c.score)) if els else None
    best_uls = None
    if uls and pilot is not None:
        best_uls = min(uls, key=lambda c: (not c.budget_met, c.score))
    elif uls:
        met = [c for c in uls if c.budget_met] or uls
        floor = min(c.noise_to_signal for c in met)
        best_uls = max((c for c in met if c.noise_to_signal <= floor * (1 + ULS_SLACK)), key=lambda c: c.k)
    qs = {f"p{int(round(100 * p))}": float(np.quantile(n, p)) for p in (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0)}
    return Plan(float(epsilon), float(delta), B, int(steps), float(clip_norm), num, total, qs, els, uls,
                best_els, best_uls, None if seq_len is None else int(seq_len), int(bands), float(factor))


def pilot_cosine(pilot, mode: str, k: int) -> float:
    """The pilot's cosine of a record at cap k, interpolated linearly in log k between its measured caps
    (held at the ends)."""
    table = pilot.example_cosine if mode == "els" else pilot.user_cosine
    caps = sorted(table)
    return float(np.interp(math.log(k), [math.log(c) for c in caps], [table[c] for c in caps]))


def pilot_used(plan: Plan) -> bool:
    return any(c.record_cosine for c in plan.els + plan.uls)


def format_plan(plan: Plan) -> str:
    """A human-readable table of the candidates, the recommended ones marked with '*'."""
    lines = [f"users {plan.num_users}, examples {plan.num_examples}; examples per user "
             + " ".join(f"{k}={v:g}" for k, v in plan.count_quantiles.items()),
             f"budget {plan.examples_per_step:g} examples/step x {plan.steps} steps; target epsilon "
             f"{plan.target_epsilon:g}, delta {plan.delta:g}, clip norm {plan.clip_norm:g}",
             f"{plan.k_caps}; examples and examples/step count these rows",
             *([f"banded noise: b={plan.bands} cyclic groups (q is within a group), NSR x {plan.noise_factor:.3f} "
                f"(the strategy's prefix-sum RMSE over independent noise's at equal sigma)"] if plan.bands > 1 else []),
             f"{'':1} {'mode':4} {'quant':>5} {'k':>5} {'q':>9} {'cohort':>8} {'ex/step':>8} {'sigma':>8} "
             f"{'epsilon':>8} {'NSR':>9} {'kept':>5}" + (f" {'cosine':>7} {'NSR/cos':>9}" if pilot_used(plan) else "")]
    for best, rows in ((plan.best_els, plan.els), (plan.best_uls, plan.uls)):
        for c in rows:
            mark = "*" if c == best else " "
            qt = "-" if c.quantile is None else f"p{round(100 * c.quantile)}"
            lines.append(f"{mark} {c.mode:4} {qt:>5} {c.k:>5} {c.sampling_rate:>9.4g} {c.expected_cohort:>8.1f} "
                         f"{c.expected_examples:>8.1f} {c.noise_multiplier:>8.4g} {c.epsilon:>8.4g} "
                         f"{c.noise_to_signal:>9.3g} {c.kept_fraction:>5.0%}"
                         + (f" {c.record_cosine:>7.4f} {c.score:>9.3g}" if c.record_cosine else "")
                         + ("" if c.budget_met else "  (budget not met: q=1)"))
    for name, c in (("ELS", plan.best_els), ("ULS", plan.best_uls)):
        if c is not None:
            lines.append(f"recommended {name}: privacy.max-examples-per-user={c.k} "
                         + (f"privacy.mechanism=bandmf privacy.bands={plan.bands} " if plan.bands > 1 else "") +
                         f"privacy.sampling-rate={c.sampling_rate:.6g} privacy.noise-multiplier={c.noise_multiplier:.6g}"
                         f"  (NSR {c.noise_to_signal:.3g}" + (f", per unit of signal {c.score:.3g})" if c.record_cosine
                                                            else ")"))
    if not pilot_used(plan):
        lines.append("NSR is per clipped record: it leaves out the averaging gain of a user's mean (ULS), so do not "
                     "compare the modes by it; `fl-userdp advise` (or plan --pilot) measures the gain")
    return "\n".join(lines)


def read_counts(path: str) -> np.ndarray:
    """Examples per user from a file: a JSON list, or integers separated by whitespace/commas/newlines."""
    from pathlib import Path

    from .. import json_input

    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError("--counts-file", str(p), f"is not readable ({err.__class__.__name__})") from None
    try:
        values = json_input.loads(text) if text.lstrip().startswith("[") \
            else [float(t) for t in text.replace(",", " ").split()]
    except json_input.BadJson as err:
        raise ConfigError("--counts-file", str(p), f"is not usable JSON ({err})") from None
    except ValueError:
        raise ConfigError("--counts-file", str(p), "must hold integers (a JSON list or one per line)") from None
    if isinstance(values, list) and values and all(isinstance(v, (int, float)) for v in values):
        return check_counts(values, "--counts-file")
    raise ConfigError("--counts-file", str(p), "must hold a non-empty list of integers >= 1")
