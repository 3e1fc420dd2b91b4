"""Gaussian noise for the one release per round.

Seeded noise comes from `rng_for(seed, "noise", round)`: reproducible, so a
resumed run matches an uninterrupted one bitwise. Secure noise draws its
uniforms from the operating system's entropy (`os.urandom`) and turns them
into Gaussians by Box–Muller: nobody who knows the seed can subtract it, but a
run is then no longer reproducible (resume gives the same ε, not the same
weights). Float64 throughout; the result is cast by the caller.
"""
from __future__ import annotations

import os

import numpy as np


def _os_uniform(n: int) -> np.ndarray:
    bits = np.frombuffer(os.urandom(8 * n), dtype=np.uint64) >> np.uint64(11)
    return (bits.astype(np.float64) + 1.0) / float(1 << 53)  # in (0, 1]


def secure_standard_normal(n: int) -> np.ndarray:
    """n standard normals from OS entropy (Box–Muller)."""
    m = (n + 1) // 2
    u1, u2 = _os_uniform(m), _os_uniform(m)
    r = np.sqrt(-2.0 * np.log(u1))
    z = np.concatenate([r * np.cos(2 * np.pi * u2), r * np.sin(2 * np.pi * u2)])
    return z[:n]


def gaussian_noise(size: int, std: float, rng: np.random.Generator | None, secure: bool = False) -> np.ndarray:
    """`size` i.i.d. N(0, std²) values, seeded from `rng` or from OS entropy."""
    if std < 0:
        raise ValueError(f"noise std must be >= 0, got {std}")
    if secure:
        return std * secure_standard_normal(size)
    if rng is None:
        raise ValueError("a seeded generator is required unless secure=True")
    return std * rng.standard_normal(size)
