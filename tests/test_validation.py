"""A node's sum is accepted up to exactly (requested records) × C: anything above is scaled to the bound."""
from __future__ import annotations

import numpy as np
import pytest

from fl_userdp.mechanism.validation import NORM_TOLERANCE, check_contribution

SHAPES = [(3, 4), (5,)]


def arrays(norm: float, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    parts = [rng.standard_normal(s) for s in SHAPES]
    scale = norm / np.sqrt(sum(float(np.sum(p * p)) for p in parts))
    return [p * scale for p in parts]


@pytest.mark.parametrize("excess", [1e-9, 1e-6, 1e-3, 0.5, 1.0, 1e6])
def test_any_excess_is_scaled_to_the_exact_bound(excess):
    bound = 7.0
    got = check_contribution(arrays(bound * (1 + excess)), SHAPES, bound)
    norm = float(np.linalg.norm(got.value))
    assert norm <= bound and norm == pytest.approx(bound, rel=1e-12)
    assert got.status == ("reclipped" if excess > NORM_TOLERANCE else "ok")  # counted only beyond float noise
    direction = np.concatenate([a.ravel() for a in arrays(1.0)])
    np.testing.assert_allclose(got.value / norm, direction, rtol=1e-9)


@pytest.mark.parametrize("fraction", [0.0, 0.5, 1 - 1e-9])
def test_within_the_bound_is_untouched(fraction):
    a = arrays(7.0 * fraction) if fraction else [np.zeros(s) for s in SHAPES]
    got = check_contribution(a, SHAPES, 7.0)
    assert got.status == "ok"
    np.testing.assert_array_equal(got.value, np.concatenate([x.ravel() for x in a]))


@pytest.mark.parametrize("bad,reason", [
    ([np.zeros((3, 4))], "arrays"), ([np.zeros((4, 3)), np.zeros(5)], "shape"),
    ([np.zeros((3, 4), np.int64), np.zeros(5)], "dtype"), ([np.full((3, 4), np.nan), np.zeros(5)], "non-finite"),
])
def test_malformed_sums_are_rejected(bad, reason):
    got = check_contribution(bad, SHAPES, 1.0)
    assert got.value is None and reason in got.status
