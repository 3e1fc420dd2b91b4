"""Golden values (dp_accounting 0.6.0 PLD at discretisation 1e-4, δ = 1e-6) and a second method as oracle."""
import numpy as np
import pytest
from dp_accounting.pld import privacy_loss_distribution as pld_lib
from dp_accounting.pld import privacy_loss_mechanism as plm

from fl_userdp.accounting import ElsStep, UlsRound, epsilon_for
from fl_userdp.accounting.mixture import FastMixtureGaussianPrivacyLoss

REF_ULS = 2.1245   # q=0.01, σ=1, T=1000
REF_ELS8 = 23.082  # k=8


def within(eps, ref):
    """At most 0.5 % above and never more than 0.1 % below the reference."""
    return ref * (1 - 1e-3) <= eps <= ref * (1 + 5e-3)


def test_uls_golden():
    assert within(epsilon_for([(UlsRound(0.01, 1.0), 1000)], 1e-6), REF_ULS)


def test_els_k1_equals_uls():
    els = epsilon_for([(ElsStep(0.01, 1.0, 1), 1000)], 1e-6)
    uls = epsilon_for([(UlsRound(0.01, 1.0), 1000)], 1e-6)
    assert within(els, REF_ULS)
    assert els == pytest.approx(uls, rel=1e-3)


def test_els_k8_golden():
    assert within(epsilon_for([(ElsStep(0.01, 1.0, 8), 1000)], 1e-6), REF_ELS8)


@pytest.mark.parametrize("k,q,sigma,adj", [
    (3, 0.1, 1.0, plm.AdjacencyType.REMOVE),
    (3, 0.1, 1.0, plm.AdjacencyType.ADD),
    (16, 0.02, 2.0, plm.AdjacencyType.REMOVE),
    (16, 0.02, 2.0, plm.AdjacencyType.ADD),
    (64, 0.01, 3.0, plm.AdjacencyType.ADD),
])
def test_fast_inverse_matches_library(k, q, sigma, adj):
    """Our vectorised inverse privacy loss agrees with dp_accounting's bisection (precision 1e-6)."""
    js, probs = ElsStep(q, sigma, k).sensitivity_distribution()
    ours = FastMixtureGaussianPrivacyLoss(sigma, js, probs, adjacency_type=adj)
    ref = plm.MixtureGaussianPrivacyLoss(sigma, js, probs, adjacency_type=adj)
    bounds = ref.connect_dots_bounds()
    targets = np.linspace(bounds.epsilon_lower, bounds.epsilon_upper, 41)[1:-1]
    x_ours = ours.inverse_privacy_losses(targets)
    x_ref = ref.inverse_privacy_losses(targets)
    # Ours is a root of the privacy loss to float precision ...
    loss_ours = np.array([ref.privacy_loss(x) for x in x_ours])
    np.testing.assert_allclose(loss_ours, targets, rtol=1e-9, atol=1e-9)
    # ... and agrees with the library wherever the library's own answer is a root to its 1e-6 precision
    # (its search interval can miss roots at the ends of the loss range).
    ref_ok = np.abs(np.array([ref.privacy_loss(x) for x in x_ref]) - targets) < 1e-4
    assert ref_ok.mean() > 0.9
    np.testing.assert_allclose(x_ours[ref_ok], x_ref[ref_ok], atol=2.5e-6)


def test_els_pld_matches_library_construction():
    """Same PLD as dp_accounting's own mixture construction (coarse grid, where the library is quick)."""
    event = ElsStep(0.05, 1.5, 6)
    js, probs = event.sensitivity_distribution()
    lib = pld_lib.from_mixture_gaussian_mechanism(1.5, list(js), list(probs), value_discretization_interval=1e-2)
    from fl_userdp.accounting.pld import step_pld
    ours = step_pld(event, 1e-2)
    for delta in (1e-3, 1e-6):
        assert ours.self_compose(50).get_epsilon_for_delta(delta) == pytest.approx(
            lib.self_compose(50).get_epsilon_for_delta(delta), rel=1e-6)


def test_step_pmfs_are_distributions():
    """Each single-step PMF holds at most probability 1 (a guard against numerical blow-ups)."""
    from fl_userdp.accounting.pld import step_pld
    for event in (ElsStep(0.01, 3.0, 64), ElsStep(0.2, 0.8, 4), UlsRound(0.3, 0.7)):
        p = step_pld(event, 4e-4)
        for pmf in (p._pmf_remove, p._pmf_add):
            probs = np.asarray(pmf._probs)
            assert probs.min() >= 0 and probs.sum() + pmf._infinity_mass <= 1 + 1e-6


@pytest.mark.parametrize("event,steps", [
    (ElsStep(0.0001, 1.0, 1), 10000),   # tiny per-step loss: coarse grids fail here
    (ElsStep(0.001, 2.0, 1), 100),
    (ElsStep(0.1, 5.0, 2), 10),
    (ElsStep(0.05, 2.0, 16), 100),
    (ElsStep(0.001, 0.8, 8), 1000),
    (UlsRound(0.2, 0.9), 300),
])
def test_adaptive_discretisation_is_accurate_across_regimes(event, steps):
    """Within −0.1 % / +0.5 % of the PLD at dp_accounting's default interval 1e-4."""
    from fl_userdp.accounting.pld import composed_pld
    ref = composed_pld([(event, steps)], 1e-4).get_epsilon_for_delta(1e-6)
    assert within(epsilon_for([(event, steps)], 1e-6), ref)
