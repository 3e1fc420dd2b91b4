"""The empirical audit: sound on a correct run, flags a run whose noise was secretly cut to σ/4."""
import json
import subprocess
import sys

import pytest

from fl_userdp.study.audit import AuditConfig, epsilon_lower_bound, p_value, run_audit


def test_p_value_grows_with_epsilon_and_chance_gives_no_bound():
    # Under a larger ε more correct guesses are plausible, so the p-value of an observation grows.
    assert p_value(1000, 100, 90, 0.5, 1e-6) < p_value(1000, 100, 90, 2.0, 1e-6)
    assert epsilon_lower_bound(1000, 100, 50, 1e-6, 0.05) == 0.0
    assert epsilon_lower_bound(1000, 100, 100, 1e-6, 0.05) > 2.0


@pytest.mark.parametrize("mode", ["uls", "els"])
def test_correct_run_is_not_flagged(mode):
    res = run_audit(AuditConfig(mode=mode))
    assert res.epsilon_lower_bound <= res.epsilon_reported
    assert not res.flagged


@pytest.mark.parametrize("mode", ["uls", "els"])
def test_noise_cut_to_a_quarter_is_flagged(mode):
    res = run_audit(AuditConfig(mode=mode, noise_scale=0.25))
    assert res.flagged and res.epsilon_lower_bound > res.epsilon_reported


def test_audit_cli_json_and_exit_status():
    out = subprocess.run([sys.executable, "-m", "fl_userdp", "audit", "--json", "--canaries", "400", "--dim", "800"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["epsilon_lower_bound"] <= data["epsilon_reported"] and data["confidence"] == 0.95
    bad = subprocess.run([sys.executable, "-m", "fl_userdp", "audit", "--canaries", "1"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "--canaries" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_noise_tests_on_the_exact_noise_see_a_5_percent_shortfall_and_any_draw_used_twice():
    """The noise itself (T = 30 rounds × d = 2,000): correct draws pass every test; 0.95σ fails the scale test,
    a draw added to two coordinates (half reusing the other half, or one pair) the pair scan, a round's draw
    used again the round scan."""
    import numpy as np

    from fl_userdp.study.audit import noise_tests

    T, d = 30, 2000
    for seed in range(5):
        z = np.random.default_rng(seed).standard_normal((T, d))
        ok = noise_tests(z, exact=True)
        assert not ok.flagged, ok.failures
        assert ok.scale_power_95 > 0.999 and abs(ok.scale_ratio - 1) < 0.02
        short = noise_tests(0.95 * z, exact=True)
        assert short.failures and all(f.startswith("noise scale") for f in short.failures)
        half = z.copy()
        half[:, d // 2:] = z[:, : d // 2]
        assert any(f.startswith("two coordinates") for f in noise_tests(half, exact=True).failures)
        pair = z.copy()
        pair[:, 1234] = -z[:, 77]           # one pair, sign flipped
        assert any(f.startswith("two coordinates") for f in noise_tests(pair, exact=True).failures)
        again = z.copy()
        again[17] = z[3]
        assert any(f.startswith("two rounds") for f in noise_tests(again, exact=True).failures)
        one = z.copy()
        one[9] *= 0.9                       # one round of 30 short of noise: the pooled test hardly moves
        assert any(f.startswith("noise scale of one round") for f in noise_tests(one, exact=True).failures)


def test_noise_tests_on_released_updates_hold_with_a_signal_and_state_their_power():
    """Released form (signal + noise, signal fixed before the noise): a correct release passes whatever its
    signal (it only adds); with a signal well below the noise, 5 % less noise and reused draws are flagged; with
    a large signal the power figures say the tests are blind, and a correct release still passes."""
    import numpy as np

    from fl_userdp.study.audit import noise_tests

    T, d = 20, 1500
    rng = np.random.default_rng(0)
    for level in (0.05, 3.0):
        signal = level * rng.standard_normal((T, d)) + level        # correlated across rounds and coordinates
        z = rng.standard_normal((T, d))
        ok = noise_tests(signal + z, exact=False, bounds=np.full(T, 40.0))
        assert not ok.flagged, ok.failures
        half = z.copy()
        half[:, d // 2:] = z[:, : d // 2]
        reused = noise_tests(signal + half, exact=False)
        if level < 1:
            assert ok.pairs_power_half > 0.99 and any(f.startswith("two coordinates") for f in reused.failures)
            assert noise_tests(signal + 0.95 * z, exact=False).scale_p < 1e-3
        else:
            assert ok.pairs_power < 0.01 and ok.rounds_power < 0.01 and ok.scale_detects < 0.95
