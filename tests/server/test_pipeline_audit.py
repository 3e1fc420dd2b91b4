"""The pipeline audit: canaries through the real strategy and node code. It must not flag a correct run and
must flag each injected fault (noise σ/4, clipping at 4C, sampling at 2q), in both modes."""
from __future__ import annotations

import json

import pytest

from fl_userdp.cli import main
from fl_userdp.server.audit import PipelineAuditConfig, run_pipeline_audit


@pytest.mark.parametrize("mode", ["uls", "els"])
def test_correct_pipeline_is_not_flagged(mode):
    res = run_pipeline_audit(PipelineAuditConfig(mode=mode))
    assert not res.flagged
    assert res.epsilon_lower_bound <= res.epsilon_reported and res.epsilon_estimate <= res.epsilon_reported
    assert 0.5 < res.snr_ratio < 1.3      # the canaries' signal is what the claimed mechanism gives
    assert 0.45 * res.canaries < res.included < 0.55 * res.canaries
    tests = res.noise_tests                 # the noise itself: as claimed, and the tests could have seen 0.95σ
    assert not tests["flagged"] and abs(tests["scale_ratio"] - 1) < 0.02 and tests["scale_power_95"] > 0.99


@pytest.mark.parametrize("mode", ["uls", "els"])
@pytest.mark.parametrize("fault,kind", [("noise-95", "noise scale"), ("reused-noise", "two coordinates")])
def test_a_5_percent_noise_shortfall_and_a_reused_draw_are_flagged(mode, fault, kind):
    """0.95σ while the ledger is told σ, and one draw added to two coordinates (half the coordinates reusing
    the other half's: their difference is noise-free) hardly move the canaries; the tests of the noise
    itself (the release times E minus the exact sum) flag them."""
    res = run_pipeline_audit(PipelineAuditConfig(mode=mode, fault=fault, seed=1))
    assert res.flagged and any(f.startswith(kind) for f in res.noise_tests["failures"])


@pytest.mark.parametrize("mode", ["uls", "els"])
@pytest.mark.parametrize("fault,min_ratio", [("noise", 2.0), ("clip", 2.0), ("sampling", 1.3)])
def test_each_injected_fault_is_flagged(mode, fault, min_ratio):
    res = run_pipeline_audit(PipelineAuditConfig(mode=mode, fault=fault))
    assert res.flagged and res.epsilon_estimate > res.epsilon_reported
    assert res.snr_ratio_lower > 1 and res.snr_ratio > min_ratio


def test_cli_pipeline_json_and_exit_status(capsys):
    assert main(["audit", "--pipeline", "--mode", "els", "--json", "--canaries", "400", "--dim", "800"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert not data["flagged"] and data["canaries"] == 400 and data["fault"] == "none"
    assert main(["audit", "--pipeline", "--inject-fault", "noise", "--json"]) == 3
    assert json.loads(capsys.readouterr().out)["flagged"]
    assert main(["audit", "--pipeline", "--sampling-rate", "0.9"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--sampling-rate" in err


@pytest.mark.parametrize("mode", ["uls", "els"])
@pytest.mark.parametrize("fault", ["partial-noise", "partial-noise-25", "count-division"])
def test_partial_faults_that_leak_without_bound_are_flagged_by_the_noise_check(mode, fault):
    """Noise withheld from 5 % / 25 % of the coordinates, or a release divided by the realised count, barely
    moves the canaries' statistics but leaks without bound; the check of the released noise catches them."""
    res = run_pipeline_audit(PipelineAuditConfig(mode=mode, fault=fault, seed=3))
    assert res.flagged and res.noise_check["flagged"]


def test_the_noise_check_on_known_releases():
    """Pure: updates with the claimed noise pass (several seeds); a share of noiseless coordinates, or a
    per-round scale E / n_t with n_t ~ Poisson(E), is flagged."""
    import numpy as np

    from fl_userdp.study.audit import check_release_noise

    T, d, std, E = 30, 2000, 3.0, 150.0
    for seed in range(5):
        rng = np.random.default_rng(seed)
        signal = rng.normal(0, 0.2, (T, d)) / E + 0.01          # clipped sums only add variance
        ok = check_release_noise(signal + rng.normal(0, std / E, (T, d)), std, E)
        assert not ok.flagged, ok
        partial = signal + rng.normal(0, std / E, (T, d)) * (rng.random(d) > 0.05)
        assert check_release_noise(partial, std, E).flagged
        n = rng.poisson(E, size=(T, 1))
        realised = (signal * E + rng.normal(0, std, (T, d))) / n
        assert check_release_noise(realised, std, E).flagged
