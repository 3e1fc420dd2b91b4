"""Behaviour the mutation run of the privacy-critical modules found untested (experiments/mutation/run.py).

Each test pins a property that some mutant of fl_userdp/{aggregate,clipping,noise,sampling,validation}.py,
fl_userdp/accounting/events.py or server/strategy.py broke while every other fast test still passed.
"""
from __future__ import annotations

import math
import time

import numpy as np
import pytest
from dp_accounting import dp_event
from scipy import stats

from fl_userdp.mechanism import noise
from fl_userdp.accounting import ElsStep, UlsRound, event_to_dict, make_event
from fl_userdp.mechanism.aggregate import expected_count, release
from fl_userdp.mechanism.clipping import clip, clip_factors, clip_rows, finite
from fl_userdp.mechanism.adaptive_clip import unclipped_fraction
from fl_userdp.config import parse_config, to_flat
from fl_userdp.errors import ConfigError
from fl_userdp.mechanism.noise import SecureGenerator, gaussian_noise, release_key, release_rng, secure_standard_normal
from fl_userdp.mechanism.sampling import cap_examples, poisson_examples, poisson_users
from fl_userdp.mechanism.validation import NORM_TOLERANCE, check_contribution
from fl_userdp.server.strategy import RESUMABLE_KEYS, NodeFailure, NodeReply, UserDPStrategy, check_identity, identity, with_clip_norm


# -- aggregate ----------------------------------------------------------------------------------
@pytest.mark.parametrize("expected", [0.0, -1.0])
def test_release_refuses_a_non_positive_expected_count(expected):
    with pytest.raises(ValueError, match=r"^expected count must be > 0, got "):
        release(np.ones(3), 1.0, 1.0, expected, np.random.default_rng(0))


def test_expected_count_refuses_els_without_n_k_and_an_unknown_mode():
    assert expected_count("els", 0.25, 10, 40) == 10.0 and expected_count("uls", 0.25, 10) == 2.5
    with pytest.raises(ValueError, match=r"^ELS needs n_k, the number of kept examples$"):
        expected_count("els", 0.25, 10)
    with pytest.raises(ValueError, match=r"^unknown mode 'dp'$"):
        expected_count("dp", 0.25, 10)


def test_release_keeps_the_shape_and_reports_how_it_was_formed():
    total = np.arange(12, dtype=np.float32).reshape(3, 4)
    rel = release(total, 0.5, 2.0, 10.0, np.random.default_rng(7))
    assert rel.update.shape == (3, 4)
    assert rel.noise_std == 1.0 and rel.expected_count == 10.0  # σC before division, and the denominator
    want = (total.astype(np.float64) + np.random.default_rng(7).standard_normal(12).reshape(3, 4)) / 10.0
    np.testing.assert_allclose(rel.update, want, rtol=1e-15)


# -- clipping -----------------------------------------------------------------------------------
def test_records_within_the_bound_are_untouched():
    """min(1, C/‖x‖): a record shorter than C (also below norm 1) keeps its length."""
    np.testing.assert_array_equal(clip_factors(np.array([0.0, 0.3, 0.5]), 0.5), [1.0, 1.0, 1.0])
    assert clip_factors(np.array([2.0]), 0.5)[0] == 0.25
    x = np.array([0.3, 0.0, 0.0], np.float32)
    np.testing.assert_array_equal(clip(x, 0.5), x)


def test_a_record_with_nan_or_inf_is_dropped_not_clipped():
    """Factor 0 for a non-finite norm; `finite` zeroes NaN/Inf so 0 × record is 0 (no NaN reaches the sum)."""
    np.testing.assert_array_equal(clip_factors(np.array([np.nan, np.inf]), 0.5), [0.0, 0.0])
    for bad in (np.nan, np.inf, -np.inf):
        np.testing.assert_array_equal(clip(np.array([bad, 100.0, -100.0]), 0.5), np.zeros(3))
    np.testing.assert_array_equal(finite(np.array([np.nan, np.inf, -np.inf, 2.5])), [0.0, 0.0, 0.0, 2.5])


def test_clip_keeps_the_record_dtype():
    x = np.array([3.0, 4.0], np.float32)
    got = clip(x, 1.0)
    assert got.dtype == np.float32 and float(np.linalg.norm(got)) == pytest.approx(1.0, rel=1e-6)


def test_clip_rows_clips_each_row_and_flags_only_rows_above_the_bound():
    x = np.array([[0.0, 0.0], [0.3, 0.0], [0.5, 0.0], [3.0, 4.0], [np.nan, 9.0]], np.float32)  # norms 0, 0.3, C, 5
    got, was_clipped = clip_rows(x, 0.5)
    assert got.dtype == np.float32 and got.shape == x.shape
    np.testing.assert_array_equal(got[:3], x[:3])
    np.testing.assert_allclose(got[3], [0.3, 0.4], rtol=1e-6)
    np.testing.assert_array_equal(got[4], [0.0, 0.0])  # non-finite: dropped
    np.testing.assert_array_equal(was_clipped[:4], [False, False, False, True])  # norm == C is not clipped


# -- noise --------------------------------------------------------------------------------------
@pytest.fixture
def urandom_bytes(monkeypatch):
    """Make the OS entropy source return one repeated byte (the extremes of the 53-bit uniforms)."""
    def use(byte: int):
        monkeypatch.setattr(noise.os, "urandom", lambda n: bytes([byte]) * n)
    return use


def test_secure_uniforms_stay_in_the_unit_interval_at_both_extremes(urandom_bytes):
    urandom_bytes(0x00)
    assert SecureGenerator().random(4).tolist() == [0.0] * 4
    urandom_bytes(0xFF)
    top = SecureGenerator().random(4)
    assert np.all(top < 1.0) and top[0] == 1.0 - 2.0 ** -53  # [0, 1), like numpy's Generator.random


def test_secure_normals_are_finite_at_both_extremes(urandom_bytes):
    """Box–Muller takes log of uniforms in (0, 1]: never log(0); one draw's tail ends at sqrt(-2 ln 2^-53),
    and a secure normal is 4 such draws halved (2 × the tail when every byte is 0)."""
    urandom_bytes(0x00)
    z = secure_standard_normal(3)
    assert z.shape == (3,) and np.all(np.isfinite(z))
    assert z[0] == pytest.approx(2 * math.sqrt(-2 * math.log(2.0 ** -53)), rel=1e-12)
    urandom_bytes(0xFF)
    np.testing.assert_array_equal(secure_standard_normal(3), np.zeros(3))  # u = 1: radius 0


def test_secure_binomial_never_succeeds_at_rate_zero_and_always_at_rate_one(urandom_bytes):
    urandom_bytes(0x00)  # every uniform is exactly 0
    assert SecureGenerator().binomial(5, 0.0, 3).tolist() == [0, 0, 0]
    urandom_bytes(0xFF)  # every uniform is the largest below 1
    assert SecureGenerator().binomial(5, 1.0, 3).tolist() == [5, 5, 5]


def test_gaussian_noise_refuses_a_negative_std_and_a_missing_generator():
    with pytest.raises(ValueError, match=r"^noise std must be >= 0, got -1\.0$"):
        gaussian_noise(3, -1.0, np.random.default_rng(0))
    with pytest.raises(ValueError,
                       match=r"^a generator is required \(seeded, or SecureGenerator for OS entropy\)$"):
        gaussian_noise(3, 1.0, None)


def test_release_noise_depends_on_each_input_and_on_the_values_of_the_sum():
    """Two releases share noise only when they are the same release: mode, round, σC, expected count and
    the clipped sum's values (in whatever float type the caller holds them) all enter the generator."""
    total = np.array([0.5, -1.25, 3.0])
    base = dict(seed=3, mode="uls", rnd=2, noise_std=0.5, expected=10.0, total=total)

    def draw(**change):
        return release_rng(**{**base, **change}).standard_normal(8)

    ref = draw()
    np.testing.assert_array_equal(draw(), ref)
    np.testing.assert_array_equal(draw(total=total.astype(np.float32)), ref)
    np.testing.assert_array_equal(draw(total=total.tolist()), ref)
    for change in (dict(mode="els"), dict(rnd=3), dict(noise_std=0.6), dict(expected=11.0), dict(seed=4),
                   dict(total=np.nextafter(total, np.inf))):
        assert not np.array_equal(draw(**change), ref), change


# -- sampling -----------------------------------------------------------------------------------
def test_a_record_is_sampled_only_when_its_uniform_is_below_the_rate(urandom_bytes):
    """Inclusion probability exactly q for uniforms on the 53-bit grid of [0, 1): u < q, never u = q."""
    urandom_bytes(0xFF)  # every uniform is 1 - 2^-53
    q = 1.0 - 2.0 ** -53
    assert poisson_users(SecureGenerator(), 5, q).size == 0
    assert poisson_users(SecureGenerator(), 5, 1.0).size == 5
    capped = cap_examples(np.random.default_rng(0), np.array([2, 3]), 4)
    assert poisson_examples(SecureGenerator(), capped, q).num_examples == 0
    assert poisson_examples(SecureGenerator(), capped, 1.0).num_examples == 5


def test_example_sample_lists_each_sampled_user_once_with_all_their_sampled_examples():
    counts = np.array([5, 0, 3, 8, 1, 6, 2])
    capped = cap_examples(np.random.default_rng(1), counts, 4)
    s = poisson_examples(np.random.default_rng(2), capped, 0.6)
    hit = np.flatnonzero(np.random.default_rng(2).random(capped.total) < 0.6)  # the same draws
    owners = capped.owners[hit]
    np.testing.assert_array_equal(s.users, np.unique(owners))  # sorted, no user twice
    assert s.num_examples == hit.size and s.offsets[0] == 0
    for i, u in enumerate(s.users):
        np.testing.assert_array_equal(s.of_index(i), capped.example_ids[hit[owners == u]])
    assert np.any(np.bincount(owners) > 1)  # the case that matters: users with several sampled examples


# -- validation ---------------------------------------------------------------------------------
def test_rejections_say_what_was_wrong():
    shapes = [(2,)]
    assert check_contribution([np.zeros(2, np.int64)], shapes, 1.0).status == \
        "rejected: dtype int64, expected float"
    assert check_contribution([[0.0, 0.0]], shapes, 1.0).status == "rejected: dtype <class 'list'>, expected float"
    assert check_contribution([np.array([np.inf, 0.0])], shapes, 1.0).status == "rejected: non-finite values"


def test_only_a_sum_more_than_the_tolerance_above_the_bound_counts_as_reclipped():
    at = 1.0 + NORM_TOLERANCE  # exactly the tolerance above the bound 1: scaled, but not counted
    assert check_contribution([np.array([at, 0.0])], [(2,)], 1.0).status == "ok"
    assert check_contribution([np.array([np.nextafter(at, 2.0), 0.0])], [(2,)], 1.0).status == "reclipped"


def test_a_model_without_trainables_gets_an_empty_sum():
    got = check_contribution([], [], 1.0)
    assert got.status == "ok" and got.value.shape == (0,)


def test_a_sum_scaled_onto_the_bound_exactly_is_not_shaved_below_it():
    got = check_contribution([np.array([2.0, 0.0])], [(2,)], 1.0)
    assert got.status == "reclipped"
    np.testing.assert_array_equal(got.value, [1.0, 0.0])  # "scaled down to the bound exactly"


# -- accounting events ---------------------------------------------------------------------------
@pytest.mark.parametrize("q", [0.0, -0.1, 1.5, math.nan, "0.1", None, 1e-300, 9.9e-8])
def test_sampling_rate_must_be_in_the_unit_interval(q):
    for make in (lambda: UlsRound(q, 1.0), lambda: ElsStep(q, 1.0, 2)):
        with pytest.raises(ConfigError) as err:
            make()
        assert err.value.key == "sampling-rate" and err.value.requirement == "must be in [1e-07, 1]"
        assert err.value.value is q or (q != q and err.value.value != err.value.value)
    assert UlsRound(1.0, 1.0).sampling_rate == 1.0 and ElsStep(1, 1.0, 2).sampling_rate == 1
    assert UlsRound(1e-7, 1.0).sampling_rate == 1e-7


@pytest.mark.parametrize("sigma", [1e-300, 0.0099, math.inf])
def test_degenerate_noise_multipliers_are_refused_naming_the_key(sigma):
    for make in (lambda: UlsRound(0.1, sigma), lambda: ElsStep(0.1, sigma, 2)):
        with pytest.raises(ConfigError) as err:
            make()
        assert err.value.key == "noise-multiplier"
    assert UlsRound(0.1, 0.0).noise_multiplier == 0.0 and UlsRound(0.1, 0.01).noise_multiplier == 0.01


def test_a_tiny_sampling_rate_is_refused_quickly_not_calibrated_forever():
    import time

    from fl_userdp.accounting import calibrate_noise
    from fl_userdp.config import parse_config

    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match="sampling-rate"):
        calibrate_noise("uls", 1.0, 1e-6, 1e-300, 10)
    with pytest.raises(ConfigError, match="privacy.sampling-rate"):
        parse_config({"privacy.sampling-rate": 1e-300})
    with pytest.raises(ConfigError, match="privacy.noise-multiplier"):
        parse_config({"privacy.noise-multiplier": 1e-300})
    assert time.perf_counter() - t0 < 5


@pytest.mark.parametrize("sigma", [-0.5, math.nan, "1", None])
def test_noise_multiplier_must_be_a_number_of_at_least_zero(sigma):
    for make in (lambda: UlsRound(0.1, sigma), lambda: ElsStep(0.1, sigma, 2)):
        with pytest.raises(ConfigError) as err:
            make()
        assert err.value.key == "noise-multiplier" and err.value.requirement == "must be a finite number >= 0"
        assert err.value.value is sigma or (sigma != sigma and err.value.value != err.value.value)
    assert UlsRound(0.1, 0).noise_multiplier == 0 and ElsStep(0.1, 0.0, 2).noise_multiplier == 0.0


@pytest.mark.parametrize("k", [0, -1, 2.5, True])
def test_els_cap_must_be_an_integer_of_at_least_one(k):
    with pytest.raises(ConfigError) as err:
        ElsStep(0.1, 1.0, k)
    assert (err.value.key, err.value.value, err.value.requirement) == ("max-examples-per-user", k,
                                                                       "must be an integer >= 1")
    assert ElsStep(0.1, 1.0, np.int64(3)).max_examples_per_user == 3


def test_make_event_names_what_is_missing_or_unknown():
    with pytest.raises(ConfigError) as k:
        make_event("els", 0.1, 1.0)
    assert (k.value.key, k.value.value, k.value.requirement) == ("max-examples-per-user", None,
                                                                 "is required for mode 'els'")
    with pytest.raises(ConfigError) as mode:
        make_event("dp", 0.1, 1.0)
    assert (mode.value.key, mode.value.value, mode.value.requirement) == ("mode", "dp",
                                                                          "must be one of ['uls', 'els']")


def test_els_event_is_the_binomial_mixture_of_gaussians():
    step = ElsStep(0.3, 1.7, 4)
    ev = step.dp_event()
    assert isinstance(ev, dp_event.MixtureOfGaussiansDpEvent)
    assert ev.standard_deviation == 1.7
    assert list(ev.sensitivities) == [0.0, 1.0, 2.0, 3.0, 4.0]
    np.testing.assert_allclose(ev.sampling_probs, stats.binom.pmf(np.arange(5), 4, 0.3), rtol=1e-12)


def test_example_level_event_is_the_uls_event_of_one_example():
    step = ElsStep(0.3, 1.7, 4)
    assert step.example_level_event() == UlsRound(0.3, 1.7).dp_event() == \
        dp_event.PoissonSampledDpEvent(0.3, dp_event.GaussianDpEvent(1.7))


# -- server/strategy.py --------------------------------------------------------------------------------
SHAPES = [(3, 4), (5,)]


def strategy_cfg(**flat):
    base = {"privacy.noise-multiplier": 1.0, "train.server-optimizer": "sgd", "train.server-lr": 1.0,
            "sim.users-per-node": 10, "privacy.sampling-rate": 0.3, "privacy.clip-norm": 0.5, "train.rounds": 5}
    return parse_config({**base, **flat})


def make_strategy(cfg, users=60, sigma=None):
    sigma = cfg.privacy.noise_multiplier if sigma is None else sigma
    return UserDPStrategy(cfg, np.full(users, 3), [np.zeros(s, np.float32) for s in SHAPES], sigma)


def replies_with(value=0.01, loss=None):
    """Every node returns the sum of its records, each record the constant vector `value` (norm < C)."""
    def transport(requests, weights):
        return {n: NodeReply([np.full(s, value * r.count) for s in SHAPES], r.users.size, r.count, 1,
                             None if loss is None else loss * r.count)
                for n, r in requests.items()}
    return transport


def test_weights_go_to_the_nodes_with_the_trainables_shapes_and_dtypes():
    s = UserDPStrategy(strategy_cfg(), np.full(20, 3), [np.zeros((3, 4), np.float32), np.zeros(5, np.float16)], 1.0)
    s.run_round(replies_with())
    got = s.weights_list()
    assert [a.shape for a in got] == [(3, 4), (5,)] and [a.dtype for a in got] == [np.float32, np.float16]
    np.testing.assert_allclose(np.concatenate([a.ravel() for a in got]), s.weights, rtol=1e-3)


@pytest.mark.parametrize("every,evaluated", [(2, [2, 4, 5]), (1, [1, 2, 3, 4, 5]), (0, [])])
def test_evaluation_runs_every_eval_every_rounds_and_at_the_last_round(every, evaluated):
    s = make_strategy(strategy_cfg(**{"train.eval-every": every}))
    seen = []

    def evaluate(weights):
        np.testing.assert_allclose(np.concatenate([w.ravel() for w in weights]), s.weights, rtol=1e-6)
        seen.append(s.round)
        return 10.0 + s.round

    records = [s.run_round(replies_with(), evaluate) for _ in range(5)]
    assert seen == evaluated
    assert [r["eval_loss"] for r in records] == [10.0 + r if r in evaluated else None for r in range(1, 6)]


def test_round_record_reports_losses_counts_and_the_sample():
    for mode in ("uls", "els"):
        s = make_strategy(strategy_cfg(**{"privacy.mode": mode}))
        requests = s.sample(1)
        rec = s.run_round(replies_with(loss=0.25))
        assert rec["train_loss"] == pytest.approx(0.25)  # Σ loss / Σ records
        assert rec["users_sampled"] == rec["users_replied"] == sum(r.users.size for r in requests.values())
        assert rec["examples_sampled"] == (sum(r.count for r in requests.values()) if mode == "els" else None)
        assert rec["nodes_requested"] == rec["nodes_replied"] == len(requests)
    assert make_strategy(strategy_cfg()).run_round(replies_with())["train_loss"] is None  # no losses reported


def test_the_journal_logs_the_update_that_is_applied():
    s = make_strategy(strategy_cfg())
    logged = []
    s.journal = lambda entry, update: logged.append((entry, np.array(update, copy=True)))
    s.run_round(replies_with())
    (entry, update), = logged
    assert entry["round"] == 1 and entry["event"] == event_to_dict(s.event)
    assert entry["clip_norm"] == 0.5 and entry["noise_multiplier"] == 1.0 and entry["mode"] == "uls"
    np.testing.assert_array_equal(s.weights, -update)  # SGD, lr 1, from zero


def run_logged(cfg, rounds):
    s = make_strategy(cfg)
    logged = []
    s.journal = lambda entry, update: logged.append((entry, np.array(update, copy=True)))
    for _ in range(rounds):
        s.run_round(replies_with())
    return s, logged


def test_replay_of_the_release_log_rebuilds_the_weights_the_ledger_and_the_round():
    cfg = strategy_cfg(**{"train.server-optimizer": "adam", "train.server-lr": 0.1})
    s, logged = run_logged(cfg, 3)
    r = make_strategy(cfg)
    for entry, update in logged:
        r.replay(entry, update)
    assert r.round == 3 and r.accountant.steps == 3 and r.epsilon() == pytest.approx(s.epsilon())
    np.testing.assert_array_equal(r.weights, s.weights)
    # a release without its update (covered by a checkpoint) is still accounted, but not applied
    q = make_strategy(cfg)
    q.replay(logged[0][0], None)
    assert q.round == 1 and q.accountant.steps == 1 and not np.any(q.weights)


def test_replay_refuses_a_gap_and_another_event():
    cfg = strategy_cfg()
    _, logged = run_logged(cfg, 2)
    r = make_strategy(cfg)
    with pytest.raises(ConfigError) as gap:
        r.replay(*logged[1])
    assert gap.value.key == "--resume" and gap.value.value == 2 and "skips from round 0" in str(gap.value)
    other = make_strategy(strategy_cfg(**{"privacy.noise-multiplier": 2.0}))
    with pytest.raises(ConfigError) as diff:
        other.replay(*logged[0])
    assert diff.value.key == "--resume" and diff.value.value == logged[0][0]["event"]
    assert "logged event differs" in str(diff.value)
    assert other.round == 0 and other.accountant.steps == 0


# -- checkpoint identity and restore --------------------------------------------------------------------
def test_identity_holds_what_changes_the_math_or_the_budget():
    fixed = identity(strategy_cfg())
    assert "privacy.clip-norm" in fixed and "seed" in fixed and "privacy.sampling-rate" in fixed
    for key in ("privacy.noise-multiplier", "privacy.publish-diagnostics", "privacy.target-epsilon", *RESUMABLE_KEYS):
        assert key not in fixed, key
    assert not any(k.startswith("sim.") for k in fixed)
    calibrated = identity(strategy_cfg(**{"privacy.noise-multiplier": None}))
    assert calibrated["privacy.target-epsilon"] == strategy_cfg().privacy.target_epsilon  # the budget


def test_check_identity_names_what_differs():
    cfg = strategy_cfg()
    meta = {"mode": "uls", "identity": identity(cfg), "noise_multiplier": 1.0}
    check_identity(meta, cfg)  # the same run
    with pytest.raises(ConfigError) as mode:
        check_identity({**meta, "mode": "els"}, cfg)
    assert (mode.value.key, mode.value.value) == ("--resume", "els")
    assert "checkpoint is for another mode than 'uls'" in str(mode.value)
    with pytest.raises(ConfigError) as clip_norm:
        check_identity(meta, strategy_cfg(**{"privacy.clip-norm": 0.25}))
    assert (clip_norm.value.key, clip_norm.value.value) == ("privacy.clip-norm", 0.25)
    assert "differs from the checkpoint (0.5); refusing to resume" in str(clip_norm.value)
    with pytest.raises(ConfigError) as extra:  # a key only the checkpoint has
        check_identity({**meta, "identity": {**meta["identity"], "privacy.unknown": 1}}, cfg)
    assert (extra.value.key, extra.value.value) == ("privacy.unknown", None)
    with pytest.raises(ConfigError) as missing:  # a key only this run has
        check_identity({**meta, "identity": {k: v for k, v in meta["identity"].items() if k != "seed"}}, cfg)
    assert (missing.value.key, missing.value.value) == ("seed", cfg.seed)
    with pytest.raises(ConfigError):  # a checkpoint without an identity
        check_identity({"mode": "uls"}, cfg)


def test_resuming_a_fixed_sigma_run_with_a_calibrated_config_asks_for_its_sigma():
    meta = {"mode": "uls", "identity": identity(strategy_cfg()), "noise_multiplier": 1.0}
    with pytest.raises(ConfigError) as auto:
        check_identity(meta, strategy_cfg(**{"privacy.noise-multiplier": None}))
    assert (auto.value.key, auto.value.value) == ("privacy.noise-multiplier", "auto")
    assert "must be the run's fixed σ to resume it: --set privacy.noise-multiplier=1.0" in str(auto.value)
    calibrated = {**meta, "identity": identity(strategy_cfg(**{"privacy.noise-multiplier": None}))}
    with pytest.raises(ConfigError) as fixed:  # the other way round: the target was the budget
        check_identity(calibrated, strategy_cfg())
    assert fixed.value.key == "privacy.target-epsilon"


RECORD_KEYS = {"round", "mode", "epsilon", "delta", "noise_multiplier", "clip_norm", "expected_count", "eval_loss",
               "train_loss", "users_sampled", "users_replied", "examples_sampled", "examples_processed",
               "nodes_requested", "nodes_replied", "clipped_fraction", "failures", "rejected", "reclipped",
               "wall_time"}


def test_round_record_has_every_documented_field():
    s = make_strategy(strategy_cfg(**{"privacy.mode": "els"}))
    requests = s.sample(1)
    t0 = time.perf_counter()
    rec = s.run_round(replies_with())
    elapsed = time.perf_counter() - t0
    assert set(rec) == RECORD_KEYS
    records = sum(r.count for r in requests.values())
    assert rec["round"] == 1 and rec["mode"] == "els" and rec["delta"] == s.cfg.privacy.delta
    assert rec["noise_multiplier"] == 1.0 and rec["clip_norm"] == 0.5 and rec["expected_count"] == s.expected
    assert rec["examples_processed"] == records
    assert rec["clipped_fraction"] == pytest.approx(len(requests) / records)  # each node reported one clipped
    assert 0 <= rec["wall_time"] <= elapsed
    assert 0 < rec["epsilon"] < math.inf


def test_an_infinite_epsilon_is_recorded_as_none():
    s = make_strategy(strategy_cfg(**{"privacy.noise-multiplier": 0.0}))
    assert s.run_round(replies_with())["epsilon"] is None  # σ = 0: no guarantee, and no "inf" in JSON


def test_restore_refuses_another_sigma_or_weights_of_another_shape():
    s, _ = run_logged(strategy_cfg(), 1)
    meta, arrays = s.state()
    with pytest.raises(ConfigError) as sigma:
        make_strategy(strategy_cfg(), sigma=2.0).restore(meta, arrays)
    assert (sigma.value.key, sigma.value.value) == ("privacy.noise-multiplier", 2.0)
    assert "differs from the checkpoint (1.0)" in str(sigma.value)
    with pytest.raises(ConfigError) as shape:
        make_strategy(strategy_cfg()).restore(meta, {**arrays, "weights": np.zeros(16)})
    assert (shape.value.key, shape.value.value) == ("--resume", [16])
    assert "weights must have shape [17]" in str(shape.value)


def test_restore_keeps_the_configured_clip_norm_for_a_checkpoint_without_one():
    s, _ = run_logged(strategy_cfg(), 2)
    meta, arrays = s.state()
    r = make_strategy(strategy_cfg())
    r.restore({k: v for k, v in meta.items() if k != "clip_norm"}, arrays)
    assert r.clip_norm == 0.5 and r.round == 2
    np.testing.assert_array_equal(r.weights, s.weights)


def test_with_clip_norm_changes_only_the_clip_norm():
    cfg = strategy_cfg()
    got = with_clip_norm(cfg, 0.125)
    assert got.privacy.clip_norm == 0.125 and cfg.privacy.clip_norm == 0.5
    assert {k: v for k, v in to_flat(got).items() if k != "privacy.clip-norm"} == \
        {k: v for k, v in to_flat(cfg).items() if k != "privacy.clip-norm"}


def test_a_round_fails_only_when_more_than_the_fraction_of_nodes_fail_and_rejections_count():
    cfg = strategy_cfg(**{"privacy.sampling-rate": 1.0, "sim.max-failed-fraction": 0.5, "sim.max-failed-rounds": 1})

    def transport(first, second):
        def reply(requests, weights):
            out = replies_with()(requests, weights)
            return {0: first(out[0]), 1: second(out[1])}
        return reply

    def fail(rep):
        return NodeFailure("injected")

    def nan(rep):
        return NodeReply([np.full_like(a, np.nan) for a in rep.arrays], rep.users, rep.examples, rep.clipped)

    s = make_strategy(cfg, users=20)  # two nodes, both asked every round
    rec = s.run_round(transport(fail, lambda rep: rep))
    assert rec["failures"] == 1 and not s.failure_stop and s.stop_reason is None  # 1 of 2 is not more than half
    rec = s.run_round(transport(fail, nan))
    assert (rec["failures"], rec["rejected"]) == (1, 1) and s.failure_stop  # a rejected sum is a failed node
    assert "stopped after round 2" in s.stop_reason


def test_the_strategy_refuses_no_users_no_examples_and_a_ledger_that_cannot_account_the_mode():
    make_strategy(strategy_cfg(), users=1).run_round(replies_with())  # one user is enough
    with pytest.raises(ConfigError) as users:
        make_strategy(strategy_cfg(), users=0)
    assert (users.value.key, users.value.value, users.value.requirement) == \
        ("data.num-users", 0, "must be >= 1 (the dataset has no training users)")
    with pytest.raises(ConfigError) as examples:
        UserDPStrategy(strategy_cfg(**{"privacy.mode": "els"}), np.zeros(10, int), [np.zeros(3)], 1.0)
    assert (examples.value.key, examples.value.value, examples.value.requirement) == \
        ("data.source", "synthetic", "has no training examples")
    prv = "fl_userdp.accounting.prv:PrvAccountant"  # a ULS-only plug-in
    with pytest.raises(ConfigError) as ledger:
        make_strategy(strategy_cfg(**{"privacy.mode": "els", "privacy.accountant": prv}))
    assert (ledger.value.key, ledger.value.value) == ("privacy.accountant", prv)
    assert "cannot account ELS events" in ledger.value.requirement


def test_requests_carry_their_mode_and_round():
    for mode in ("uls", "els"):
        requests = make_strategy(strategy_cfg(**{"privacy.mode": mode})).sample(4)
        assert requests and all(r.mode == mode and r.round == 4 for r in requests.values())


def test_uls_and_els_of_one_seed_draw_independent_cohorts():
    """With k = 1 and one example per user, ELS would sample exactly the ULS cohort from a shared stream."""
    cohorts = {}
    for mode in ("uls", "els"):
        cfg = strategy_cfg(**{"privacy.mode": mode, "privacy.max-examples-per-user": 1})
        s = UserDPStrategy(cfg, np.ones(200, int), [np.zeros(s, np.float32) for s in SHAPES], 1.0)
        cohorts[mode] = np.concatenate([r.users for r in s.sample(1).values()])
    assert not np.array_equal(cohorts["uls"], cohorts["els"])


def test_node_reported_counts_are_clamped_to_what_was_requested():
    s = make_strategy(strategy_cfg(**{"privacy.mode": "els"}))
    requests = s.sample(1)
    low = {n: NodeReply([np.zeros(sh) for sh in SHAPES], -5, -3, -1) for n in requests}
    _, st = s.collect(requests, low)
    assert (st["users_replied"], st["examples_processed"], st["clipped"]) == (0, 0, 0)
    high = {n: NodeReply([np.zeros(sh) for sh in SHAPES], 10 ** 6, 7, 10 ** 6) for n in requests}
    _, st = s.collect(requests, high)
    assert st["users_replied"] == sum(r.users.size for r in requests.values())
    assert st["clipped"] == st["records"] == sum(r.count for r in requests.values())
    assert st["examples_processed"] == 7 * len(requests)  # diagnostics only: not bounded by the request
    garbage = {n: NodeReply([np.full(sh, np.nan) for sh in SHAPES], 1, 1, 0) for n in requests}
    assert s.collect(requests, garbage)[1]["rejected"] == len(requests) > 1


def test_a_healthy_run_has_no_stop_reason():
    s = make_strategy(strategy_cfg())
    for _ in range(3):
        s.run_round(replies_with())
    assert s.stop_reason is None and s.failure_stop is False and s.failed_streak == 0


def test_adaptive_clipping_releases_the_noised_centred_count_of_unclipped_records():
    """b̃ = (Σ (b_i − ½) + σ_b z) / expected + ½, z drawn from the release's generator (keyed by the count and
    σ_b too) after the sum's noise."""
    cfg = strategy_cfg(**{"privacy.adaptive-clip-quantile": 0.5})
    s = make_strategy(cfg)
    requests = s.sample(1)
    transport = replies_with()  # each node reports one clipped record
    total, st = s.collect(requests, transport(requests, s.weights_list()))
    records = sum(r.count for r in requests.values())
    assert st["unclipped_centred"] == pytest.approx((records - len(requests)) - records / 2)
    rng = release_rng(cfg.seed, "uls", 1, 0.5 * 1.0, s.expected, total, (s.count_noise, st["unclipped_centred"]))
    rng.standard_normal(total.size)
    want = unclipped_fraction(st["unclipped_centred"] + s.count_noise * rng.standard_normal(1)[0], s.expected)
    rec = s.run_round(transport)
    assert rec["unclipped_fraction"] == pytest.approx(want, rel=1e-12)


# -- survivors of the mutation run, killed -------------------------------------------------------
GOLDEN_KEY_MOD = 196861978393  # release_key("uls", 3, 0.5, 10.0, [0.25, -1.5, 3.0]) mod 10^12
GOLDEN_NOISE = [float.fromhex("-0x1.cf572b5ead878p-4"), float.fromhex("-0x1.4d027eb3b3ce4p+0")]


def test_clip_factors_are_float64_and_silent_for_zero_and_non_finite_norms():
    import warnings

    norms = np.array([0.0, 0.3, 3.0, np.inf, np.nan], np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no divide-by-zero or invalid-value warning may escape
        f = clip_factors(norms, np.float32(0.7))
        huge = clip_factors(np.array([0.0, 1e300]), 1e300)  # C / floor overflows: still factor 1, silently
    assert f.dtype == np.float64
    np.testing.assert_array_equal(f, [1.0, 1.0, np.float64(np.float32(0.7)) / np.float64(np.float32(3.0)), 0.0, 0.0])
    np.testing.assert_array_equal(huge, [1.0, 1.0])


def test_caps_accept_counts_read_as_floats():
    capped = cap_examples(np.random.default_rng(0), np.array([2.0, 5.0]), 3)
    np.testing.assert_array_equal(capped.offsets, [0, 2, 5])


def test_release_noise_is_a_fixed_function_of_its_inputs():
    """Golden values: a stored seeded run stays reproducible across versions (key derivation and stream)."""
    total = np.array([0.25, -1.5, 3.0])
    assert release_key("uls", 3, 0.5, 10.0, total) % 10**12 == GOLDEN_KEY_MOD
    z = release_rng(0, "uls", 3, 0.5, 10.0, total).standard_normal(2)
    np.testing.assert_allclose(z, GOLDEN_NOISE, rtol=0, atol=1e-12)


def test_replay_restores_the_adaptive_clip_norm_of_each_logged_round():
    cfg = strategy_cfg(**{"privacy.adaptive-clip-quantile": 0.5})
    s, logged = run_logged(cfg, 3)
    assert len({e["next_clip_norm"] for e, _ in logged}) == 3  # C moved every round
    r = make_strategy(cfg)
    for entry, update in logged:
        r.replay(entry, update)
    assert r.clip_norm == s.clip_norm == logged[-1][0]["next_clip_norm"]
    assert s.run_round(replies_with())["clip_norm"] == r.run_round(replies_with())["clip_norm"]


def test_each_rounds_sample_is_drawn_once_while_the_previous_round_is_at_the_nodes():
    import threading

    s = make_strategy(strategy_cfg(**{"train.rounds": 3}))
    calls, drawn = [], {r: threading.Event() for r in range(1, 5)}
    inner = s.sample

    def sample(rnd):
        calls.append(rnd)
        drawn[rnd].set()
        return inner(rnd)
    s.sample = sample
    transport = replies_with()

    def at_the_nodes(requests, weights):
        rnd = next(iter(requests.values())).round
        if rnd < 3:  # the next round's sample is drawn before this round's replies come back
            assert drawn[rnd + 1].wait(10), f"round {rnd + 1} was not sampled ahead"
        return transport(requests, weights)
    for _ in range(3):
        s.run_round(at_the_nodes)
    assert calls == [1, 2, 3]  # once per round, never past the last round


def test_els_sensitivity_support_drops_impossible_group_sizes():
    js, probs = ElsStep(1.0, 1.0, 4).sensitivity_distribution()  # q = 1: every kept example is sampled
    assert list(js) == [4.0] and list(probs) == [1.0]
    js, probs = ElsStep(0.5, 1.0, 3).sensitivity_distribution()
    np.testing.assert_allclose(probs, [0.125, 0.375, 0.375, 0.125], rtol=1e-12)
    assert list(js) == [0.0, 1.0, 2.0, 3.0]
