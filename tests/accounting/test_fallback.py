"""The adaptive ladder falls back to the finest rung (1e-4) where it cannot pay, and then gives
dp_accounting's own default answer. Work is counted as the support sizes of the composed PLDs."""
import numpy as np
import pytest
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.pld import privacy_loss_distribution as pld_lib

from fl_userdp.accounting import ElsStep, UlsRound, epsilon_for
from fl_userdp.accounting import pld

DELTA = 1e-6


def library_epsilon(event, steps):
    acc = pld_privacy_accountant.PLDAccountant()  # default discretisation 1e-4
    acc.compose(event.dp_event(), steps)
    return acc.get_epsilon(DELTA)


@pytest.fixture
def work(monkeypatch):
    """Records (interval, composed support size) for every composition `epsilon` does."""
    done = []
    compose = pld.composed_pld

    def counted(runs, interval, **kwargs):
        out = compose(runs, interval, **kwargs)
        size = out._pmf_remove.size + (0 if out._symmetric else out._pmf_add.size)  # noqa: SLF001
        done.append((interval, size))
        return out

    monkeypatch.setattr(pld, "composed_pld", counted)
    pld.step_pld.cache_clear()
    return done


def test_uls_small_rate_skips_the_second_finest_rung(work):
    """q = 0.001, σ = 0.8, T = 5000: the rungs 1.6e-3/4e-4 disagree by 2.5 %, so 4e-4 cannot end the ladder."""
    event = UlsRound(0.001, 0.8)
    eps = epsilon_for([(event, 5000)], DELTA)
    intervals = [h for h, _ in work]
    assert intervals[-1] == pld.FINEST_INTERVAL
    assert 4e-4 not in intervals  # the old ladder ran 1.6e-3, 4e-4, 1e-4
    assert [h for h, _ in pld.last_rungs] == intervals
    finest = work[-1][1]
    assert sum(size for _, size in work) <= 1.15 * finest  # the old ladder: 1.33x the finest rung's support
    assert eps == pytest.approx(library_epsilon(event, 5000), rel=1e-9, abs=0)


def test_start_at_second_finest_rung_goes_straight_to_finest(work):
    """q = 1e-4: per-step losses are so small that the ladder would start at 4e-4 and could only end at 1e-4."""
    event = UlsRound(0.0001, 1.0)
    eps = epsilon_for([(event, 10000)], DELTA)
    assert [h for h, _ in work] == [pld.FINEST_INTERVAL]
    assert eps == pytest.approx(library_epsilon(event, 10000), rel=1e-9, abs=0)


@pytest.mark.parametrize("event,steps", [(UlsRound(0.01, 1.0), 1000), (ElsStep(0.01, 1.0, 8), 1000)])
def test_ladder_still_stops_early_where_it_pays(work, event, steps):
    epsilon_for([(event, steps)], DELTA)
    assert pld.FINEST_INTERVAL not in [h for h, _ in work]
    assert len(work) <= 3


@pytest.mark.parametrize("q,sigma,h", [
    (0.001, 0.8, 1e-4), (0.3, 3.0, 1e-4), (1.0, 3.0, 1e-4),
    (0.001, 3.0, 0.0064), (0.3, 0.8, 0.0064), (1.0, 0.8, 0.0064),
])
def test_vectorised_uls_step_is_the_library_pld(q, sigma, h):
    """Our closed-form inverse on arrays gives dp_accounting's single-step PMFs (sparse ones compared densely)."""
    pld.step_pld.cache_clear()
    ours = pld.step_pld(UlsRound(q, sigma), h)
    ref = pld_lib.from_gaussian_mechanism(sigma, sampling_prob=q, value_discretization_interval=h)
    assert ours._symmetric == ref._symmetric  # noqa: SLF001
    pairs = [(ours._pmf_remove, ref._pmf_remove)]  # noqa: SLF001
    if not ref._symmetric:  # noqa: SLF001
        pairs.append((ours._pmf_add, ref._pmf_add))  # noqa: SLF001
    for a, b in pairs:
        a, b = a.to_dense_pmf(), b.to_dense_pmf()
        assert a._lower_loss == b._lower_loss  # noqa: SLF001
        assert a._infinity_mass == pytest.approx(b._infinity_mass, rel=1e-9, abs=1e-18)  # noqa: SLF001
        np.testing.assert_allclose(a._probs, b._probs, rtol=1e-9, atol=1e-18)  # noqa: SLF001
