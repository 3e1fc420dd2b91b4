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

Banded correlated noise (`bands` = b > 1, fl_userdp.mechanism.bandmf): the same event describes one round's
draw *within the round's cyclic group*, and the run's releases are a b-banded strategy C (max column norm 1)
applied to the round sums plus i.i.d. noise. A user's participations are b rounds apart, and columns of C
that are ≥ b apart have disjoint supports, so the run is the adaptive composition of one such event per
participation: T rounds of a b-banded event count as ⌈T/b⌉ events (`participations`), for ULS (amplified
BandMF, Choquette-Choo et al. 2023) and for ELS (the mixture, as a user's examples share the user's group).
A rate of 1 is the deterministic variant: the Gaussian mechanism at sensitivity 1 (ULS) or k (ELS) per
participation, i.e. √participations·k over the run. With b = 1 an event is exactly today's.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any, Sequence, Union

import numpy as np
from scipy import stats
from dp_accounting import dp_event

from ..errors import ConfigError

MODES = ("uls", "els")


MIN_SAMPLING_RATE = 1e-7      # below: a cohort of ~1 needs > 10^7 users, and the PLD's tails underflow
MIN_NOISE_MULTIPLIER = 0.01   # a positive σ below this: ε in the thousands and the PLD's losses overflow
MIN_DELTA = 1e-12             # below: the PLD's own truncated tail (1e-15 per composition) is no longer small
DELTA_FLOOR_WHY = "below it the accountant's own truncated tail mass, 1e-15 per composition, is no longer small"
MAX_EXAMPLES_PER_USER = 10_000  # k above this: the ELS mixture's components alone outgrow the accountant's bounds
MAX_STEPS = 1_000_000         # releases one accounting call composes (a calibration answers within a minute)


def check_steps(steps: int, key: str = "steps") -> int:
    """`steps` as an integer in [0, MAX_STEPS], or ConfigError naming `key`."""
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or not 0 <= steps <= MAX_STEPS:
        raise ConfigError(key, steps, f"must be an integer in [0, {MAX_STEPS:,}]")
    return int(steps)


def _check_rate(q: float) -> None:
    if not (isinstance(q, (int, float)) and MIN_SAMPLING_RATE <= q <= 1.0) or math.isnan(q):
        raise ConfigError("sampling-rate", q, f"must be in [{MIN_SAMPLING_RATE:g}, 1]")


def _check_bands(bands: int) -> None:
    if isinstance(bands, bool) or not isinstance(bands, (int, np.integer)) or bands < 1:
        raise ConfigError("bands", bands, "must be an integer >= 1")


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
    bands: int = 1          # b > 1: one round of banded noise within a cyclic group (module docstring)

    def __post_init__(self) -> None:
        _check_rate(self.sampling_rate)
        _check_sigma(self.noise_multiplier)
        _check_bands(self.bands)

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
    bands: int = 1          # b > 1: one step of banded noise within a cyclic group (module docstring)

    def __post_init__(self) -> None:
        _check_rate(self.sampling_rate)
        _check_sigma(self.noise_multiplier)
        _check_bands(self.bands)
        k = self.max_examples_per_user
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ConfigError("max-examples-per-user", k, "must be an integer >= 1")
        if k > MAX_EXAMPLES_PER_USER:
            raise ConfigError("max-examples-per-user", k, f"must be <= {MAX_EXAMPLES_PER_USER:,} (the accountant's "
                              "bound on the ELS mixture)")

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
    bands: int = 1,
) -> Event:
    """Build the event for one release of `mode` ('uls' or 'els'); `bands` > 1: banded noise, cyclic groups."""
    if mode == "uls":
        return UlsRound(float(sampling_rate), float(noise_multiplier), bands)
    if mode == "els":
        if max_examples_per_user is None:
            raise ConfigError(
                "max-examples-per-user", None, "is required for mode 'els'"
            )
        return ElsStep(float(sampling_rate), float(noise_multiplier), max_examples_per_user, bands)
    raise ConfigError("mode", mode, f"must be one of {list(MODES)}")


def participations(runs: Sequence[tuple[Event, int]]) -> list[tuple[Event, int]]:
    """The runs an accountant composes: `count` releases of a b-banded event are ⌈count/b⌉ participations of
    the same event at b = 1 (module docstring). Each run is rounded up on its own, so a split history is
    never counted as fewer participations than one run of the same length."""
    return [(replace(e, bands=1), -(-int(c) // e.bands)) if e.bands > 1 else (e, c) for e, c in runs]


def event_to_dict(event: Event) -> dict[str, Any]:
    d = {"mode": event.mode, **asdict(event)}
    if d["bands"] == 1:  # independent noise: the dict it always had
        del d["bands"]
    return d


def event_from_dict(d: dict[str, Any]) -> Event:
    return make_event(
        d["mode"], d["sampling_rate"], d["noise_multiplier"], d.get("max_examples_per_user"), d.get("bands", 1)
    )
