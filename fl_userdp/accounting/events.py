"""Privacy events: one frozen description per kind of release.

The accountant never sees a tensor or a Flower message; the server describes
each release as one of these events and the accountant composes them.

Units: sensitivities are in multiples of the clip norm C, so the Gaussian
noise has standard deviation `noise_multiplier` (σ).

* `UlsRound` — user-level sampling: each user is in the cohort independently
  with probability q and contributes one update clipped to C. Adding or
  removing one user is a Poisson-subsampled Gaussian.
* `ElsStep` — example-level sampling with a per-user cap of k examples: each
  kept example is sampled with probability q, each clipped to C. Adding or
  removing one user (up to k examples) changes the sum by J·C in the worst
  case with J ~ Binomial(k, q): the tight pair is N(0, σ²) against the mixture
  Σ_j Binom(j; k, q)·N(j, σ²).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Union

import numpy as np
from scipy import stats
from dp_accounting import dp_event

from ..errors import ConfigError

MODES = ("uls", "els")


MIN_SAMPLING_RATE = 1e-7      # below: a cohort of ~1 needs > 10^7 users, and the PLD's tails underflow
MIN_NOISE_MULTIPLIER = 0.01   # a positive σ below this: ε in the thousands and the PLD's losses overflow


def _check_rate(q: float) -> None:
    if not (isinstance(q, (int, float)) and MIN_SAMPLING_RATE <= q <= 1.0) or math.isnan(q):
        raise ConfigError("sampling-rate", q, f"must be in [{MIN_SAMPLING_RATE:g}, 1]")


def _check_sigma(sigma: float) -> None:
    if not isinstance(sigma, (int, float)) or math.isnan(sigma) or sigma < 0 or math.isinf(sigma):
        raise ConfigError("noise-multiplier", sigma, "must be a finite number >= 0")
    if 0 < sigma < MIN_NOISE_MULTIPLIER:
        raise ConfigError("noise-multiplier", sigma, f"must be 0 (no noise) or >= {MIN_NOISE_MULTIPLIER:g} (below it "
                          "epsilon runs to the thousands and cannot be accounted accurately)")


@dataclass(frozen=True)
class UlsRound:
    """One ULS round: Poisson user sampling at rate q, user updates clipped to C."""

    sampling_rate: float
    noise_multiplier: float

    def __post_init__(self) -> None:
        _check_rate(self.sampling_rate)
        _check_sigma(self.noise_multiplier)

    mode = "uls"

    def dp_event(self) -> dp_event.DpEvent:
        return dp_event.PoissonSampledDpEvent(
            self.sampling_rate, dp_event.GaussianDpEvent(self.noise_multiplier)
        )


@dataclass(frozen=True)
class ElsStep:
    """One ELS step: Poisson example sampling at rate q under a cap of k examples per user."""

    sampling_rate: float
    noise_multiplier: float
    max_examples_per_user: int

    def __post_init__(self) -> None:
        _check_rate(self.sampling_rate)
        _check_sigma(self.noise_multiplier)
        k = self.max_examples_per_user
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ConfigError("max-examples-per-user", k, "must be an integer >= 1")

    mode = "els"

    def sensitivity_distribution(self) -> tuple[np.ndarray, np.ndarray]:
        """Support 0..k and Binomial(k, q) probabilities (zeros dropped)."""
        k = int(self.max_examples_per_user)
        js = np.arange(k + 1, dtype=float)
        probs = stats.binom.pmf(np.arange(k + 1), k, self.sampling_rate)
        keep = probs > 0
        probs = probs[keep] / probs[keep].sum()
        return js[keep], probs

    def dp_event(self) -> dp_event.DpEvent:
        js, probs = self.sensitivity_distribution()
        return dp_event.MixtureOfGaussiansDpEvent(
            self.noise_multiplier, list(js), list(probs)
        )

    def example_level_event(self) -> dp_event.DpEvent:
        """The example-level event (one example added/removed): a subsampled Gaussian."""
        return dp_event.PoissonSampledDpEvent(
            self.sampling_rate, dp_event.GaussianDpEvent(self.noise_multiplier)
        )


Event = Union[UlsRound, ElsStep]


def make_event(
    mode: str,
    sampling_rate: float,
    noise_multiplier: float,
    max_examples_per_user: int | None = None,
) -> Event:
    """Build the event for one release of `mode` ('uls' or 'els')."""
    if mode == "uls":
        return UlsRound(float(sampling_rate), float(noise_multiplier))
    if mode == "els":
        if max_examples_per_user is None:
            raise ConfigError(
                "max-examples-per-user", None, "is required for mode 'els'"
            )
        return ElsStep(float(sampling_rate), float(noise_multiplier), max_examples_per_user)
    raise ConfigError("mode", mode, f"must be one of {list(MODES)}")


def event_to_dict(event: Event) -> dict[str, Any]:
    return {"mode": event.mode, **asdict(event)}


def event_from_dict(d: dict[str, Any]) -> Event:
    return make_event(
        d["mode"], d["sampling_rate"], d["noise_multiplier"], d.get("max_examples_per_user")
    )
