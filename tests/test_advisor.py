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


def recorded_pilot(users=64, rows=64, signal=0.3, dim=17_408, seed=0, user_spread=0.0, caps=(1, 2, 4, 8, 16, 32, 64)):
    """A pilot with records, from real vectors: example g = signal·e₁ (+ a user's own offset) + noise (d' = 64)."""
    rng = np.random.default_rng(seed)
    truth = np.zeros(64); truth[0] = 1.0
    records, ex, us = [], {c: [] for c in caps}, {c: [] for c in caps}
    for u in range(users):
        offset = user_spread * rng.normal(size=64)
        g = signal * truth + offset + rng.normal(size=(rows, 64))
        norms = np.linalg.norm(g, axis=1)
        cos = g @ truth / norms
        rec = {"norm": norms.tolist(), "cos": cos.tolist(), "mean_norm": {}, "mean_cos": {}}
        for c in caps:
            m = g[:c].mean(axis=0)
            rec["mean_norm"][c] = float(np.linalg.norm(m))
            rec["mean_cos"][c] = float(m @ truth / np.linalg.norm(m))
            ex[c] += cos[:c].tolist()
            us[c].append(rec["mean_cos"][c])
        records.append(rec)
    return Pilot(dim, {c: float(np.mean(ex[c])) for c in caps}, {c: float(np.mean(us[c])) for c in caps}, users,
                 1.0 / (1.0 + user_spread ** 2), tuple(records))


def test_cap_one_is_one_algorithm_when_every_user_has_one_example():
    adv = advise(np.ones(1000, int), 64, 100, 4.0, 1e-6, pilot(), caps=[1], calibrate=fake_calibrate)
    (e,), (u,) = adv.els, adv.uls
    assert (e.sampling_rate, e.noise_multiplier, e.expected_records, e.snr) == \
        (u.sampling_rate, u.noise_multiplier, u.expected_records, u.snr)
    assert adv.margin == 1.0 and adv.close and adv.same_algorithm


def test_at_cap_one_uls_reaches_more_data_over_many_epochs():
    """ELS k = 1 keeps one example per user for good; ULS G = 1 draws a fresh one at every visit."""
    adv = advise(np.full(200, 40), 64, 400, 4.0, 1e-6, pilot(), caps=[1], calibrate=fake_calibrate)
    (e,), (u,) = adv.els, adv.uls
    assert e.step_snr == u.step_snr and u.data_snr > 5 * e.data_snr and u.snr > e.snr


# σ at ε = 8, δ = 1e-6, T = 25 for 16 users of 400 examples at B = 32, by fl_userdp.accounting.calibrate_noise
# (rel_tol 1e-2): ELS at (k, q = 32 / 16k), ULS at (G, q = 32 / 16G). ELS pays for the tail of a user's count.
MEASURED = {("els", 16): 6.957, ("els", 64): 7.006, ("uls", 16): 0.8344, ("uls", 64): 0.5549}


def table_calibrate(mode, eps, delta, q, steps, k=None, rel_tol=1e-3, **_):
    return MEASURED[mode, k if mode == "els" else int(round(32 / (16 * q)))], eps


def test_an_els_call_few_users_whose_examples_are_alike():
    """16 users x 400 near-copies, B = 32, T = 25: a user's mean points no better than one of its examples
    (gain ≈ 1), ULS gets at most 2 records a step at G = 16 against ELS's 32: ELS, firmly."""
    p = recorded_pilot(signal=2.0, user_spread=5.0)
    adv = advise(np.full(16, 400), 32, 25, 8.0, 1e-6, p, caps=[16, 64], calibrate=table_calibrate, bootstrap=50)
    assert adv.call == "els" and adv.interval[0] > 1, format_advice(adv)
    text = format_advice(adv)
    assert "recommended: privacy.mode=els" in text and "privacy.clip-norm=" in text and "train.server-lr=" in text


def test_the_same_users_with_diverse_examples_are_a_uls_call():
    """The averaging gain of independent examples (a ≈ √G) outweighs ELS's 16x more records."""
    adv = advise(np.full(16, 400), 32, 25, 8.0, 1e-6, recorded_pilot(), caps=[16, 64], calibrate=table_calibrate,
                 bootstrap=50)
    assert adv.call == "uls", format_advice(adv)


def test_els_caps_beyond_the_pilots_rows_use_its_examples():
    adv = advise(np.full(16, 400), 32, 25, 8.0, 1e-6, recorded_pilot(rows=16, caps=(1, 4, 16)), caps=[16, 64],
                 calibrate=table_calibrate, bootstrap=0)
    assert {o.cap for o in adv.els} == {16, 64} and {o.cap for o in adv.uls} == {16}


def test_a_uls_call_many_users_many_epochs():
    adv = advise(np.full(300, 40), 32, 1600, 1.0, 1e-6, recorded_pilot(), caps=[1, 4, 16], calibrate=fake_calibrate,
                 bootstrap=50)
    assert adv.call == "uls" and adv.interval[1] < 1, format_advice(adv)


def test_the_interval_makes_a_call_too_close():
    """A margin beyond CLOSE from a 4-user pilot: without records it is a firm call, with them the interval
    over resampled pilot users holds 1 and nothing is recommended."""
    small = recorded_pilot(users=4, rows=64, signal=0.05, seed=3)
    args = (np.full(400, 20), 32, 100, 8.0, 1e-6)
    with_records = advise(*args, small, caps=[1, 4, 16], calibrate=fake_calibrate, bootstrap=200)
    bare = advise(*args, Pilot(small.dim, small.example_cosine, small.user_cosine, 4, small.within_user_share),
                  caps=[1, 4, 16], calibrate=fake_calibrate)
    assert with_records.interval[0] <= 1 <= with_records.interval[1]
    assert with_records.close and "recommended: none" in format_advice(with_records)
    assert "recommended: none" not in format_advice(bare) or bare.close


def test_clip_norm_far_above_the_records_costs_signal():
    p = recorded_pilot()
    adv = advise(np.full(300, 40), 32, 100, 8.0, 1e-6, p, caps=[4], calibrate=fake_calibrate, bootstrap=0)
    by_c = sorted(adv.els, key=lambda o: o.clip_norm)
    assert by_c[-1].clipped_fraction == 0 and by_c[-1].step_snr < max(o.step_snr for o in by_c)


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
    assert big.margin >= 0.99 and big.close               # ELS level where q·T ≪ 1 (ULS reaches a little more data)
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
    assert "predicted:" in format_advice(adv) and "recommended: " in format_advice(adv)


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
