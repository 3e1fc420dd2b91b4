"""Server-side checks on every contribution before it touches the model.

The server knows how many users (ULS) or examples (ELS) it asked each node
for, so a node's summed contribution can be at most that many times C in
norm. A contribution with the wrong shape or dtype, or any NaN/Inf, is
rejected; one above its bound — by any amount — is scaled down to the bound
exactly, so no accepted sum exceeds (requested records) × C. Only a sum more
than `NORM_TOLERANCE` above it (more than float32 summation can explain) is
*counted* as re-clipped. Nothing is applied raw.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NORM_TOLERANCE = 1e-4  # relative excess counted as "reclipped" (below it: float32 rounding, scaled silently)


@dataclass(frozen=True)
class Checked:
    value: np.ndarray | None  # None when rejected
    status: str               # "ok", "reclipped", or the rejection reason


def check_contribution(arrays: list[np.ndarray], shapes: list[tuple[int, ...]], bound: float) -> Checked:
    """Validate a list of arrays against the expected shapes and an l2 bound; return a flat float64 vector."""
    if len(arrays) != len(shapes):
        return Checked(None, f"rejected: {len(arrays)} arrays, expected {len(shapes)}")
    for a, s in zip(arrays, shapes):
        if not isinstance(a, np.ndarray) or a.dtype.kind != "f":
            return Checked(None, f"rejected: dtype {getattr(a, 'dtype', type(a))}, expected float")
        if tuple(a.shape) != tuple(s):
            return Checked(None, f"rejected: shape {tuple(a.shape)}, expected {tuple(s)}")
    flat = np.concatenate([a.astype(np.float64).ravel() for a in arrays]) if arrays else np.zeros(0)
    if not np.all(np.isfinite(flat)):
        return Checked(None, "rejected: non-finite values")
    norm = float(np.linalg.norm(flat))
    if norm <= bound:
        return Checked(flat, "ok")
    scaled = flat * (bound / norm)
    while float(np.linalg.norm(scaled)) > bound:  # float rounding of the product: shave an ulp or two
        scaled *= 1.0 - 2.0 ** -50
    return Checked(scaled, "reclipped" if norm > bound * (1 + NORM_TOLERANCE) else "ok")
