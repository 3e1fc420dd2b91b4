"""L2 clipping of flat updates (numpy). Torch code in `fl_userdp.local` mirrors it.

A record is clipped to norm C by scaling with min(1, C / ‖x‖). `clip_rows`
clips many records at once and reports which ones were clipped.
"""
from __future__ import annotations

import numpy as np


def clip_factors(norms: np.ndarray, clip_norm: float) -> np.ndarray:
    """min(1, C/‖x‖) for each norm; 1 for zero norms; 0 for a non-finite norm (NaN/Inf: the record is dropped,
    so one user's bad value can change the sum by at most C, never poison it)."""
    norms = np.asarray(norms, dtype=np.float64)  # the floor avoids 0-division; NaN/Inf raise no FP warning
    with np.errstate(over="ignore"):  # C / 1e-300 overflows to inf for C > ~1.8e8; min(1, inf) = 1
        return np.where(np.isfinite(norms), np.minimum(1.0, clip_norm / np.maximum(norms, 1e-300)), 0.0)


def finite(x: np.ndarray) -> np.ndarray:
    """`x` with NaN/Inf replaced by 0 (pair with `clip_factors`, which gives such records the factor 0)."""
    return np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)


def clip_rows(x: np.ndarray, clip_norm: float) -> tuple[np.ndarray, np.ndarray]:
    """Clip each row of `x` (shape (n, d)) to `clip_norm`; return (clipped, was_clipped)."""
    norms = np.linalg.norm(x, axis=1)
    factors = clip_factors(norms, clip_norm)
    return finite(x) * factors[:, None].astype(x.dtype), norms > clip_norm


def clip(x: np.ndarray, clip_norm: float) -> np.ndarray:
    """Clip one flat record to `clip_norm`."""
    return finite(x) * clip_factors(np.linalg.norm(x), clip_norm).astype(x.dtype)
