"""Adaptive clipping: C tracks a quantile of the record norms through a noised count, and the joint release
(sum, centred count) is accounted at the effective multiplier — checked against a direct computation on the
two-dimensional mechanism, and end to end through a run, its log and its resume."""
from __future__ import annotations

import numpy as np
import pytest
from dp_accounting.pld import privacy_loss_distribution as pld_lib
from scipy import stats

from fl_userdp.accounting import epsilon_for, make_event
from fl_userdp.accounting.pld import step_pld
from fl_userdp.mechanism.adaptive_clip import effective_noise_multiplier, next_clip_norm, sum_noise_multiplier
from fl_userdp.config import parse_config
from fl_userdp.errors import ConfigError
from fl_userdp.records.release_log import log_path, read_log
from fl_userdp.server.runner import Setup, noise_multiplier, run_mode
from fl_userdp.server.strategy import NodeReply, UserDPStrategy

DIM = 12


def test_effective_multiplier_and_its_inverse():
    assert effective_noise_multiplier(1.0, 1e9) == pytest.approx(1.0)
    assert effective_noise_multiplier(2.0, 0.5) == pytest.approx((0.25 + 1.0) ** -0.5)
    assert sum_noise_multiplier(effective_noise_multiplier(1.3, 4.0), 4.0) == pytest.approx(1.3)
    with pytest.raises(ConfigError) as err:
        sum_noise_multiplier(2.0, 0.9)  # 2σ_b ≤ σ_eff: the count alone spends more than the budget
    assert err.value.key == "privacy.count-noise-multiplier"
    assert next_clip_norm(1.0, 0.9, 0.5, 0.2) < 1.0 < next_clip_norm(1.0, 0.1, 0.5, 0.2)


def direct_delta(mode: str, q: float, sigma: float, count_sigma: float, eps: float, k: int = 3,
                 n: int = 400_000) -> float:
    """δ(ε) of one step of the 2-D mechanism (sum/C with σ, centred count with σ_b), straight from its
    densities: a record adds (1, ½) to (sum in units of C, count); J of a user's records (ULS: J ~ Bern(q),
    ELS: J ~ Binomial(k, q)) add J·(1, ½). Remove direction: P = mixture over J, Q = J = 0. Monte Carlo."""
    rng = np.random.default_rng(0)
    js = np.arange(k + 1) if mode == "els" else np.array([0, 1])
    w = stats.binom.pmf(js, k, q) if mode == "els" else np.array([1 - q, q])
    scale = np.array([sigma, count_sigma])
    shift = np.array([1.0, 0.5])

    def log_ratio(x):  # log P(x)/Q(x), x in the mechanism's own units
        z = x / scale
        mu = shift / scale
        terms = np.log(w)[None, :] + (js[None, :] * (z @ mu)[:, None]) - 0.5 * js[None, :] ** 2 * (mu @ mu)
        return np.logaddexp.reduce(terms, axis=1)

    j = rng.choice(js, size=n, p=w)
    x_p = j[:, None] * shift[None, :] + rng.standard_normal((n, 2)) * scale
    x_q = rng.standard_normal((n, 2)) * scale
    lp, lq = log_ratio(x_p), log_ratio(x_q)
    # δ(ε) = E_P[1 - e^{ε - L}]_+ ; the add direction (swap P, Q): E_Q[1 - e^{ε + L}]_+
    remove = np.mean(np.maximum(0.0, 1 - np.exp(eps - lp)))
    add = np.mean(np.maximum(0.0, 1 - np.exp(eps + lq)))
    return max(remove, add)


@pytest.mark.parametrize("mode", ["uls", "els"])
def test_joint_release_event_matches_a_direct_computation_on_the_2d_mechanism(mode):
    sigma, count_sigma, q, eps = 1.2, 0.8, 0.3, 0.5
    sigma_eff = effective_noise_multiplier(sigma, count_sigma)
    event = make_event(mode, q, sigma_eff, 3 if mode == "els" else None)
    ours = step_pld(event, 1e-4).get_delta_for_epsilon(eps)          # what the ledger composes
    direct = direct_delta(mode, q, sigma, count_sigma, eps)
    assert ours == pytest.approx(direct, abs=3e-3), (ours, direct)
    # and it is not the sum's event alone: the count costs privacy
    alone = step_pld(make_event(mode, q, sigma, 3 if mode == "els" else None), 1e-4).get_delta_for_epsilon(eps)
    assert alone < direct - 0.01


class NormTransport:
    """User u's update is a fixed direction with norm from LogNormal(0, 0.5); nodes clip at the round's C."""

    def __init__(self, seed=0):
        rng = np.random.default_rng(seed)
        self.dirs = rng.standard_normal((2000, DIM))
        self.dirs /= np.linalg.norm(self.dirs, axis=1, keepdims=True)
        self.norms = rng.lognormal(0.0, 0.5, 2000)
        self.seen = []

    def __call__(self, requests, weights):
        out = {}
        for node, req in requests.items():
            self.seen.append(req.clip_norm)
            n = self.norms[req.users]
            upd = self.dirs[req.users] * np.minimum(n, req.clip_norm)[:, None]
            out[node] = NodeReply([upd.sum(axis=0)], len(req.users), len(req.users), int((n > req.clip_norm).sum()))
        return out


@pytest.mark.parametrize("quantile", [0.5, 0.8])
def test_clip_norm_tracks_the_target_quantile(quantile):
    cfg = parse_config({"privacy.adaptive-clip-quantile": quantile, "privacy.adaptive-clip-lr": 0.3,
                        "privacy.noise-multiplier": 0.5, "privacy.sampling-rate": 0.2, "privacy.clip-norm": 0.1,
                        "sim.users-per-node": 250, "train.server-optimizer": "sgd", "train.rounds": 80})
    s = UserDPStrategy(cfg, np.full(2000, 3), [np.zeros(DIM)], 0.5)
    t = NormTransport()
    trace = []
    for _ in range(80):
        rec = s.run_round(t)
        trace.append(rec["clip_norm"])
        assert 0 <= rec["unclipped_fraction"] + 0.5 and rec["next_clip_norm"] == pytest.approx(s.clip_norm)
    truth = float(np.quantile(t.norms, quantile))
    assert np.mean(trace[-20:]) == pytest.approx(truth, rel=0.15), (np.mean(trace[-20:]), truth)
    assert trace[0] == 0.1 and all(c == trace[i] for i, c in enumerate(t.seen[::len(t.seen) // 80][:80]))
    # the ledger composed the joint release at the effective multiplier
    eff = effective_noise_multiplier(0.5, s.count_noise)
    assert s.count_noise == pytest.approx(0.2 * 2000 / 20)
    assert s.epsilon() == pytest.approx(epsilon_for([(make_event("uls", 0.2, eff), 80)], cfg.privacy.delta),
                                        rel=1e-12)


def test_calibrated_adaptive_run_meets_its_target_and_resumes_with_its_clip_norm(tmp_path):
    flat = {"privacy.adaptive-clip-quantile": 0.5, "privacy.target-epsilon": 4.0, "privacy.mode": "els",
            "privacy.max-examples-per-user": 2, "privacy.sampling-rate": 0.2, "privacy.clip-norm": 0.05,
            "sim.users-per-node": 250, "train.server-optimizer": "sgd", "train.rounds": 6, "checkpoint-every": 2}
    cfg = parse_config(flat)
    counts = np.full(2000, 3)
    expected = 0.2 * 2 * 2000
    sigma = noise_multiplier(cfg, expected)
    setup = Setup(counts, [np.zeros(DIM)], {"els": sigma})

    class ElsNorms(NormTransport):
        def __call__(self, requests, weights):
            out = {}
            for node, req in requests.items():
                owners = np.repeat(req.users, np.diff(req.offsets))
                n = self.norms[owners]
                upd = self.dirs[owners] * np.minimum(n, req.clip_norm)[:, None]
                out[node] = NodeReply([upd.sum(axis=0)], len(req.users), len(owners), int((n > req.clip_norm).sum()))
            return out

    full = run_mode(cfg, setup, ElsNorms(), None, tmp_path / "full")
    assert [r["round"] for r in full.records] == list(range(1, 7))
    assert 3.9 <= full.epsilon <= 4.0   # the target is for the joint release
    clips = [r["clip_norm"] for r in full.records]
    assert clips[0] == 0.05 and clips[-1] > 0.05 * 1.2          # moving toward the median norm (~1)
    # resumed after 3 rounds: the log carries C; same C trajectory and weights as the uninterrupted run
    run_mode(parse_config({**flat, "train.rounds": 3}), setup, ElsNorms(), None, tmp_path / "part")
    more = run_mode(cfg, setup, ElsNorms(), None, tmp_path / "part", resume=True)
    assert [r["clip_norm"] for r in more.records] == clips
    np.testing.assert_array_equal(more.strategy.weights, full.strategy.weights)
    entries = read_log(log_path(tmp_path / "full", "els")).releases
    assert all("next_clip_norm" in e and "unclipped_fraction" in e for e in entries)
