"""The advisor's model (pure): calibration per cap, the update SNR, the predicted winner and its parts."""
import json
import math

import numpy as np
import pytest

from fl_userdp.study.advisor import Pilot, advise, format_advice, snr
from fl_userdp.cli import main
from fl_userdp.errors import ConfigError


def fake_calibrate(mode, eps, delta, q, steps, k=None, rel_tol=1e-3):
    """σ grows with q·T and, for ELS, with the cap (a stand-in with the accountant's shape)."""
    base = q * math.sqrt(steps) * 40 / eps
    return base * (1 + 0.05 * q * steps * ((k or 1) - 1)) + 0.01, eps


def pilot(gain_power=0.5, dim=10_000):
    caps = (1, 2, 4, 8, 16, 32)
    return Pilot(dim, {c: 0.05 for c in caps}, {c: min(1.0, 0.05 * c ** gain_power) for c in caps})


COUNTS = np.full(1000, 40)


def test_snr_is_the_formula():
    assert snr(0.1, 50, 2.0, 1000) == pytest.approx(0.01 * 2500 / (4000 + 50))
    assert snr(0.1, 100, 2.0, 1000) > snr(0.1, 50, 2.0, 1000)
    assert snr(0.1, 50, 3.0, 1000) < snr(0.1, 50, 2.0, 1000)


def test_cap_one_is_one_algorithm():
    adv = advise(COUNTS, 64, 100, 4.0, 1e-6, pilot(), caps=[1], calibrate=fake_calibrate)
    (e,), (u,) = adv.els, adv.uls
    assert (e.sampling_rate, e.noise_multiplier, e.expected_records, e.snr) == \
        (u.sampling_rate, u.noise_multiplier, u.expected_records, u.snr)
    assert adv.margin == 1.0 and adv.close


def test_noise_bound_limit_is_the_sigma_ratio_against_m_over_a():
    """With dσ² ≫ E the SNR ratio is (m̄ σ_U / (a σ_E))², the arithmetic of DESIGN §3c."""
    p = pilot(dim=10 ** 9)
    adv = advise(COUNTS, 64, 100, 4.0, 1e-6, p, caps=[4], calibrate=fake_calibrate)
    e, u = adv.best_els, adv.best_uls
    c = adv.components
    assert c["examples_per_user"] == pytest.approx(4.0)
    assert c["averaging_gain"] == pytest.approx(2.0)
    expected = (c["examples_per_user"] / (c["averaging_gain"] * c["sigma_ratio"])) ** 2
    assert adv.margin == pytest.approx(expected, rel=1e-4)
    assert c["crossover_sigma_ratio"] == pytest.approx(2.0)


def test_prediction_flips_from_els_to_uls_as_epochs_grow():
    """Same B·T, smaller population -> more epochs -> ELS's σ grows toward k -> ULS wins."""
    big = advise(np.full(100_000, 12), 64, 100, 1.0, 1e-6, pilot(), caps=[1, 4, 16])
    small = advise(np.full(150, 12), 64, 100, 1.0, 1e-6, pilot(), caps=[1, 4, 16])
    assert big.margin >= 1 - 1e-6                        # ELS at least level where q·T ≪ 1
    four = [next(o for o in rows if o.cap == 4) for rows in (big.els, big.uls)]
    assert four[0].noise_multiplier / four[1].noise_multiplier < 1.3
    assert small.winner == "uls" and not small.close and small.best_uls.cap > 1
    assert small.components["sigma_ratio"] > small.components["crossover_sigma_ratio"]


def test_without_averaging_gain_els_never_loses_to_uls_at_the_same_cap():
    """a = 1 (a user's mean points no better than one example): ULS has fewer records at every cap."""
    flat = pilot(gain_power=0.0)
    adv = advise(np.full(300, 40), 64, 100, 1.0, 1e-6, flat, calibrate=fake_calibrate)
    for e, u in zip(adv.els, adv.uls):
        assert e.cap == u.cap
        if e.cap > 1:
            assert u.expected_records < e.expected_records
    assert adv.best_uls.cap == 1


def test_real_accountant_one_case():
    p = pilot()
    adv = advise(np.full(500, 12), 64, 50, 4.0, 1e-6, p, caps=[1, 4])
    assert all(o.epsilon <= 4.0 + 1e-9 for o in adv.els + adv.uls)
    four_e = next(o for o in adv.els if o.cap == 4)
    four_u = next(o for o in adv.uls if o.cap == 4)
    assert four_e.sampling_rate == four_u.sampling_rate == pytest.approx(64 / 2000)
    assert four_e.noise_multiplier > four_u.noise_multiplier      # ELS pays for up to k records per user
    assert "predicted:" in format_advice(adv) and "recommended: privacy.mode=" in format_advice(adv)


def test_bad_inputs_name_the_field():
    with pytest.raises(ConfigError, match="examples-per-step"):
        advise(np.full(10, 2), 1e6, 10, 1.0, 1e-6, pilot(), calibrate=fake_calibrate)
    with pytest.raises(ConfigError, match="caps"):
        advise(COUNTS, 64, 10, 1.0, 1e-6, pilot(), caps=[3], calibrate=fake_calibrate)
    with pytest.raises(ConfigError, match="epsilon"):
        advise(COUNTS, 64, 10, 0.0, 1e-6, pilot(), calibrate=fake_calibrate)
    with pytest.raises(ConfigError, match="pilot"):
        Pilot.from_dict({"dim": 3})
    with pytest.raises(ConfigError, match="pilot"):
        Pilot.from_dict({"dim": 3, "example_cosine": {"1": 0.0}, "user_cosine": {"1": 0.1}})


def test_pilot_round_trips_through_json():
    p = Pilot(17, {1: 0.1, 4: 0.1}, {1: 0.1, 4: 0.2}, 8, 0.5)
    assert Pilot.from_dict(json.loads(json.dumps(p.to_dict()))) == p


def test_cli_with_counts_and_a_saved_pilot(tmp_path, capsys):
    (tmp_path / "counts.json").write_text(json.dumps([40] * 300))
    (tmp_path / "pilot.json").write_text(json.dumps({"pilot": pilot().to_dict()}))
    args = ["advise", "--counts-file", str(tmp_path / "counts.json"), "--pilot", str(tmp_path / "pilot.json"),
            "--examples-per-step", "64", "--steps", "50", "--epsilon", "2", "--delta", "1e-6", "--caps", "1,4,16"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "predicted:" in out and "averaging gain" in out and "OUTSIDE any DP guarantee" in out
    assert main(args + ["--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["guarantee"].startswith("none")
    assert payload["winner"] in ("els", "uls") and payload["components"]["averaging_gain"] > 1
    assert payload["best_uls"]["cap"] in (1, 4, 16)


@pytest.mark.parametrize("extra, needle", [
    (["--counts-file", "COUNTS"], "--pilot"),
    (["--counts-file", "COUNTS", "--pilot", "COUNTS"], "--pilot"),
    (["--counts-file", "COUNTS", "--source", "synthetic", "--pilot", "PILOT"], "--counts-file"),
])
def test_cli_refusals_are_one_line(tmp_path, capsys, extra, needle):
    (tmp_path / "c.json").write_text("[3, 4]")
    (tmp_path / "p.json").write_text(json.dumps({"pilot": pilot().to_dict()}))
    extra = [str(tmp_path / "c.json") if x == "COUNTS" else str(tmp_path / "p.json") if x == "PILOT" else x
             for x in extra]
    assert main(["advise", "--examples-per-step", "2", "--steps", "5", "--epsilon", "1", "--delta", "1e-6",
                 *extra]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0]
