"""Exact sums of clipped records: fixed-point accumulation, so a sum does not depend on how records are grouped.

A float sum's last bits depend on the order and grouping of its terms: the same users summed in nodes of
256 or of 37 give sums that differ in the last bits. Since a seeded run keys its noise by the released sum
(`fl_userdp.mechanism.noise.release_rng`), that difference would make a rerun with other sharding a second,
independently noised release of the same users. (Exact sums are also what secure aggregation needs.)

So every clipped record is put on a grid before it is added: coordinate x becomes trunc(x / u)·u with
u = `grid_unit(C)` = 2^(⌊log2 C⌋ − 30), a power of two between C·2^-31 and C·2^-30. Truncation moves each
coordinate toward zero, so a record's norm never grows (the sensitivity stays C). A grid value is an integer
multiple of u below 2^31·u in magnitude ("units"), and sums of them are exact whatever the order or the
grouping (nodes, chunks, backends), at two levels:

* **a node's sum** (`grid_sum`, `scaled_grid_sum`, the torch twin in `fl_userdp.local.updates`) is formed in
  float64, exact for up to `EXACT_RECORDS` = 2^22 records (magnitude below 2^53·u). The config refuses a
  node that could hold more (`sim.users-per-node` × k under ELS, × 1 under ULS); the numpy functions refuse
  more rows.
* **a round's sum** over nodes (`to_units`, `from_units`: the server's `collect`) is accumulated in int64
  units, exact for up to `ROUND_RECORDS` = 2^32 records; the float64 total is then a function of that exact
  integer only, so it is the same bits on 1 or 1,000 nodes (the strategy refuses a population that could
  put more records into one round). A node sum off the grid (rescaled by the server) keeps its rest in
  float64, added after the units.

The rounding costs at most u ≈ 10^-9·C per coordinate and record — nothing next to the noise (σC per
coordinate) unless C is far above the records' norms *and* the noise is tiny: with C = 10^6 and records of
norm ~1 the grid drops every coordinate below u ≈ 5·10^-4 (2.4 % of the tiny LM's sum; at C = 10^9, all of
it). `grid_loss` measures what a sum lost (‖raw − gridded‖ / ‖raw‖); nodes measure it at a new C and the
server warns once (`GRID_LOSS_WARN`) where diagnostics are published (the figure is computed from users'
data without noise).

Everything here is numpy; `fl_userdp.local.updates` applies the same grid to torch tensors with
`grid_exponent`.
"""
from __future__ import annotations

import math

import numpy as np

FRACTION_BITS = 30
EXACT_RECORDS = 2 ** (52 - FRACTION_BITS)  # records whose grid sum float64 holds exactly (one node's sum)
ROUND_RECORDS = 2 ** (62 - FRACTION_BITS)  # records whose sum int64 units hold exactly (< 2^32 · 2^31 = 2^63)
GRID_LOSS_WARN = 1e-3                      # a sum that lost more than this fraction of its norm is worth a warning
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


def check_exact(rows: int) -> None:
    """Refuse a float64 grid sum of more rows than it holds exactly (`EXACT_RECORDS`)."""
    if rows > EXACT_RECORDS:
        raise ValueError(f"a float64 grid sum holds at most {EXACT_RECORDS} records exactly, got {rows}: sum "
                         "them in parts and add the parts' units (to_units / from_units)")


def grid_sum(records: np.ndarray, clip_norm: float) -> np.ndarray:
    """Σ over axis 0 of the gridded rows of `records` (n ≤ EXACT_RECORDS, d): exact, so independent of order
    and grouping."""
    records = np.asarray(records, np.float64)
    check_exact(records.shape[0] if records.ndim else 1)
    e = grid_exponent(clip_norm)
    return np.ldexp(np.trunc(np.ldexp(records, e)).sum(axis=0), -e)


def scaled_grid_sum(factors: np.ndarray, records: np.ndarray, clip_norm: float,
                    lost: list | None = None) -> np.ndarray:
    """Σ_i grid(factors_i · records_i): the exact sum of the clipped records (rows of `records`, at most
    EXACT_RECORDS, factors from `fl_userdp.mechanism.clipping.clip_factors`), without materialising more than
    one float64 copy. `lost`: when a list, `grid_loss` of this sum is appended to it (one more pass)."""
    records = np.asarray(records, np.float64)
    check_exact(records.shape[0])
    e = grid_exponent(clip_norm)
    scaled = records * np.ldexp(np.asarray(factors, np.float64), e)[:, None]
    raw = scaled.sum(axis=0) if lost is not None else None
    units = np.trunc(scaled, out=scaled).sum(axis=0)
    if lost is not None:
        lost.append(grid_loss(raw, units))
    return np.ldexp(units, -e)


def to_units(total: np.ndarray, clip_norm: float) -> tuple[np.ndarray, np.ndarray]:
    """A (node's) sum as (int64 grid units, float64 rest off the grid): the rest is exactly 0 for a sum on
    the grid (every honest node's); only a sum the server rescaled, or a node that skipped the grid, has one,
    and only such a rest's float additions depend on the grouping. Finite input, below 2^62 units in
    magnitude (the server's bound: records × C)."""
    e = grid_exponent(clip_norm)
    scaled = np.ldexp(np.asarray(total, np.float64), e)
    whole = np.trunc(scaled)
    return whole.astype(np.int64), np.ldexp(scaled - whole, -e)


def from_units(units: np.ndarray, clip_norm: float) -> np.ndarray:
    """float64 values of int64 grid units: a function of the exact integers only (rounded to nearest where a
    round's sum passes 2^53 units), so the same bits whatever order or grouping formed them."""
    return np.ldexp(np.asarray(units, np.int64).astype(np.float64), -grid_exponent(clip_norm))


def grid_loss(raw: np.ndarray, gridded: np.ndarray) -> float:
    """‖raw − gridded‖ / ‖raw‖: the fraction of a sum's norm the grid's truncation dropped (0 for a zero sum)."""
    raw, gridded = np.asarray(raw, np.float64), np.asarray(gridded, np.float64)
    norm = float(np.linalg.norm(raw))
    return float(np.linalg.norm(raw - gridded)) / norm if norm > 0 and np.isfinite(norm) else 0.0


def grid_loss_warning(loss: float, clip_norm: float) -> str:
    """The one-line warning for a measured `grid_loss` above GRID_LOSS_WARN."""
    return (f"the exact-sum grid (unit {grid_unit(clip_norm):.3g}, about C·2^-30 for privacy.clip-norm "
            f"{clip_norm:g}) dropped {100 * loss:.3g} % of a node's clipped sum (measured on the "
            "sampled users' data without noise: a diagnostic outside the guarantee): C is far above the records' "
            "norms; lower privacy.clip-norm (or use adaptive clipping)")


def on_grid(total: np.ndarray, clip_norm: float) -> bool:
    """Whether every coordinate of `total` is a multiple of the grid unit (a sum formed by `grid_sum`)."""
    scaled = np.ldexp(np.asarray(total, np.float64), grid_exponent(clip_norm))
    return bool(np.all(scaled == np.trunc(scaled)))
