"""Exact sums of clipped records: fixed-point accumulation, so a sum does not depend on how records are grouped.

A float sum's last bits depend on the order and grouping of its terms: the same users summed in nodes of
256 or of 37 give sums that differ in the last bits. Since a seeded run keys its noise by the released sum
(`fl_userdp.mechanism.noise.release_rng`), that difference would make a rerun with other sharding a second,
independently noised release of the same users. (Exact sums are also what secure aggregation needs.)

So every clipped record is put on a grid before it is added: coordinate x becomes trunc(x / u)·u with
u = `grid_unit(C)` = 2^(⌊log2 C⌋ − 30), a power of two between C·2^-31 and C·2^-30. Truncation moves each
coordinate toward zero, so a record's norm never grows (the sensitivity stays C). A grid value is an integer
multiple of u below 2^31·u in magnitude, and a sum of them is exact in float64 — whatever the order or the
grouping (nodes, chunks, backends) — while its magnitude stays below 2^53·u, i.e. for up to 2^22 ≈ 4.2
million records per coordinate of a round (beyond that sums are still correct to float64, only no longer
bitwise independent of grouping). The rounding costs at most u ≈ 10^-9·C per coordinate and record.

Everything here is numpy; `fl_userdp.local.updates` applies the same grid to torch tensors with
`grid_exponent`.
"""
from __future__ import annotations

import math

import numpy as np

FRACTION_BITS = 30
EXACT_RECORDS = 2 ** (52 - FRACTION_BITS)  # records per round whose grid sum float64 holds exactly
# Records are clipped to C·(1 − 2^-40), not C: a norm computed in float64 is off by ~1e-16 relative, so an
# exact sum of such records is always strictly inside the server's bound (requested records × C) and is never
# rescaled there — a rescaled sum would leave the grid, and its bits would depend on the grouping again.
CLIP_MARGIN = 2.0 ** -40


def record_clip_norm(clip_norm: float) -> float:
    """The norm a node clips each record to: C·(1 − CLIP_MARGIN) (≈ C to 12 digits)."""
    return clip_norm * (1.0 - CLIP_MARGIN)


def grid_exponent(clip_norm: float) -> int:
    """e with grid unit u = 2^-e = 2^(⌊log2 C⌋ − FRACTION_BITS): C/u ∈ [2^30, 2^31)."""
    if not (clip_norm > 0 and math.isfinite(clip_norm)):
        raise ValueError(f"clip norm must be a positive finite number, got {clip_norm!r}")
    _, exp = math.frexp(clip_norm)  # C = m·2^exp, ½ ≤ m < 1
    return FRACTION_BITS - (exp - 1)


def grid_unit(clip_norm: float) -> float:
    """The grid spacing u (a power of two) for records clipped to `clip_norm`."""
    return math.ldexp(1.0, -grid_exponent(clip_norm))


def to_grid(records: np.ndarray, clip_norm: float) -> np.ndarray:
    """Each coordinate truncated toward zero to a multiple of `grid_unit(clip_norm)` (float64)."""
    e = grid_exponent(clip_norm)
    return np.ldexp(np.trunc(np.ldexp(np.asarray(records, np.float64), e)), -e)


def grid_sum(records: np.ndarray, clip_norm: float) -> np.ndarray:
    """Σ over axis 0 of the gridded rows of `records` (n, d): exact, so independent of order and grouping."""
    e = grid_exponent(clip_norm)
    units = np.trunc(np.ldexp(np.asarray(records, np.float64), e))
    return np.ldexp(units.sum(axis=0), -e)


def scaled_grid_sum(factors: np.ndarray, records: np.ndarray, clip_norm: float) -> np.ndarray:
    """Σ_i grid(factors_i · records_i): the exact sum of the clipped records (rows of `records`, factors from
    `fl_userdp.mechanism.clipping.clip_factors`), without materialising more than one float64 copy."""
    e = grid_exponent(clip_norm)
    scaled = np.asarray(records, np.float64) * np.ldexp(np.asarray(factors, np.float64), e)[:, None]
    return np.ldexp(np.trunc(scaled, out=scaled).sum(axis=0), -e)


def on_grid(total: np.ndarray, clip_norm: float) -> bool:
    """Whether every coordinate of `total` is a multiple of the grid unit (a sum formed by `grid_sum`)."""
    scaled = np.ldexp(np.asarray(total, np.float64), grid_exponent(clip_norm))
    return bool(np.all(scaled == np.trunc(scaled)))
