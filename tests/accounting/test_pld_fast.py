"""The fast self-composition and epsilon scan give dp_accounting's own numbers (up to float rounding:
the vectorised scan sums in another order, a few ulps on some CPUs)."""
import pytest

from fl_userdp.accounting import ElsStep, UlsRound
from fl_userdp.accounting import pld


@pytest.mark.parametrize("event", [UlsRound(0.1, 1.0), UlsRound(0.01, 0.8), ElsStep(0.05, 1.5, 4)])
@pytest.mark.parametrize("count", [2, 37])
def test_same_pld_and_epsilon_as_dp_accounting(event, count):
    for h in (1e-4, 0.0256):
        ref = pld.step_pld(event, h).self_compose(count)
        ours = pld.composed_pld([(event, count)], h)
        for delta in (1e-6, 1e-5, 0.3):
            assert pld.pld_epsilon_for_delta(ours, delta) == pytest.approx(ref.get_epsilon_for_delta(delta), rel=1e-12)
        assert ours.get_delta_for_epsilon(1.0) == ref.get_delta_for_epsilon(1.0)
