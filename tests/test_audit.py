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
