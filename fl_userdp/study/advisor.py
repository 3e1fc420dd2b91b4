"""ELS or ULS for one population, privacy target and compute budget: the advisor's model. Pure.

The question: for my users (examples per user n_u), my (ε, δ) and my compute (B expected examples
per step for T steps), does example-level sampling (ELS, cap k) or user-level sampling (ULS, G
examples per sampled user) give the better model? The advisor answers with the quality of one
released update, computed for every candidate cap of each mode:

* **Calibration.** For a cap c (k for ELS, G for ULS) the sampling rate spends the budget exactly,
  q = B / Σ_u min(n_u, c), and σ is calibrated for (ε, δ) over T steps with the accountant that
  reports ε in training (PLD; the mixture-of-Gaussians event for ELS).
* **Records.** Every record is clipped to C (the advisor assumes C below the records' norms, so every
  record has norm C; the studies run it that way). ELS sums E = B example records per step in
  expectation; ULS sums E = q·N user records, each the clipped mean of min(n_u, G) examples.
* **Signal.** A record's expected projection on the mean gradient is C·c, with c its cosine to the
  mean gradient: c_E(k) for a clipped example, c_U(G) for a clipped user mean. These are *measured*
  on the user's own model and data (`Pilot`, from `fl_userdp.local.pilot`); the **averaging gain**
  a = c_U(G) / c_E(k) is how much better a user's mean points than one example.
* **Noise.** The released mean (sum + N(0, σ²C²I), divided by E) has, per unit C², squared error
  d·σ²/E² (d trainable weights) from the Gaussian noise plus about 1/E from sampling (the records'
  spread around their mean and the Poisson count).
* **Score.** update SNR = c² / (d·σ²/E² + 1/E) = c²E² / (dσ² + E). The mode whose best candidate has
  the higher SNR is predicted to win; the margin is the ratio of the two SNRs. Where the Gaussian
  noise dominates (dσ² ≫ E), the ratio is (m̄ · σ_U / (a · σ_E))², m̄ = B / (q_U N) examples per
  sampled user: ULS wins when σ_E / σ_U > m̄ / a, which is the arithmetic of DESIGN §3c.

What it leaves out, and so where it can be wrong: cosines change during training (the pilot measures
them at the starting weights); a small ELS cap throws data away, which the SNR does not charge for
when q·T is many epochs; the server optimizer and learning rate are assumed tuned per mode. A margin
within `CLOSE` of 1 is reported as too close to call.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np

from ..errors import ConfigError
from .planner import banded, check_budget, check_counts

CAPS = (1, 2, 4, 8, 16, 32, 64)
CLOSE = 1.25        # SNR ratios within [1/CLOSE, CLOSE] are "too close to call"
REL_TOL = 1e-2      # σ tolerance of the calibration (σ stays on the feasible side: ε ≤ target)


@dataclass(frozen=True)
class Pilot:
    """Cosines to the mean gradient, measured on a model at its starting weights.

    `example_cosine[k]`: mean cosine of an example's gradient kept under cap k (examples weighted
    equally, as ELS sums them); `user_cosine[G]`: mean cosine of a user's mean gradient over
    min(n_u, G) of its examples (users weighted equally, as ULS sums them). `dim`: trainable weights.
    """
    dim: int
    example_cosine: Mapping[int, float]
    user_cosine: Mapping[int, float]
    users: int = 0                 # users the pilot measured
    within_user_share: float | None = None   # within-user share of the examples' gradient variance

    def gain(self, g: int, k: int = 1) -> float:
        """Averaging gain a = c_U(G) / c_E(k)."""
        return self.user_cosine[g] / self.example_cosine[k]

    def to_dict(self) -> dict:
        return {"dim": self.dim, "example_cosine": {str(k): v for k, v in self.example_cosine.items()},
                "user_cosine": {str(k): v for k, v in self.user_cosine.items()}, "users": self.users,
                "within_user_share": self.within_user_share}

    @classmethod
    def from_dict(cls, d: Mapping, key: str = "pilot") -> "Pilot":
        """A pilot from `to_dict`'s form; a missing or bad field raises ConfigError naming `key`."""
        try:
            ex = {int(k): float(v) for k, v in d["example_cosine"].items()}
            us = {int(k): float(v) for k, v in d["user_cosine"].items()}
            dim = int(d["dim"])
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise ConfigError(key, type(d).__name__, f"must hold dim, example_cosine and user_cosine ({err!r})") from None
        if dim < 1 or not ex or not us or any(not 0 < v <= 1 for v in (*ex.values(), *us.values())):
            raise ConfigError(key, dim, "needs dim >= 1 and cosines in (0, 1] for at least one cap")
        share = d.get("within_user_share")
        return cls(dim, ex, us, int(d.get("users", 0)), None if share is None else float(share))


@dataclass(frozen=True)
class Option:
    mode: str
    cap: int                       # k (ELS) or G (ULS)
    sampling_rate: float
    noise_multiplier: float
    epsilon: float
    expected_records: float        # E: examples (ELS) or users (ULS) per step
    examples_per_record: float     # m̄ = B / E
    cosine: float                  # c of one record
    snr: float                     # c²E² / (dσ² + E)
    epochs: float                  # q·T over the kept examples (ELS) / the users (ULS)
    budget_met: bool


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

    @property
    def margin(self) -> float:
        """SNR of the best ELS option over that of the best ULS option (> 1: ELS predicted better)."""
        return self.best_els.snr / self.best_uls.snr

    @property
    def winner(self) -> str:
        return "els" if self.margin > 1 else "uls"

    @property
    def close(self) -> bool:
        return 1 / CLOSE <= self.margin <= CLOSE

    @property
    def components(self) -> dict[str, float]:
        """σ_E/σ_U, m̄ (ULS examples per sampled user), averaging gain a = c_U(G)/c_E(k)."""
        e, u = self.best_els, self.best_uls
        return {"sigma_ratio": e.noise_multiplier / u.noise_multiplier if u.noise_multiplier else math.inf,
                "examples_per_user": u.examples_per_record, "averaging_gain": u.cosine / e.cosine,
                "crossover_sigma_ratio": u.examples_per_record * e.cosine / u.cosine}

    def to_dict(self) -> dict:
        return {**asdict(self), "winner": self.winner, "margin": self.margin, "close": self.close,
                "components": self.components}


def snr(cosine: float, records: float, sigma: float, dim: int) -> float:
    """Quality of one released mean of `records` clipped records: c²E² / (dσ² + E)."""
    return cosine ** 2 * records ** 2 / (dim * sigma ** 2 + records)


def advise(counts: Sequence[int] | np.ndarray, examples_per_step: float, steps: int, epsilon: float,
           delta: float, pilot: Pilot, caps: Sequence[int] | None = None,
           calibrate: Callable | None = None, bands: int = 1, coefficients: str = "sqrt") -> Advice:
    """Every feasible cap of each mode scored by `snr`; the best of each mode and the predicted winner.

    `bands` > 1: banded correlated noise over b cyclic groups (`fl_userdp.study.planner` docstring): q is
    within a group, σ is calibrated for ⌈T/b⌉ participations and enters the SNR times the strategy's
    prefix-sum noise factor."""
    if calibrate is None:
        from ..accounting import calibrate_noise as calibrate
    n = check_counts(counts)
    check_budget(examples_per_step, steps, epsilon, delta)
    caps = sorted(set(caps or CAPS) & set(pilot.example_cosine) & set(pilot.user_cosine))
    if not caps:
        raise ConfigError("caps", list(caps or CAPS), "none was measured by the pilot")
    B, N = float(examples_per_step), int(n.size)
    extra, factor = banded(bands, coefficients, int(steps))

    def option(mode: str, cap: int) -> Option | None:
        kept = float(np.minimum(n, cap).sum())
        q = B * bands / kept  # within one of the b groups
        if q > 1:
            return None
        sigma, eps = calibrate(mode, epsilon, delta, q, steps, cap if mode == "els" else None, rel_tol=REL_TOL,
                               **extra)
        if mode == "els":
            records, cos = B, pilot.example_cosine[cap]
        else:
            records, cos = q * N / bands, pilot.user_cosine[cap]
        return Option(mode, int(cap), q, float(sigma), float(eps), records, B / records, float(cos),
                      snr(cos, records, sigma * factor, pilot.dim), q * steps / bands, True)

    els = [o for o in (option("els", c) for c in caps) if o is not None]
    uls = [o for o in (option("uls", c) for c in caps) if o is not None]
    if not els or not uls:
        raise ConfigError("examples-per-step", B, f"cannot be spent at any cap in {caps} (q would exceed 1): "
                          "lower it or allow larger caps")
    return Advice(float(epsilon), float(delta), B, int(steps), N, int(pilot.dim), els, uls,
                  max(els, key=lambda o: o.snr), max(uls, key=lambda o: o.snr), int(bands))


def format_advice(adv: Advice) -> str:
    """The candidates of both modes, the recommended ones marked '*', and the verdict."""
    lines = [f"users {adv.num_users}; budget {adv.examples_per_step:g} examples/step x {adv.steps} steps; "
             f"epsilon {adv.epsilon:g}, delta {adv.delta:g}; {adv.dim} trainable weights",
             f"  {'mode':4} {'cap':>4} {'q':>9} {'epochs':>7} {'sigma':>8} {'records':>8} {'ex/rec':>6} "
             f"{'cosine':>7} {'SNR':>9}"]
    for best, rows in ((adv.best_els, adv.els), (adv.best_uls, adv.uls)):
        for o in rows:
            lines.append(f"{'*' if o == best else ' '} {o.mode:4} {o.cap:>4} {o.sampling_rate:>9.4g} "
                         f"{o.epochs:>7.3g} {o.noise_multiplier:>8.4g} {o.expected_records:>8.1f} "
                         f"{o.examples_per_record:>6.2f} {o.cosine:>7.4f} {o.snr:>9.4g}")
    c = adv.components
    verdict = "too close to call" if adv.close else f"{adv.winner.upper()}"
    lines.append(f"components: sigma_ELS/sigma_ULS {c['sigma_ratio']:.3f}, ULS examples per user m {c['examples_per_user']:.2f}, "
                 f"averaging gain a {c['averaging_gain']:.3f} (ULS wins in the noise-bound regime when the sigma ratio "
                 f"exceeds m/a = {c['crossover_sigma_ratio']:.3f})")
    margin = adv.margin if adv.margin >= 1 else 1 / adv.margin
    lines.append(f"predicted: {verdict} (update SNR {margin:.2f}x the other mode's, ELS/ULS = {adv.margin:.3f})")
    best = adv.best_els if adv.winner == "els" else adv.best_uls
    lines.append(f"recommended: privacy.mode={best.mode} privacy.max-examples-per-user={best.cap} "
                 + (f"privacy.mechanism=bandmf privacy.bands={adv.bands} " if adv.bands > 1 else "") +
                 f"privacy.sampling-rate={best.sampling_rate:.6g} privacy.noise-multiplier={best.noise_multiplier:.6g} "
                 f"train.rounds={adv.steps}")
    return "\n".join(lines)
