"""Banded matrix-factorization noise: coefficients, closed-form error, the stream, cyclic groups."""
import json
from pathlib import Path

import numpy as np
import pytest

from fl_userdp.mechanism import bandmf as bm
from fl_userdp.mechanism.sampling import (cap_examples, cyclic_groups, group_examples, group_of_round,
                                          group_positions, group_users, poisson_examples, poisson_users)

ORACLE = json.loads((Path(__file__).parent / "accounting" / "bandmf_oracle.json").read_text())


def dense_error(coeffs, T):
    A = np.tril(np.ones((T, T)))
    return float(np.linalg.norm(A @ np.linalg.inv(bm.strategy_matrix(coeffs, T)), "fro") ** 2)


def test_sqrt_coefficients_are_the_series_of_inverse_sqrt_scaled_to_norm_one():
    c = bm.sqrt_coefficients(5)
    raw = np.array([1, 1 / 2, 3 / 8, 5 / 16, 35 / 128])
    np.testing.assert_allclose(c, raw / np.linalg.norm(raw), rtol=1e-15)
    assert bm.max_column_norm(c) == pytest.approx(1.0, abs=1e-15)
    assert bm.sqrt_coefficients(1).tolist() == [1.0]
    # the untruncated series squares to the prefix-sum workload: (Σ c_j x^j)² = 1/(1 − x)
    full = bm.sqrt_coefficients(40) * np.linalg.norm(raw[:1]) / bm.sqrt_coefficients(40)[0]
    np.testing.assert_allclose(np.convolve(full, full)[:40], np.ones(40), rtol=1e-12)


@pytest.mark.parametrize("T,b", [(100, 1), (100, 4), (100, 16), (100, 64), (1000, 16)])
def test_closed_form_prefix_error_equals_the_dense_matrices(b, T):
    c = bm.sqrt_coefficients(b)
    assert bm.prefix_sum_error(c, T) == pytest.approx(dense_error(c, T), rel=1e-9)
    assert bm.error_ratio(c, T) == pytest.approx(np.sqrt(dense_error(c, T) / (T * (T + 1) / 2)), rel=1e-9)


@pytest.mark.parametrize("row", ORACLE["prefix_error"], ids=lambda r: f"b{r['bands']}-T{r['T']}")
def test_prefix_error_and_optimized_coefficients_against_jax_privacy(row):
    b, T = row["bands"], row["T"]
    assert bm.prefix_sum_error(bm.sqrt_coefficients(b), T) / T == pytest.approx(row["mse_sqrt"], rel=1e-9)
    # its optimised coefficients, scored by our closed form, agree with its own score
    assert bm.prefix_sum_error(np.array(row["optimized_coefficients"]), T) / T == \
        pytest.approx(row["mse_optimized"], rel=1e-6)
    ours = bm.optimized_coefficients(b, T)
    assert np.linalg.norm(ours) == pytest.approx(1.0, abs=1e-12)
    mse = bm.prefix_sum_error(ours, T) / T
    assert mse <= row["mse_sqrt"]                     # never worse than where it started
    assert mse <= row["mse_optimized"] * 1.01         # within 1 % of jax-privacy's optimiser (L-BFGS)


def test_optimized_equals_sqrt_where_there_is_nothing_to_optimise():
    assert bm.optimized_coefficients(1, 100).tolist() == [1.0]
    assert bm.coefficients("optimized", 4, 1).tolist() == bm.sqrt_coefficients(4).tolist()
    with pytest.raises(ValueError):
        bm.coefficients("optimized", 4)


def test_stream_is_c_inverse_z_and_b1_returns_z_itself():
    rng = np.random.default_rng(0)
    T, d, c = 30, 7, bm.sqrt_coefficients(4)
    z = rng.standard_normal((T, d))
    stream = bm.NoiseStream(c, d)
    w = np.stack([stream.next(z[t]) for t in range(T)])
    np.testing.assert_allclose(w, np.linalg.solve(bm.strategy_matrix(c, T), z), rtol=1e-12, atol=1e-12)
    one = bm.NoiseStream(bm.sqrt_coefficients(1), d)
    assert all(np.shares_memory(one.next(z[t]), z[t]) for t in range(3))  # no arithmetic on z at all
    assert stream.memory_floats == 5 * d


def test_stream_state_resumes_bit_for_bit():
    rng = np.random.default_rng(1)
    z = rng.standard_normal((40, 11))
    c = bm.optimized_coefficients(6, 40)
    whole = bm.NoiseStream(c, 11)
    expected = [whole.next(z[t]).copy() for t in range(40)]
    for cut in (0, 3, 5, 17):
        first = bm.NoiseStream(c, 11)
        got = [first.next(z[t]).copy() for t in range(cut)]
        state = first.state_dict()
        second = bm.NoiseStream(c, 11)
        second.load_state_dict({k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in state.items()})
        got += [second.next(z[t]).copy() for t in range(cut, 40)]
        assert all(np.array_equal(a, b) for a, b in zip(got, expected)), cut
    with pytest.raises(ValueError, match="other coefficients"):
        bm.NoiseStream(bm.sqrt_coefficients(6), 11).load_state_dict(state)
    with pytest.raises(ValueError, match="shape"):
        bm.NoiseStream(c, 12).load_state_dict(state)


@pytest.mark.parametrize("T,b", [(100, 4), (100, 16), (100, 64), (1000, 4), (1000, 16), (1000, 64)])
def test_measured_prefix_error_matches_the_closed_form(T, b):
    """Σ_t (Σ_{s≤t} w_s)² over T rounds, averaged over d independent coordinates, ≈ ‖A C⁻¹‖²_F."""
    d, c = 3000, bm.sqrt_coefficients(b)
    rng = np.random.default_rng(T + b)
    stream, prefix, total = bm.NoiseStream(c, d), np.zeros(d), np.zeros(d)
    for _ in range(T):
        prefix += stream.next(rng.standard_normal(d))
        total += prefix * prefix
    measured = float(total.mean())
    # the estimate's relative std is about sqrt(2/d) ≈ 2.6 %; 4 sigma
    assert measured == pytest.approx(bm.prefix_sum_error(c, T), rel=0.11)
    indep = T * (T + 1) / 2
    assert measured / indep < 0.8  # and it is clearly below independent noise's


# -- cyclic groups ---------------------------------------------------------------------------------------

def test_cyclic_groups_are_balanced_keyed_and_data_free():
    g = cyclic_groups(np.random.default_rng(3), 103, 8)
    sizes = np.bincount(g, minlength=8)
    assert sizes.max() - sizes.min() <= 1 and sizes.sum() == 103
    assert np.array_equal(g, cyclic_groups(np.random.default_rng(3), 103, 8))
    assert not np.array_equal(g, cyclic_groups(np.random.default_rng(4), 103, 8))
    assert [group_of_round(t, 8) for t in (1, 8, 9, 17)] == [0, 7, 0, 0]
    with pytest.raises(ValueError):
        cyclic_groups(np.random.default_rng(0), 5, 6)


def test_one_group_draws_exactly_today_s_samples():
    counts = np.random.default_rng(0).integers(1, 9, size=50)
    capped = cap_examples(np.random.default_rng(1), counts, 4)
    everyone = np.arange(50)
    assert np.array_equal(group_users(np.random.default_rng(7), everyone, 0.3),
                          poisson_users(np.random.default_rng(7), 50, 0.3))
    a = group_examples(np.random.default_rng(7), capped, group_positions(capped, np.zeros(50, np.int64), 0), 0.3)
    b = poisson_examples(np.random.default_rng(7), capped, 0.3)
    assert all(np.array_equal(getattr(a, f), getattr(b, f)) for f in ("users", "offsets", "example_ids"))


def test_group_draws_stay_in_the_group_and_fixed_takes_everyone():
    counts = np.random.default_rng(0).integers(1, 9, size=60)
    capped = cap_examples(np.random.default_rng(1), counts, 4)
    group = cyclic_groups(np.random.default_rng(2), 60, 4)
    members = np.flatnonzero(group == 2)
    users = group_users(np.random.default_rng(5), members, 0.5)
    assert set(users) <= set(members) and 0 < users.size < members.size
    assert np.array_equal(group_users(None, members, 1.0), members)
    pos = group_positions(capped, group, 2)
    s = group_examples(np.random.default_rng(5), capped, pos, 0.5)
    assert set(s.users) <= set(members) and 0 < s.num_examples < pos.size
    full = group_examples(None, capped, pos, 1.0)
    assert np.array_equal(full.users, members) and full.num_examples == int(np.minimum(counts[members], 4).sum())
