"""Properties: ε monotone in T, q, k; antitone in σ; tight ELS ≤ group baseline."""
import math

from hypothesis import given, settings, strategies as st

from fl_userdp.accounting import ElsStep, UlsRound, epsilon_for

DELTA = 1e-5
qs = st.sampled_from([0.001, 0.01, 0.05, 0.2])
sigmas = st.sampled_from([0.6, 1.0, 2.0, 4.0])
ks = st.integers(min_value=1, max_value=24)
ts = st.integers(min_value=1, max_value=300)
SETTINGS = settings(max_examples=12, deadline=None, derandomize=True)
SLACK = 1e-9


def eps(event, t):
    return epsilon_for([(event, t)], DELTA)


@SETTINGS
@given(q=qs, sigma=sigmas, k=ks, t=ts)
def test_monotone_in_steps(q, sigma, k, t):
    assert eps(ElsStep(q, sigma, k), t) <= eps(ElsStep(q, sigma, k), t + 37) + SLACK


@SETTINGS
@given(sigma=sigmas, k=ks, t=ts)
def test_monotone_in_rate(sigma, k, t):
    assert eps(ElsStep(0.01, sigma, k), t) <= eps(ElsStep(0.03, sigma, k), t) + SLACK


@SETTINGS
@given(q=qs, sigma=sigmas, k=ks, t=ts)
def test_monotone_in_cap(q, sigma, k, t):
    assert eps(ElsStep(q, sigma, k), t) <= eps(ElsStep(q, sigma, k + 3), t) + SLACK


@SETTINGS
@given(q=qs, k=ks, t=ts)
def test_antitone_in_sigma(q, k, t):
    assert eps(ElsStep(q, 2.0, k), t) <= eps(ElsStep(q, 1.0, k), t) + SLACK
    assert eps(UlsRound(q, 2.0), t) <= eps(UlsRound(q, 1.0), t) + SLACK


@settings(max_examples=8, deadline=None, derandomize=True)
@given(q=qs, sigma=sigmas, k=st.integers(min_value=2, max_value=8), t=ts)
def test_tight_below_group_baseline(q, sigma, k, t):
    runs = [(ElsStep(q, sigma, k), t)]
    tight = epsilon_for(runs, DELTA, "pld")
    loose = epsilon_for(runs, DELTA, "group")
    assert tight <= loose * (1 + 1e-6) or math.isinf(loose)


def test_no_noise_is_infinite_and_no_steps_is_zero():
    assert math.isinf(eps(UlsRound(0.1, 0.0), 10))
    assert math.isinf(eps(ElsStep(0.1, 0.0, 4), 10))
    assert eps(ElsStep(0.1, 1.0, 4), 0) == 0.0


def test_group_baseline_infinite_for_large_k():
    assert math.isinf(epsilon_for([(ElsStep(0.01, 1.0, 64), 1000)], 1e-6, "group"))
