"""L2 clipping of flat updates (numpy). Torch code in `fl_userdp.local` mirrors it.

A record is clipped to norm C by scaling with min(1, C / ‖x‖). `clip_rows`
clips many records at once and reports which ones were clipped.
"""
from __future__ import annotations

import numpy as np


def clip_factors(norms: np.ndarray, clip_norm: float) -> np.ndarray:
    """min(1, C/‖x‖) for each norm; 1 for zero norms."""
    norms = np.asarray(norms, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return np.minimum(1.0, clip_norm / np.maximum(norms, 1e-300))


def clip_rows(x: np.ndarray, clip_norm: float) -> tuple[np.ndarray, np.ndarray]:
    """Clip each row of `x` (shape (n, d)) to `clip_norm`; return (clipped, was_clipped)."""
    norms = np.linalg.norm(x, axis=1)
    factors = clip_factors(norms, clip_norm)
    return x * factors[:, None].astype(x.dtype), norms > clip_norm


def clip(x: np.ndarray, clip_norm: float) -> np.ndarray:
    """Clip one flat record to `clip_norm`."""
    return x * clip_factors(np.linalg.norm(x), clip_norm).astype(x.dtype)
