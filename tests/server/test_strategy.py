"""The user-DP strategy with fake transports (no engine, no torch)."""
from __future__ import annotations

import numpy as np
import pytest

from fl_userdp.config import parse_config
from fl_userdp.errors import ConfigError
from fl_userdp.mechanism.noise import release_rng
from fl_userdp.rng import rng_for
from fl_userdp.server.checkpoint import checkpoint_path, load_checkpoint, save_checkpoint
from fl_userdp.server.runner import Setup, run_mode
from fl_userdp.server.strategy import NodeFailure, NodeReply, UserDPStrategy

SHAPES = [(3, 4), (5,)]
DIM = 17


def make_cfg(**flat):
    base = {"privacy.noise-multiplier": 1.0, "train.server-optimizer": "sgd", "train.server-lr": 1.0,
            "sim.users-per-node": 10, "privacy.sampling-rate": 0.2, "privacy.clip-norm": 0.5}
    return parse_config({**base, **flat})


def zeros():
    return [np.zeros(s, np.float32) for s in SHAPES]


def user_vector(u: int, scale: float = 3.0) -> np.ndarray:
    return scale * rng_for(123, "audit", 0, u).standard_normal(DIM)


def split(flat):
    return [flat[:12].reshape(3, 4), flat[12:]]


class HonestTransport:
    """Each user's (ULS) or example's (ELS) record is a fixed vector clipped to C; nodes return sums."""

    def __init__(self, cfg, fail=(), silent=()):
        self.cfg, self.fail, self.silent, self.calls = cfg, set(fail), set(silent), []

    def record(self, u, e=0):
        v = user_vector(1000 * u + e)
        return v * min(1.0, self.cfg.privacy.clip_norm / np.linalg.norm(v))

    def __call__(self, requests, weights):
        self.calls.append(dict(requests))
        out = {}
        for node, req in requests.items():
            if node in self.silent:
                continue
            if node in self.fail:
                out[node] = NodeFailure("injected")
                continue
            if req.mode == "uls":
                total = sum(self.record(int(u)) for u in req.users)
                n = len(req.users)
            else:
                total = sum(self.record(int(u), int(e)) for i, u in enumerate(req.users)
                            for e in req.example_ids[req.offsets[i]:req.offsets[i + 1]])
                n = req.count
            out[node] = NodeReply(split(np.asarray(total, float)), len(req.users), n, 0)
        return out


# -- sampling ---------------------------------------------------------------------
def test_uls_sampling_rate_and_sharding():
    cfg = make_cfg(**{"privacy.sampling-rate": 0.1})
    s = UserDPStrategy(cfg, np.full(1000, 5), zeros(), 1.0)
    sizes, hits = [], np.zeros(1000)
    for rnd in range(1, 301):
        reqs = s.sample(rnd)
        users = np.concatenate([r.users for r in reqs.values()]) if reqs else np.zeros(0, int)
        for node, r in reqs.items():
            assert np.all(r.users // 10 == node)
        sizes.append(users.size)
        hits[users] += 1
    assert abs(np.mean(sizes) - 100) < 4 * np.sqrt(1000 * 0.1 * 0.9 / 300)
    assert abs(hits.mean() / 300 - 0.1) < 0.005
    assert s.expected == pytest.approx(100.0)


def test_els_sampling_rate_cap_and_csr():
    cfg = make_cfg(**{"privacy.mode": "els", "privacy.sampling-rate": 0.3, "privacy.max-examples-per-user": 3})
    counts = np.arange(1, 201) % 7 + 1
    s = UserDPStrategy(cfg, counts, zeros(), 1.0)
    n_k = int(np.minimum(counts, 3).sum())
    assert s.capped.total == n_k and s.expected == pytest.approx(0.3 * n_k)
    totals = []
    for rnd in range(1, 101):
        total = 0
        for node, r in s.sample(rnd).items():
            assert np.all(r.users // 10 == node) and r.offsets[0] == 0 and r.offsets[-1] == r.example_ids.size
            for i, u in enumerate(r.users):
                ids = r.example_ids[r.offsets[i]:r.offsets[i + 1]]
                assert 1 <= ids.size <= 3 and set(ids) <= set(s.capped.of_user(int(u)))
            total += r.count
        totals.append(total)
    assert abs(np.mean(totals) - 0.3 * n_k) < 4 * np.sqrt(n_k * 0.21 / 100)


@pytest.mark.parametrize("mode", ["uls", "els"])
def test_sharding_does_not_change_the_sample_or_the_aggregate(mode):
    """One user per node and many users per node: same users, same pre-noise sum."""
    sums = []
    for upn in (1, 7, 64):
        cfg = make_cfg(**{"privacy.mode": mode, "sim.users-per-node": upn})
        s = UserDPStrategy(cfg, np.full(130, 4), zeros(), 1.0)
        reqs = s.sample(3)
        total, _ = s.collect(reqs, HonestTransport(cfg)(reqs, zeros()))
        sums.append((np.concatenate([r.users for r in reqs.values()]), total))
    for users, total in sums[1:]:
        np.testing.assert_array_equal(users, sums[0][0])
        np.testing.assert_allclose(total, sums[0][1], rtol=1e-12, atol=1e-12)


# -- release ------------------------------------------------------------------------
def test_empty_cohort_still_adds_noise_and_is_accounted():
    for seed in range(100):  # a seed whose first cohort is empty
        cfg = make_cfg(**{"privacy.sampling-rate": 0.05, "privacy.noise-multiplier": 0.8, "seed": seed})
        s = UserDPStrategy(cfg, np.full(5, 3), zeros(), 0.8)
        if not s.sample(1):
            break
    t = HonestTransport(cfg)
    rec = s.run_round(t)
    assert rec["users_sampled"] == 0 and t.calls == []  # nobody asked
    assert np.linalg.norm(s.weights) > 0                  # but noise was released
    assert s.accountant.steps == 1 and rec["epsilon"] > 0


@pytest.mark.parametrize("mode", ["uls", "els"])
def test_denominator_is_the_expected_count_not_the_replies(mode):
    cfg = make_cfg(**{"privacy.mode": mode, "privacy.noise-multiplier": 0.0})
    counts = np.full(100, 4)
    ref = UserDPStrategy(cfg, counts, zeros(), 0.0)
    reqs = ref.sample(1)
    full, _ = ref.collect(reqs, HonestTransport(cfg)(reqs, zeros()))
    silent = {sorted(reqs)[0]}
    for dropped in (set(), silent):
        s = UserDPStrategy(cfg, counts, zeros(), 0.0)
        t = HonestTransport(cfg, silent=dropped)
        rec = s.run_round(t)
        part, _ = s.collect(reqs, t(reqs, zeros()))
        expected = 0.2 * (100 if mode == "uls" else 400)
        np.testing.assert_allclose(s.weights, -part / expected, rtol=1e-12)  # SGD lr 1 from 0
        assert rec["failures"] == len(dropped) and rec["expected_count"] == pytest.approx(expected)
    assert not np.allclose(part, full)


@pytest.mark.parametrize("mode", ["uls", "els"])
def test_noise_std_is_sigma_c_over_expected_count(mode):
    sigma, C = 2.0, 0.5
    shapes = [(200, 100), (5000,)]
    cfg = make_cfg(**{"privacy.mode": mode, "privacy.clip-norm": C, "privacy.sampling-rate": 1e-6})
    stds = []
    for seed in range(3):
        s = UserDPStrategy(parse_config({"seed": seed}, base=cfg), np.full(50, 2),
                           [np.zeros(sh, np.float32) for sh in shapes], sigma)
        s.run_round(lambda reqs, w: {})
        stds.append(np.std(s.weights) * s.expected / (sigma * C))
    assert np.mean(stds) == pytest.approx(1.0, rel=0.01)


# -- validation and faults ---------------------------------------------------------------
class Malicious(HonestTransport):
    def __init__(self, cfg, kind):
        super().__init__(cfg)
        self.kind = kind

    def __call__(self, requests, weights):
        out = super().__call__(requests, weights)
        node = sorted(out)[0]
        rep = out[node]
        bad = {"huge": [a * 1e6 + 1e3 for a in rep.arrays],
               "nan": [np.full_like(a, np.nan) for a in rep.arrays],
               "shape": [np.zeros((4, 3)), rep.arrays[1]],
               "dtype": [a.astype(np.int64) for a in rep.arrays],
               "count": rep.arrays[:1]}[self.kind]
        out[node] = NodeReply(bad, rep.users, rep.examples, rep.clipped)
        return out


@pytest.mark.parametrize("kind", ["huge", "nan", "shape", "dtype", "count"])
def test_bad_updates_are_never_applied_raw(kind):
    cfg = make_cfg(**{"privacy.noise-multiplier": 0.0})
    s = UserDPStrategy(cfg, np.full(100, 3), zeros(), 0.0)
    reqs = s.sample(1)
    rec = s.run_round(Malicious(cfg, kind))
    assert np.all(np.isfinite(s.weights))
    honest_nodes = {n: r for n, r in reqs.items() if n != sorted(reqs)[0]}
    if kind == "huge":
        assert rec["reclipped"] == 1 and rec["rejected"] == 0
        # the update is bounded by (total requested records) × C / expected count
        bound = sum(r.count for r in reqs.values()) * cfg.privacy.clip_norm / s.expected
        assert np.linalg.norm(s.weights) <= bound * (1 + 1e-3)
    else:
        assert rec["rejected"] == 1 and rec["reclipped"] == 0
        honest, _ = s.collect(honest_nodes, HonestTransport(cfg)(honest_nodes, zeros()))
        np.testing.assert_allclose(s.weights, -honest / s.expected, rtol=1e-12)


def test_twenty_percent_failing_nodes():
    cfg = make_cfg(**{"sim.users-per-node": 1, "privacy.sampling-rate": 0.5})
    s = UserDPStrategy(cfg, np.full(100, 3), zeros(), 1.0)
    reqs = s.sample(1)
    nodes = sorted(reqs)
    k = len(nodes) // 10
    t = HonestTransport(cfg, fail=nodes[:k], silent=nodes[k:2 * k])
    rec = s.run_round(t)
    assert rec["failures"] == 2 * k >= 0.15 * len(nodes)
    assert rec["nodes_replied"] == len(nodes) - 2 * k
    assert s.accountant.steps == 1 and rec["epsilon"] > 0
    # noise at full scale: weights = -(honest sum + noise)/expected with the seeded noise of this release
    honest_reqs = {n: reqs[n] for n in nodes[2 * k:]}
    honest, _ = s.collect(honest_reqs, HonestTransport(cfg)(honest_reqs, zeros()))
    noise = 1.0 * 0.5 * release_rng(cfg.seed, "uls", 1, 0.5, s.expected, honest).standard_normal(DIM)
    np.testing.assert_allclose(s.weights, -(honest + noise) / s.expected, rtol=1e-10)


def test_transport_exceptions_in_replies_count_as_failures():
    cfg = make_cfg()
    s = UserDPStrategy(cfg, np.full(50, 3), zeros(), 1.0)
    rec = s.run_round(lambda reqs, w: {n: RuntimeError("boom") for n in reqs})
    assert rec["failures"] == rec["nodes_requested"] > 0 and s.accountant.steps == 1


# -- budget stop ------------------------------------------------------------------------------
def test_budget_stop_at_the_boundary(tmp_path):
    cfg = make_cfg(**{"train.rounds": 6, "privacy.accountant": "rdp"})
    probe = UserDPStrategy(cfg, np.full(50, 3), zeros(), 1.0)
    eps = [probe.accountant.compose(probe.event) for _ in range(3)]
    for max_eps, rounds in ((eps[1], 2), (eps[1] * (1 - 1e-9), 1), (eps[2] * (1 + 1e-9), 3)):
        c = parse_config({"privacy.max-epsilon": max_eps}, base=cfg)
        res = run_mode(c, Setup(np.full(50, 3), zeros(), {"uls": 1.0}), HonestTransport(c), None, tmp_path / str(rounds))
        assert len(res.records) == rounds and res.strategy.accountant.steps == rounds
        assert res.epsilon <= max_eps and "max-epsilon" in res.stop_reason
        assert res.records[-1]["epsilon"] == pytest.approx(eps[rounds - 1])


# -- checkpoints --------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["uls", "els"])
def test_checkpoint_resume_matches_uninterrupted(tmp_path, mode):
    flat = {"privacy.mode": mode, "train.server-optimizer": "adam", "train.server-lr": 0.1,
            "checkpoint-every": 1, "privacy.accountant": "rdp" if mode == "uls" else "pld"}
    counts = np.full(60, 3)
    setup = Setup(counts, zeros(), {mode: 1.0})
    full = run_mode(make_cfg(**flat, **{"train.rounds": 3}), setup, HonestTransport(make_cfg(**flat)), None, tmp_path / "a")
    part = run_mode(make_cfg(**flat, **{"train.rounds": 2}), setup, HonestTransport(make_cfg(**flat)), None, tmp_path / "b")
    assert part.strategy.round == 2
    resumed = run_mode(make_cfg(**flat, **{"train.rounds": 3}), setup, HonestTransport(make_cfg(**flat)), None,
                       tmp_path / "b", resume=True)
    assert resumed.resumed_from == 2
    np.testing.assert_array_equal(resumed.strategy.weights, full.strategy.weights)
    assert [r["epsilon"] for r in resumed.records] == [r["epsilon"] for r in full.records]
    assert [r["round"] for r in resumed.records] == [1, 2, 3]


def test_checkpoint_without_ledger_or_with_wrong_count_is_refused(tmp_path):
    cfg = make_cfg(**{"train.rounds": 2, "privacy.accountant": "rdp"})
    run_mode(cfg, Setup(np.full(30, 3), zeros(), {"uls": 1.0}), HonestTransport(cfg), None, tmp_path)
    path = checkpoint_path(tmp_path, "uls")
    meta, arrays = load_checkpoint(path)
    assert meta["round"] == 2
    for broken in ({**meta, "ledger": None}, {**meta, "round": 3}):
        save_checkpoint(path, broken, arrays)
        with pytest.raises(ConfigError, match="refusing to resume"):
            load_checkpoint(path)
    save_checkpoint(path, meta, arrays)
    other = parse_config({"privacy.clip-norm": 0.7}, base=cfg)
    with pytest.raises(ConfigError, match="privacy.clip-norm"):
        run_mode(other, Setup(np.full(30, 3), zeros(), {"uls": 1.0}), HonestTransport(other), None, tmp_path,
                 resume=True)


def test_no_users_is_a_config_error():
    with pytest.raises(ConfigError, match="data.num-users"):
        UserDPStrategy(make_cfg(), np.zeros(0, np.int64), zeros(), 1.0)


@pytest.mark.parametrize("mode", ["uls", "els"])
@pytest.mark.parametrize("excess", [1.5, 1 + 1e-6])
def test_a_node_sum_above_its_exact_bound_is_scaled_to_it(mode, excess):
    """One node answers count × C × excess: its contribution enters at exactly count × C (no slack)."""
    cfg = make_cfg(**{"privacy.noise-multiplier": 0.0, "privacy.mode": mode, "privacy.max-examples-per-user": 2})
    s = UserDPStrategy(cfg, np.full(100, 3), zeros(), 0.0)
    reqs = s.sample(1)
    node = sorted(reqs)[0]
    bound = reqs[node].count * cfg.privacy.clip_norm
    direction = user_vector(7) / np.linalg.norm(user_vector(7))

    def transport(requests, weights):
        return {node: NodeReply(split(direction * bound * excess), 1, 1, 0)}

    rec = s.run_round(transport)
    assert rec["nodes_replied"] == 1 and rec["rejected"] == 0
    applied = -s.weights * s.expected  # SGD, lr 1, no noise: weights = -Σ / expected count
    assert np.linalg.norm(applied) <= bound and np.linalg.norm(applied) == pytest.approx(bound, rel=1e-12)
    assert rec["reclipped"] == (1 if excess > 1.0001 else 0)


def test_failure_policy_stops_after_a_streak_of_failed_rounds(tmp_path):
    """More than max-failed-fraction of the nodes failing in max-failed-rounds rounds in a row stops the run
    after the last (released, logged, accounted) round; a round below the fraction resets the streak."""
    cfg = make_cfg(**{"sim.users-per-node": 1, "privacy.sampling-rate": 0.5, "train.rounds": 20,
                      "sim.max-failed-fraction": 0.5, "sim.max-failed-rounds": 3})
    pattern = {1: 0.9, 2: 0.9, 3: 0.1, 4: 0.9, 5: 0.9, 6: 0.9, 7: 0.0}  # fraction of nodes failing per round

    class Flaky(HonestTransport):
        def __call__(self, requests, weights):
            rnd = next(iter(requests.values())).round
            nodes = sorted(requests)
            self.fail = set(nodes[: int(round(pattern[rnd] * len(nodes)))])
            return super().__call__(requests, weights)

    setup = Setup(np.full(100, 3), zeros(), {"uls": 1.0})
    res = run_mode(cfg, setup, Flaky(cfg), None, tmp_path)
    assert [r["round"] for r in res.records] == [1, 2, 3, 4, 5, 6] and res.failed
    assert "node failures" in res.stop_reason and "stopped after round 6" in res.stop_reason
    assert res.strategy.accountant.steps == 6
    assert load_checkpoint(checkpoint_path(tmp_path, "uls"))[0]["round"] == 6
    # resumable: the next run continues at round 7 with the same ledger
    more = run_mode(cfg, setup, HonestTransport(cfg), None, tmp_path, resume=True)
    assert more.resumed_from == 6 and more.records[-1]["round"] == 20 and not more.failed


@pytest.mark.parametrize("flat,key", [({"sim.max-failed-fraction": 1.0}, "sim.max-failed-fraction"),
                                      ({"sim.max-failed-rounds": -1}, "sim.max-failed-rounds")])
def test_failure_policy_values_are_checked(flat, key):
    with pytest.raises(ConfigError) as err:
        make_cfg(**flat)
    assert err.value.key == key
