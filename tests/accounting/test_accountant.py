"""The ledger: compose, would-exceed at the boundary, state_dict round trip, calibration."""
import json
import math

import pytest

from fl_userdp.accounting import ElsStep, UlsRound, UserLevelAccountant, calibrate_noise, epsilon_for
from fl_userdp.errors import ConfigError


def test_history_is_per_compose_and_nondecreasing():
    acc = UserLevelAccountant(1e-5)
    ev = ElsStep(0.05, 1.2, 4)
    for _ in range(5):
        acc.compose(ev)
    assert acc.steps == 5 and len(acc.history) == 5
    assert all(a <= b for a, b in zip(acc.history, acc.history[1:]))
    assert acc.epsilon() == pytest.approx(epsilon_for([(ev, 5)], 1e-5), rel=1e-9)


def test_state_dict_round_trip_through_json():
    acc = UserLevelAccountant(1e-6)
    acc.compose(UlsRound(0.1, 1.0), 3)
    acc.compose(UlsRound(0.1, 2.0), 2)
    state = json.loads(json.dumps(acc.state_dict()))
    other = UserLevelAccountant(1e-6)
    other.load_state_dict(state)
    assert other.epsilon() == acc.epsilon() and other.history == acc.history and other.steps == 5


def test_state_dict_refuses_mismatch():
    acc = UserLevelAccountant(1e-6)
    acc.compose(UlsRound(0.1, 1.0))
    with pytest.raises(ConfigError, match="ledger.delta"):
        UserLevelAccountant(1e-5).load_state_dict(acc.state_dict())
    with pytest.raises(ConfigError, match="ledger.version"):
        UserLevelAccountant(1e-6).load_state_dict({"runs": []})


def test_infinite_history_survives_json():
    acc = UserLevelAccountant(1e-6)
    acc.compose(UlsRound(0.1, 0.0))
    other = UserLevelAccountant(1e-6)
    other.load_state_dict(json.loads(json.dumps(acc.state_dict())))
    assert math.isinf(other.history[0])


def test_would_exceed_at_the_boundary():
    ev = UlsRound(0.1, 1.0)
    acc = UserLevelAccountant(1e-5)
    acc.compose(ev, 4)
    nxt = acc.epsilon_after(ev)
    assert not acc.would_exceed(ev, max_epsilon=nxt)
    assert acc.would_exceed(ev, max_epsilon=nxt * (1 - 1e-9))
    assert acc.steps == 4  # a query never changes the ledger


@pytest.mark.parametrize("mode,k,target", [("uls", None, 2.0), ("els", 16, 4.0)])
def test_calibration_never_overshoots_and_is_tight(mode, k, target):
    sigma, eps = calibrate_noise(mode, target, 1e-6, 0.02, 200, k)
    assert eps <= target
    assert epsilon_for([(ElsStep(0.02, sigma, k) if k else UlsRound(0.02, sigma), 200)], 1e-6) <= target
    smaller = sigma * (1 - 3e-3)
    ev = ElsStep(0.02, smaller, k) if k else UlsRound(0.02, smaller)
    assert epsilon_for([(ev, 200)], 1e-6) > target


def test_rdp_refuses_els_and_agrees_roughly_on_uls():
    with pytest.raises(ConfigError, match="accountant"):
        epsilon_for([(ElsStep(0.01, 1.0, 4), 10)], 1e-6, "rdp")
    pld = epsilon_for([(UlsRound(0.01, 1.0), 1000)], 1e-6, "pld")
    rdp = epsilon_for([(UlsRound(0.01, 1.0), 1000)], 1e-6, "rdp")
    assert pld < rdp < 1.5 * pld  # RDP is a looser upper bound
