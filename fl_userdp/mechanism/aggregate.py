"""Sum clipped records, add Gaussian noise once, divide by the expected count.

This is the single place where a release is formed. The denominator is the
*expected* number of contributions (q·N users for ULS, q·n_k examples for
ELS), never the number that replied: dividing by a data-dependent count would
leak it and is not what the accountant analyses.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError
from .noise import gaussian_noise

MAX_NOISE_STD = 1e100  # σ·C: a noise deviation beyond it makes releases that overflow (inf, then nan weights)


def split_flat(flat: np.ndarray, shapes) -> list[np.ndarray]:
    """A flat vector cut back into arrays of `shapes`, in order (views, no copy)."""
    parts = np.split(flat, np.cumsum([int(np.prod(s)) for s in shapes])[:-1])
    return [p.reshape(s) for p, s in zip(parts, shapes)]


def expected_count(mode: str, sampling_rate: float, num_users: int, capped_total: int | None = None) -> float:
    """q·N for ULS; q·n_k for ELS (n_k = Σ min(n_u, k))."""
    if mode == "uls":
        return sampling_rate * num_users
    if mode == "els":
        if capped_total is None:
            raise ValueError("ELS needs n_k, the number of kept examples")
        return sampling_rate * capped_total
    raise ValueError(f"unknown mode {mode!r}")


@dataclass(frozen=True)
class Release:
    """One noisy mean and how it was formed."""

    update: np.ndarray
    noise_std: float        # σ·C, before division
    expected_count: float


def release(total: np.ndarray, clip_norm: float, noise_multiplier: float, expected: float, rng,
            stream=None) -> Release:
    """(Σ clipped + N(0, σ²C²·I)) / expected count; noise from `rng` (see `noise`: per-release or OS entropy).

    With `stream` (a `bandmf.NoiseStream`), the same draw z is turned into this round's w = (C⁻¹z)_t and the
    noise is σC·w: banded correlated noise. A one-band stream returns z itself, so the release is the same
    bits as without it."""
    if expected <= 0:
        raise ValueError(f"expected count must be > 0, got {expected}")
    std = noise_multiplier * clip_norm
    if not std <= MAX_NOISE_STD:  # also nan
        raise ConfigError("privacy.clip-norm", clip_norm, f"times the noise multiplier {noise_multiplier:g} is the "
                          f"noise's standard deviation, which must be <= {MAX_NOISE_STD:g}")
    flat = np.asarray(total, dtype=np.float64).ravel()
    if stream is None:
        noisy = flat + gaussian_noise(flat.size, std, rng)
    else:
        noisy = flat + std * stream.next(gaussian_noise(flat.size, 1.0, rng))
    return Release(update=(noisy / expected).reshape(np.shape(total)), noise_std=std, expected_count=expected)
