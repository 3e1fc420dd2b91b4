"""The loose baseline for ELS: example-level DP lifted to groups of k examples.

An example-level (ε', δ')-DP guarantee implies (kε', k·e^{(k-1)ε'}·δ')-DP for
groups of k examples, i.e. for one user who holds at most k. This is the bound
the tight mixture-of-Gaussians analysis improves on. For a target user-level δ
we scan ε' upwards from the point where δ'(ε') ≤ δ/k and report k·ε' for the
first ε' on a fine grid that meets k·e^{(k-1)ε'}·δ'(ε') ≤ δ. When no ε' meets
it (common for large k), the bound is infinite: we return math.inf.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from .events import ElsStep, UlsRound
from .pld import (FINEST_INTERVAL, Run, accounted, composed_pld, fitting_interval, is_infinite, pld_deltas,
                  pld_epsilon_for_delta)

SCAN_POINTS = 20001
SCAN_WIDTH = 50.0  # how far above the smallest candidate ε' we look


def group_epsilon(runs: Sequence[Run], delta: float) -> float:
    """User-level ε from example-level accounting plus group privacy."""
    runs = accounted([(e, int(c)) for e, c in runs if int(c) > 0])
    if not runs:
        return 0.0
    if is_infinite(runs):
        return math.inf
    ks = {e.max_examples_per_user for e, _ in runs if isinstance(e, ElsStep)}
    k = max(ks)
    example_runs = [(UlsRound(e.sampling_rate, e.noise_multiplier), c) for e, c in runs]
    interval = fitting_interval(example_runs, FINEST_INTERVAL)  # finer than the bounds allow: coarser
    if interval is None:
        return math.inf
    pld = composed_pld(example_runs, interval)
    if k == 1:
        return float(pld_epsilon_for_delta(pld, delta))
    lowest = float(pld_epsilon_for_delta(pld, delta / k))
    if not math.isfinite(lowest):
        return math.inf
    grid = lowest + np.linspace(0.0, SCAN_WIDTH / (k - 1), SCAN_POINTS)
    deltas = pld_deltas(pld, grid)
    with np.errstate(over="ignore"):
        group_deltas = k * np.exp((k - 1) * grid) * deltas
    ok = np.nonzero(group_deltas <= delta)[0]
    if ok.size == 0:
        return math.inf
    return float(k * grid[ok[0]])
