"""Accounting of banded correlated noise over cyclic groups: ⌈T/b⌉ participations of the round's event.

(a) jax-privacy 2.0's amplified BandMF event as the oracle (stored values from experiments/jaxp_oracle.py,
run in its own environment; a live re-run with `--run-bench` when .jaxp-venv exists), (b) ELS at k = 1
equals ULS, (c) b = 1 is today's accounting, (d) the deterministic variant is the Gaussian mechanism at
sensitivity √participations (× k for ELS).
"""
import json
import math
import subprocess
from pathlib import Path

import pytest
from scipy import optimize, stats

from fl_userdp.accounting import (ElsStep, UlsRound, UserLevelAccountant, calibrate_noise, epsilon_for,
                                  event_from_dict, event_to_dict, make_event)
from fl_userdp.accounting.events import participations
from fl_userdp.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
ORACLE = json.loads((Path(__file__).parent / "bandmf_oracle.json").read_text())


@pytest.mark.parametrize("row", ORACLE["epsilon"], ids=lambda r: f"q{r['q']}-s{r['sigma']}-T{r['T']}-b{r['bands']}")
def test_uls_matches_jax_privacy_amplified_bandmf(row):
    ours = epsilon_for([(make_event("uls", row["q"], row["sigma"], None, row["bands"]), row["T"])], row["delta"])
    assert row["epsilon_event"] == row["epsilon_training"]
    # both are dp_accounting PLD upper bounds; ours stops its discretisation ladder within 0.5 %
    assert row["epsilon_event"] * (1 - 1e-3) <= ours <= row["epsilon_event"] * (1 + 5e-3)


@pytest.mark.bench
def test_oracle_values_are_what_jax_privacy_says_now():
    python = ROOT / ".jaxp-venv" / "bin" / "python"
    if not python.exists():
        pytest.skip("no .jaxp-venv (python experiments/jaxp_oracle.py --setup)")
    out = subprocess.run([str(python), str(ROOT / "experiments" / "jaxp_oracle.py"), "--stdout"],
                         capture_output=True, text=True, check=True, timeout=600)
    live = json.loads(out.stdout[out.stdout.index("{"):])
    for a, b in zip(live["epsilon"], ORACLE["epsilon"]):
        assert a["epsilon_event"] == pytest.approx(b["epsilon_event"], rel=1e-9)


@pytest.mark.parametrize("q,sigma,T,b", [(0.05, 1.0, 100, 4), (0.1, 0.8, 64, 16), (0.02, 1.2, 300, 64)])
def test_els_at_k1_equals_uls(q, sigma, T, b):
    els = epsilon_for([(make_event("els", q, sigma, 1, b), T)], 1e-5)
    uls = epsilon_for([(make_event("uls", q, sigma, None, b), T)], 1e-5)
    assert els == pytest.approx(uls, rel=1e-3)


@pytest.mark.parametrize("mode,k", [("uls", None), ("els", 4)])
def test_one_band_is_today_s_accounting(mode, k):
    assert make_event(mode, 0.03, 1.1, k, 1) == make_event(mode, 0.03, 1.1, k)
    assert event_to_dict(make_event(mode, 0.03, 1.1, k, 1)) == event_to_dict(make_event(mode, 0.03, 1.1, k))
    assert "bands" not in event_to_dict(make_event(mode, 0.03, 1.1, k))
    assert epsilon_for([(make_event(mode, 0.03, 1.1, k, 1), 200)], 1e-5) == \
        epsilon_for([(make_event(mode, 0.03, 1.1, k), 200)], 1e-5)


@pytest.mark.parametrize("mode,k", [("uls", None), ("els", 4)])
def test_banded_runs_count_ceil_t_over_b_participations(mode, k):
    banded, plain = make_event(mode, 0.05, 1.0, k, 8), make_event(mode, 0.05, 1.0, k)
    for T in (1, 8, 9, 40, 41):
        assert epsilon_for([(banded, T)], 1e-5) == epsilon_for([(plain, math.ceil(T / 8))], 1e-5)
    assert participations([(banded, 5), (banded, 5)]) == [(plain, 1), (plain, 1)]  # split: never fewer
    assert event_from_dict(event_to_dict(banded)) == banded and event_to_dict(banded)["bands"] == 8
    ledger = UserLevelAccountant(1e-5)
    eps = [ledger.compose(banded) for _ in range(17)]
    assert eps == [epsilon_for([(plain, math.ceil(t / 8))], 1e-5) for t in range(1, 18)]
    assert ledger.steps == 17  # every release is counted once; only the analysis groups them


def gaussian_epsilon(sensitivity_over_sigma: float, delta: float) -> float:
    """The analytic Gaussian mechanism (Balle & Wang 2018): δ(ε) = Φ(μ/2 − ε/μ) − e^ε Φ(−μ/2 − ε/μ)."""
    mu = sensitivity_over_sigma

    def gap(eps):
        return stats.norm.cdf(mu / 2 - eps / mu) - math.exp(eps) * stats.norm.cdf(-mu / 2 - eps / mu) - delta
    return optimize.brentq(gap, 0.0, 500.0, xtol=1e-12)


@pytest.mark.parametrize("mode,k,sigma,T,b", [("uls", None, 4.0, 64, 16), ("uls", None, 10.0, 1000, 4),
                                              ("els", 3, 12.0, 100, 8)])
def test_deterministic_variant_is_the_gaussian_mechanism(mode, k, sigma, T, b):
    """Every user of the group every b rounds: sensitivity √⌈T/b⌉ × max column norm (1) × k (ELS)."""
    eps = epsilon_for([(make_event(mode, 1.0, sigma, k, b), T)], 1e-5)
    sensitivity = math.sqrt(math.ceil(T / b)) * (k or 1)
    exact = gaussian_epsilon(sensitivity / sigma, 1e-5)
    assert exact <= eps <= exact * (1 + 5e-3)


def test_calibration_knows_the_bands():
    sigma, eps = calibrate_noise("uls", 4.0, 1e-5, 0.05, 64, bands=16)
    assert eps <= 4.0
    assert epsilon_for([(UlsRound(0.05, sigma * (1 - 2e-3), 16), 64)], 1e-5) > 4.0
    assert sigma < calibrate_noise("uls", 4.0, 1e-5, 0.05, 64)[0]  # fewer participations, less noise
    sigma_els, _ = calibrate_noise("els", 4.0, 1e-5, 0.05, 64, 3, bands=16)
    assert epsilon_for([(ElsStep(0.05, sigma_els, 3, 16), 64)], 1e-5) <= 4.0


def test_bad_bands_are_one_line_errors():
    with pytest.raises(ConfigError, match="bands"):
        make_event("uls", 0.1, 1.0, None, 0)
    with pytest.raises(ConfigError, match="bands"):
        UlsRound(0.1, 1.0, 2.5)
