"""ELS or ULS for one population, privacy target and compute budget: the advisor's model. Pure.

The question: for my users (examples per user n_u), my (ε, δ) and my compute (B expected examples
per step for T steps), does example-level sampling (ELS, cap k) or user-level sampling (ULS, G
examples per sampled user) give the better model? The advisor scores every candidate (mode, cap c,
clip norm C) by the quality of the run's whole estimate of the population's mean gradient:

* **Calibration.** For a cap c the sampling rate spends the budget exactly, q = B / Σ_u min(n_u, c), and
  σ is calibrated for (ε, δ) over T steps with the accountant that reports ε in training (PLD; the
  mixture-of-Gaussians event for ELS).
* **One step.** ELS sums E = B example records in expectation, ULS E = q·N user records (each the mean of
  min(n_u, G) examples). A record g clipped to C has expected projection m₁(C) = mean(min(‖g‖, C)·cos g)
  on the mean gradient and second moment m₂(C) = mean(min(‖g‖, C)²) — both *measured* by the pilot on
  the user's own model and data (`Pilot.records`; with a pilot that holds only cosines, every record is
  taken as clipped: m₁ = C·c, m₂ = C²). The released mean's SNR is
  s = (E·m₁)² / (d·σ²·C² + E·m₂) (d trainable weights): Gaussian noise, then sampling spread.
* **T steps.** The run sums T such releases: the optimisation SNR is T·s (σ already holds T).
* **The data seen.** What the releases estimate is the mean gradient of the examples the run reaches,
  not the population's: ELS only ever reaches its kept examples (each user's first min(n_u, k), a
  fraction 1 − (1 − q)^T of them visited), ULS draws G fresh examples of a user at each of its ≈ q·T
  visits. With n_eff independent-equivalent examples (a user's examples count less when they are alike:
  n_u / (1 + (n_u − 1)·ρ), ρ = 1 − the pilot's within-user share) and c̄ the mean cosine of one example,
  the data SNR is n_eff·c̄² / (1 − c̄²). This is where a small ELS cap pays for the data it throws away
  when q·T is many epochs, and where ULS's fresh examples count.
* **Score.** Q = 1 / (1/(T·s) + 1/s_data); the best (cap, C) of each mode; margin = Q_ELS / Q_ULS.
* **Uncertainty.** The pilot's users are resampled (`BOOTSTRAP` times, with replacement) and every score is
  recomputed: the margin's `LEVEL` interval. A call is firm only when the whole interval lies beyond a
  `CLOSE`-fold difference (`too_close`); otherwise it is "too close to call" and nothing is recommended.

What it leaves out, and so where it can be wrong: cosines and norms change during training (the pilot
measures them at the starting weights); the server optimizer and its learning rate are not modelled
(tune them per mode: `train.server-lr` is printed as a starting point, not a prediction); curvature and
Adam's normalisation are ignored.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np

from ..errors import ConfigError
from .planner import banded, check_budget, check_counts

CAPS = (1, 2, 4, 8, 16, 32, 64)
CLIP_QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9, 1.0)   # candidate C: these quantiles of the mode's record norms
CLOSE = 1.25        # scores within [1/CLOSE, CLOSE] of each other are "too close to call" (the model's resolution)
BOOTSTRAP = 200     # pilot resamples for the margin's interval
LEVEL = 0.9         # the interval's coverage
REL_TOL = 1e-2      # σ tolerance of the calibration (σ stays on the feasible side: ε ≤ target)
SERVER_LR = 0.01    # printed starting point for Adam's server lr (not modelled)


@dataclass(frozen=True)
class Pilot:
    """Cosines (and, when measured, norms) of gradients to the mean gradient, at the starting weights.

    `example_cosine[k]`: mean cosine of an example's gradient kept under cap k (examples weighted
    equally, as ELS sums them); `user_cosine[G]`: mean cosine of a user's mean gradient over
    min(n_u, G) of its examples (users weighted equally, as ULS sums them). `dim`: trainable weights.
    `records` (optional, per pilot user): {"norm": [...], "cos": [...]} of its examples in the order a cap
    keeps them, and {"mean_norm": {G: v}, "mean_cos": {G: v}} of its mean gradients — what the clip-norm
    model and the pilot's interval need.
    """
    dim: int
    example_cosine: Mapping[int, float]
    user_cosine: Mapping[int, float]
    users: int = 0                 # users the pilot measured
    within_user_share: float | None = None   # within-user share of the examples' gradient variance
    records: tuple = ()            # per pilot user, see above (empty: cosines only)

    def gain(self, g: int, k: int = 1) -> float:
        """Averaging gain a = c_U(G) / c_E(k)."""
        return self.user_cosine[g] / self.example_cosine[k]

    def to_dict(self) -> dict:
        return {"dim": self.dim, "example_cosine": {str(k): v for k, v in self.example_cosine.items()},
                "user_cosine": {str(k): v for k, v in self.user_cosine.items()}, "users": self.users,
                "within_user_share": self.within_user_share,
                "records": [{"norm": list(r["norm"]), "cos": list(r["cos"]),
                             "mean_norm": {str(g): v for g, v in r["mean_norm"].items()},
                             "mean_cos": {str(g): v for g, v in r["mean_cos"].items()}} for r in self.records]}

    @classmethod
    def from_dict(cls, d: Mapping, key: str = "pilot") -> "Pilot":
        """A pilot from `to_dict`'s form; a missing or bad field raises ConfigError naming `key`."""
        try:
            ex = {int(k): float(v) for k, v in d["example_cosine"].items()}
            us = {int(k): float(v) for k, v in d["user_cosine"].items()}
            dim = int(d["dim"])
            records = tuple({"norm": [float(x) for x in r["norm"]], "cos": [float(x) for x in r["cos"]],
                             "mean_norm": {int(g): float(v) for g, v in r["mean_norm"].items()},
                             "mean_cos": {int(g): float(v) for g, v in r["mean_cos"].items()}}
                            for r in d.get("records") or ())
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise ConfigError(key, type(d).__name__, f"must hold dim, example_cosine and user_cosine ({err!r})") from None
        if dim < 1 or not ex or not us or any(not 0 < v <= 1 for v in (*ex.values(), *us.values())):
            raise ConfigError(key, dim, "needs dim >= 1 and cosines in (0, 1] for at least one cap")
        share = d.get("within_user_share")
        return cls(dim, ex, us, int(d.get("users", 0)), None if share is None else float(share), records)


@dataclass(frozen=True)
class Option:
    mode: str
    cap: int                       # k (ELS) or G (ULS)
    sampling_rate: float
    noise_multiplier: float
    epsilon: float
    expected_records: float        # E: examples (ELS) or users (ULS) per step
    examples_per_record: float     # m̄ = B / E
    cosine: float                  # c of one record (mean, unclipped direction)
    snr: float                     # the run's score Q (see the module docstring)
    epochs: float                  # q·T over the kept examples (ELS) / the users (ULS)
    clip_norm: float = 1.0         # C (in the pilot's gradient units; 1.0 and "all clipped" without records)
    step_snr: float = 0.0          # s: one release
    data_snr: float = math.inf     # s_data: the examples the run reaches
    clipped_fraction: float = 1.0  # of the pilot's records at this C


@dataclass(frozen=True)
class Advice:
    epsilon: float
    delta: float
    examples_per_step: float
    steps: int
    num_users: int
    dim: int
    els: list[Option] = field(default_factory=list)
    uls: list[Option] = field(default_factory=list)
    best_els: Option | None = None
    best_uls: Option | None = None
    bands: int = 1                 # b > 1: banded correlated noise over b cyclic groups (`advise`)
    interval: tuple[float, float] | None = None   # the margin's LEVEL interval over pilot resamples

    @property
    def margin(self) -> float:
        """Score of the best ELS option over that of the best ULS option (> 1: ELS predicted better)."""
        return _ratio(self.best_els.snr, self.best_uls.snr)

    @property
    def winner(self) -> str:
        return "els" if self.margin > 1 else "uls"

    @property
    def same_algorithm(self) -> bool:
        """Both best options at cap 1: the two modes' privacy events are the same, and so is every step's
        distribution (ULS's fresh row per visit is the only difference): a tie by construction."""
        return self.best_els.cap == 1 and self.best_uls.cap == 1

    @property
    def close(self) -> bool:
        return too_close(self.margin, self.interval, self.same_algorithm)

    @property
    def call(self) -> str:
        """"els", "uls" or "close"."""
        return "close" if self.close else self.winner

    @property
    def components(self) -> dict[str, float]:
        """σ_E/σ_U, m̄ (ULS examples per sampled user), averaging gain a = c_U(G)/c_E(k)."""
        e, u = self.best_els, self.best_uls
        return {"sigma_ratio": e.noise_multiplier / u.noise_multiplier if u.noise_multiplier else math.inf,
                "examples_per_user": u.examples_per_record, "averaging_gain": u.cosine / e.cosine,
                "crossover_sigma_ratio": u.examples_per_record * e.cosine / u.cosine}

    def to_dict(self) -> dict:
        return {**asdict(self), "winner": self.winner, "margin": self.margin, "close": self.close, "call": self.call,
                "components": self.components}


def too_close(margin: float, interval: tuple[float, float] | None = None, same_algorithm: bool = False) -> bool:
    """No firm call: one algorithm, or the margin (or any of its interval) within [1/CLOSE, CLOSE].

    A firm call needs the model to predict at least a CLOSE-fold score difference, over the whole interval
    of the pilot's resamples when there is one: a 0.1 % margin with a tight interval is still a coin flip."""
    if same_algorithm:
        return True
    lo, hi = interval if interval is not None else (margin, margin)
    return not (hi < 1 / CLOSE or lo > CLOSE)


def _ratio(els: float, uls: float) -> float:
    if uls > 0:
        return els / uls
    return 1.0 if els <= 0 else math.inf


def snr(cosine: float, records: float, sigma: float, dim: int) -> float:
    """One release of `records` records all clipped to C = 1: c²E² / (dσ² + E) (m₁ = c, m₂ = 1)."""
    return step_snr(cosine, 1.0, records, sigma, dim, 1.0)


def step_snr(m1: float, m2: float, records: float, sigma: float, dim: int, clip: float) -> float:
    """One release: (E·m₁)² / (d·σ²·C² + E·m₂); 0 when the records do not point along the mean (m₁ ≤ 0)."""
    return (records * max(m1, 0.0)) ** 2 / (dim * sigma ** 2 * clip ** 2 + records * m2)


def data_snr(n_eff: float, cosine: float) -> float:
    """How well the mean gradient of n_eff independent examples of mean cosine c̄ points: n_eff·c̄²/(1 − c̄²)."""
    if n_eff <= 0 or cosine <= 0:
        return 0.0
    return math.inf if cosine >= 1 else n_eff * cosine ** 2 / (1 - cosine ** 2)


def effective_examples(distinct: np.ndarray, rho: float) -> float:
    """Σ_u d_u / (1 + (d_u − 1)·ρ): a user's d_u examples count as fewer when they are alike (ρ = 1 − share)."""
    distinct = np.asarray(distinct, dtype=float)
    return float(np.sum(distinct / (1 + np.maximum(distinct - 1, 0) * rho)))


def reached(mode: str, counts: np.ndarray, cap: int, q: float, steps: int) -> np.ndarray:
    """Expected distinct examples of each user the run reaches: ELS its kept min(n_u, k), each visited with
    probability 1 − (1 − q)^T; ULS min(n_u, G) fresh ones at each of its visits (q·T in expectation)."""
    n = np.asarray(counts, dtype=float)
    if mode == "els":
        return np.minimum(n, cap) * (1 - (1 - q) ** steps)
    g = np.minimum(n, cap)
    return n * (1 - (1 - q * g / n) ** steps)


def _records(pilot: Pilot, mode: str, cap: int, users: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(norms, cosines) of the records a cap makes from the given pilot users (None: a cosines-only pilot)."""
    if not pilot.records:
        return None
    recs = [pilot.records[i] for i in users]
    if mode == "els":
        norms = np.concatenate([np.asarray(r["norm"][:cap]) for r in recs])
        cos = np.concatenate([np.asarray(r["cos"][:cap]) for r in recs])
        return norms, cos
    return (np.array([r["mean_norm"][cap] for r in recs]), np.array([r["mean_cos"][cap] for r in recs]))


def _moments(norms: np.ndarray, cos: np.ndarray, clip: float) -> tuple[float, float, float]:
    kept = np.minimum(norms, clip)
    return float(np.mean(kept * cos)), float(np.mean(kept ** 2)), float(np.mean(norms > clip))


def advise(counts: Sequence[int] | np.ndarray, examples_per_step: float, steps: int, epsilon: float,
           delta: float, pilot: Pilot, caps: Sequence[int] | None = None,
           calibrate: Callable | None = None, bands: int = 1, coefficients: str = "sqrt",
           bootstrap: int = BOOTSTRAP, seed: int = 0) -> Advice:
    """Every feasible (cap, C) of each mode scored by Q; the best of each mode, the margin and its interval.

    `bands` > 1: banded correlated noise over b cyclic groups (`fl_userdp.study.planner` docstring): q is
    within a group, σ is calibrated for ⌈T/b⌉ participations and enters the score times the strategy's
    prefix-sum noise factor."""
    if calibrate is None:
        from ..accounting import calibrate_noise as calibrate
    n = check_counts(counts)
    check_budget(examples_per_step, steps, epsilon, delta)
    asked = sorted(set(caps or CAPS))
    measured = sorted(set(asked) & set(pilot.example_cosine) & set(pilot.user_cosine))
    if pilot.records:
        measured = [c for c in measured if all(c in r["mean_norm"] for r in pilot.records)]
    if not measured:
        raise ConfigError("caps", asked, "none was measured by the pilot")
    # ELS caps beyond the pilot's rows: its examples stand for the unmeasured ones (records needed);
    # a ULS cap needs the mean over that many examples, so only measured ones
    caps_of = {"els": asked if pilot.records else measured, "uls": measured}
    B, N, T = float(examples_per_step), int(n.size), int(steps)
    extra, factor = banded(bands, coefficients, T)
    rho = 1.0 - min(1.0, max(0.0, pilot.within_user_share if pilot.within_user_share is not None else 1.0))
    everyone = np.arange(len(pilot.records))
    ex_cos = float(np.mean(np.concatenate([r["cos"] for r in pilot.records]))) if pilot.records else \
        pilot.example_cosine[min(pilot.example_cosine)]

    calibrated = {}
    for mode in ("els", "uls"):
        for cap in caps_of[mode]:
            kept = float(np.minimum(n, cap).sum())
            q = B * bands / kept          # within one of the b groups
            if q <= 1:
                sigma, eps = calibrate(mode, epsilon, delta, q, T, cap if mode == "els" else None, rel_tol=REL_TOL,
                                       **extra)
                n_eff = effective_examples(reached(mode, n, cap, q / bands, T), rho)   # the resamples share it
                calibrated[mode, cap] = (q, float(sigma), float(eps), n_eff)

    def options(users: np.ndarray, cosine: float) -> dict[str, list[Option]]:
        out: dict[str, list[Option]] = {"els": [], "uls": []}
        for (mode, cap), (q, sigma, eps, n_eff) in calibrated.items():
            records = B if mode == "els" else q * N / bands
            s_data = data_snr(n_eff, cosine)
            rec = _records(pilot, mode, cap, users)
            measured = pilot.example_cosine if mode == "els" else pilot.user_cosine
            cap_cosine = measured[min(measured, key=lambda m: (abs(m - cap), -m))]   # the nearest measured cap's
            if rec is None:
                clips = [(1.0, cap_cosine, 1.0, 1.0)]
            else:
                norms, cos = rec
                clips = []
                for c in sorted(set(float(np.quantile(norms, p)) for p in CLIP_QUANTILES)):
                    if c > 0:
                        m1, m2, frac = _moments(norms, cos, c)
                        clips.append((c, m1, m2, frac))
            for clip, m1, m2, frac in clips:
                s = step_snr(m1, m2, records, sigma * factor, pilot.dim, clip)
                score = 1.0 / (1.0 / max(T * s, 1e-300) + (1.0 / s_data if s_data > 0 else math.inf))
                out[mode].append(Option(mode, int(cap), q, sigma, eps, records, B / records, float(cap_cosine),
                                        score, q * T / bands, clip, s, s_data, frac))
        return out

    full = options(everyone, ex_cos)
    els, uls = full["els"], full["uls"]
    if not els or not uls:
        raise ConfigError("examples-per-step", B, f"cannot be spent at any cap in {asked} (q would exceed 1): "
                          "lower it or allow larger caps")
    best_els, best_uls = max(els, key=lambda o: o.snr), max(uls, key=lambda o: o.snr)
    interval = None
    if pilot.records and bootstrap > 0:
        rng = np.random.default_rng(seed)
        margins = []
        for _ in range(bootstrap):
            pick = rng.integers(0, len(pilot.records), len(pilot.records))
            cos = float(np.mean(np.concatenate([pilot.records[i]["cos"] for i in pick])))
            o = options(pick, cos)
            margins.append(_ratio(max(x.snr for x in o["els"]), max(x.snr for x in o["uls"])))
        lo, hi = np.quantile(margins, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
        interval = (float(lo), float(hi))
    return Advice(float(epsilon), float(delta), B, T, N, int(pilot.dim), els, uls, best_els, best_uls, int(bands),
                  interval)


def format_advice(adv: Advice) -> str:
    """The best (C) of every cap of both modes, the chosen ones marked '*', the verdict and its interval;
    a recommendation only on a firm call."""
    lines = [f"users {adv.num_users}; budget {adv.examples_per_step:g} examples/step x {adv.steps} steps; "
             f"epsilon {adv.epsilon:g}, delta {adv.delta:g}; {adv.dim} trainable weights",
             f"  {'mode':4} {'cap':>4} {'q':>9} {'epochs':>7} {'sigma':>8} {'records':>8} {'ex/rec':>6} "
             f"{'cosine':>7} {'C':>9} {'clipped':>7} {'step SNR':>9} {'data SNR':>9} {'score':>9}"]
    for best, rows in ((adv.best_els, adv.els), (adv.best_uls, adv.uls)):
        by_cap: dict[int, Option] = {}
        for o in rows:
            if o.cap not in by_cap or o.snr > by_cap[o.cap].snr:
                by_cap[o.cap] = o
        for o in by_cap.values():
            lines.append(f"{'*' if o == best else ' '} {o.mode:4} {o.cap:>4} {o.sampling_rate:>9.4g} "
                         f"{o.epochs:>7.3g} {o.noise_multiplier:>8.4g} {o.expected_records:>8.1f} "
                         f"{o.examples_per_record:>6.2f} {o.cosine:>7.4f} {o.clip_norm:>9.4g} {o.clipped_fraction:>7.2f} "
                         f"{o.step_snr:>9.4g} {o.data_snr:>9.4g} {o.snr:>9.4g}")
    c = adv.components
    lines.append(f"components: sigma_ELS/sigma_ULS {c['sigma_ratio']:.3f}, ULS examples per user m {c['examples_per_user']:.2f}, "
                 f"averaging gain a {c['averaging_gain']:.3f}")
    band = "" if adv.interval is None else f", {LEVEL:.0%} interval over pilot resamples [{adv.interval[0]:.3f}, {adv.interval[1]:.3f}]"
    if adv.same_algorithm:
        why = "both modes' best is cap 1: one algorithm"
    elif adv.close:
        why = f"within {CLOSE:g}x" + (" somewhere in the interval" if adv.interval is not None else "")
    else:
        why = f"beyond {CLOSE:g}x" + (" over the whole interval" if adv.interval is not None else "")
    verdict = "too close to call" if adv.close else adv.winner.upper()
    lines.append(f"predicted: {verdict} (score ELS/ULS = {adv.margin:.3f}{band}; {why})")
    if adv.close:
        lines.append("recommended: none (too close to call: run both modes, or measure a larger pilot)")
        return "\n".join(lines)
    best = adv.best_els if adv.winner == "els" else adv.best_uls
    lines.append(f"recommended: privacy.mode={best.mode} privacy.max-examples-per-user={best.cap} "
                 + (f"privacy.mechanism=bandmf privacy.bands={adv.bands} " if adv.bands > 1 else "") +
                 f"privacy.sampling-rate={best.sampling_rate:.6g} privacy.noise-multiplier={best.noise_multiplier:.6g} "
                 f"privacy.clip-norm={best.clip_norm:.4g} train.rounds={adv.steps} "
                 f"train.server-lr={SERVER_LR:g} (lr not modelled: a starting point, tune it)")
    return "\n".join(lines)
