"""Banded correlated noise through the real strategy and runner (fake nodes, no engine, no torch)."""
from __future__ import annotations

import numpy as np
import pytest

from fl_userdp.accounting import epsilon_for, make_event
from fl_userdp.config import parse_config
from fl_userdp.errors import ConfigError
from fl_userdp.mechanism import bandmf
from fl_userdp.mechanism.sampling import group_of_round
from fl_userdp.records.release_log import log_path, read_log
from fl_userdp.rng import rng_for
from fl_userdp.server.checkpoint import checkpoint_path, load_checkpoint, save_checkpoint
from fl_userdp.server.noise_record import record_path
from fl_userdp.server.runner import Setup, run_mode
from fl_userdp.server.strategy import NodeReply, UserDPStrategy

DIM = 9


def make_cfg(out, **flat):
    base = {"privacy.noise-multiplier": 1.0, "train.server-optimizer": "sgd", "train.server-lr": 1.0,
            "sim.users-per-node": 10, "privacy.sampling-rate": 0.3, "privacy.clip-norm": 0.5,
            "privacy.max-examples-per-user": 3, "train.rounds": 8, "out": str(out), "seed": 5}
    return parse_config({**base, **flat})


class Nodes:
    """Each user's (ULS) or example's (ELS) record is a fixed vector clipped to C; `scale` 0: zero records."""

    def __init__(self, cfg, scale=3.0, die_at=None, dim=DIM):
        self.cfg, self.scale, self.die_at, self.dim, self.seen = cfg, scale, die_at, dim, []

    def record(self, u, e=0):
        v = self.scale * rng_for(9, "audit", 0, 1000 * u + e).standard_normal(self.dim)
        n = np.linalg.norm(v)
        return v * min(1.0, self.cfg.privacy.clip_norm / n) if n else v

    def __call__(self, requests, weights):
        out = {}
        for node, req in requests.items():
            if req.round == self.die_at:
                raise RuntimeError("the server process dies mid-round")
            self.seen.append((req.round, [int(u) for u in req.users]))
            if req.mode == "uls":
                total = sum((self.record(int(u)) for u in req.users), np.zeros(self.dim))
            else:
                total = sum((self.record(int(u), int(e)) for i, u in enumerate(req.users)
                             for e in req.example_ids[req.offsets[i]:req.offsets[i + 1]]), np.zeros(self.dim))
            out[node] = NodeReply([np.asarray(total, float)], len(req.users), req.count, 0)
        return out


def setup(cfg, users=60, dim=DIM):
    return Setup(counts=np.arange(users) % 5 + 1, init_weights=[np.zeros(dim)], sigmas={cfg.privacy.mode: 1.0})


@pytest.fixture
def released(monkeypatch):
    """Every update appended to a release log, by log path and round (the log itself drops them at checkpoints)."""
    from fl_userdp.records import release_log

    seen: dict = {}
    append = release_log.ReleaseLog.append

    def recording(self, header, update):
        append(self, header, update)
        seen.setdefault(str(self.path), {})[int(header["round"])] = np.asarray(update, np.float64).tobytes()
    monkeypatch.setattr(release_log.ReleaseLog, "append", recording)
    return lambda out, mode: seen.get(str(log_path(out, mode)), {})


@pytest.mark.parametrize("mode", ["uls", "els"])
def test_one_band_reproduces_independent_releases_bit_for_bit(tmp_path, mode, released):
    """privacy.mechanism=bandmf with b = 1, through the real strategy and runner: the same released bits (every
    round's update, the ledger, the final weights) as privacy.mechanism=independent."""
    runs = {}
    for mech in ("independent", "bandmf"):
        cfg = make_cfg(tmp_path / mech, **{"privacy.mode": mode, "privacy.mechanism": mech,
                                           "checkpoint-every": 100})
        res = run_mode(cfg, setup(cfg), Nodes(cfg), None, cfg.out)
        runs[mech] = (res, released(cfg.out, mode), load_checkpoint(checkpoint_path(cfg.out, mode)))
    (a, ua, ca), (b, ub, cb) = runs["independent"], runs["bandmf"]
    assert sorted(ua) == sorted(ub) == list(range(1, 9))
    assert ua == ub
    assert ca[1]["weights"].tobytes() == cb[1]["weights"].tobytes()
    assert [r["epsilon"] for r in a.records] == [r["epsilon"] for r in b.records]
    assert not record_path(b.strategy.cfg.out, mode).exists()  # one band keeps no noise


@pytest.mark.parametrize("mode", ["uls", "els"])
def test_cyclic_groups_separate_a_users_participations_by_b_rounds(tmp_path, mode):
    b = 4
    cfg = make_cfg(tmp_path, **{"privacy.mode": mode, "privacy.mechanism": "bandmf", "privacy.bands": b,
                                "privacy.sampling-rate": 0.6})
    s = UserDPStrategy(cfg, np.arange(60) % 5 + 1, [np.zeros(DIM)], 1.0)
    assert np.bincount(s.groups).tolist() == [15] * 4
    rounds_of: dict[int, list[int]] = {}
    for rnd in range(1, 25):
        for req in s.sample(rnd).values():
            for u in req.users:
                assert s.groups[int(u)] == group_of_round(rnd, b)
                rounds_of.setdefault(int(u), []).append(rnd)
    assert all(np.all(np.diff(r) % b == 0) for r in rounds_of.values())
    assert len(rounds_of) > 50  # nearly every user took part somewhere
    group_total = [int(np.minimum(np.arange(60)[s.groups == g] % 5 + 1, 3).sum()) for g in range(b)]
    expected = [0.6 * (15 if mode == "uls" else group_total[g]) for g in range(b)]
    assert [s.expected_of(r) for r in (1, 2, 3, 4, 5)] == pytest.approx(expected + expected[:1])


def test_fixed_participation_takes_every_user_of_the_group_and_accounts_the_gaussian(tmp_path):
    cfg = make_cfg(tmp_path, **{"privacy.mechanism": "bandmf", "privacy.bands": 3, "privacy.participation": "fixed",
                                "privacy.sampling-rate": 1})
    s = UserDPStrategy(cfg, np.full(30, 2), [np.zeros(DIM)], 1.0)
    for rnd in (1, 2, 3, 4):
        users = np.concatenate([r.users for r in s.sample(rnd).values()])
        assert np.array_equal(users, np.flatnonzero(s.groups == group_of_round(rnd, 3)))
    res = run_mode(cfg, setup(cfg, 30), Nodes(cfg), None, cfg.out)
    assert res.records[-1]["epsilon"] == epsilon_for([(make_event("uls", 1.0, 1.0), 3)], 1e-5)  # ⌈8/3⌉ = 3


def test_released_noise_has_covariance_sigma2_c_inv_c_inv_t(tmp_path):
    """Zero records: round t releases σC·w_t/E_t; across the d coordinates the rounds' w have covariance
    C⁻¹C⁻ᵀ (ones on the diagonal and zeros elsewhere for independent noise)."""
    T, b, d = 10, 4, 6000
    cfg = make_cfg(tmp_path, **{"privacy.mechanism": "bandmf", "privacy.bands": b, "train.rounds": T,
                                "privacy.noise-multiplier": 1.3})
    s = UserDPStrategy(cfg, np.full(40, 3), [np.zeros(d)], 1.3)
    released = []
    s.journal = lambda entry, update: released.append(update * entry["expected_count"]
                                                      / (entry["noise_multiplier"] * entry["clip_norm"]))
    for _ in range(T):
        s.run_round(Nodes(cfg, scale=0.0, dim=d))
    w = np.stack(released)                         # T × d
    cov = w @ w.T / d
    Cinv = np.linalg.inv(bandmf.strategy_matrix(s.stream.coeffs, T))
    np.testing.assert_allclose(cov, Cinv @ Cinv.T, atol=6 / np.sqrt(d))
    assert abs(cov[1, 0]) > 10 / np.sqrt(d)       # and it is not independent noise


def test_a_crashed_run_resumes_the_same_stream_bit_for_bit(tmp_path, released):
    """Checkpoint at round 3, releases logged to round 5, crash in round 6: the resume restores the buffer from
    the checkpoint, replays rounds 4-5's recorded noise and continues with the uninterrupted run's bits."""
    flat = {"privacy.mode": "els", "privacy.mechanism": "bandmf", "privacy.bands": 4, "checkpoint-every": 3,
            "privacy.bandmf-coefficients": "optimized"}
    ref = make_cfg(tmp_path / "ref", **flat)
    run_mode(ref, setup(ref), Nodes(ref), None, ref.out)
    cfg = make_cfg(tmp_path / "crash", **flat)
    with pytest.raises(RuntimeError, match="dies"):
        run_mode(cfg, setup(cfg), Nodes(cfg, die_at=6), None, cfg.out)
    assert load_checkpoint(checkpoint_path(cfg.out, "els"))[0]["round"] == 3
    assert read_log(log_path(cfg.out, "els")).last_round == 5
    assert sorted(p.name for p in record_path(cfg.out, "els").iterdir()) == ["run.json", "w-4.npy", "w-5.npy"]
    resumed = make_cfg(tmp_path / "crash", **{**flat, "train.rounds": 8})
    run_mode(resumed, setup(resumed), Nodes(resumed), None, resumed.out, resume=True)
    a, b = released(ref.out, "els"), released(cfg.out, "els")
    assert sorted(a) == sorted(b) == list(range(1, 9))  # rounds 4, 5 were released once, before the crash
    assert a == b
    ca, cb = load_checkpoint(checkpoint_path(ref.out, "els")), load_checkpoint(checkpoint_path(cfg.out, "els"))
    for key in ("weights", "noise_buffer", "noise_coefficients"):
        assert ca[1][key].tobytes() == cb[1][key].tobytes(), key
    assert [e["epsilon"] for e in read_log(log_path(ref.out, "els")).releases] == \
        [e["epsilon"] for e in read_log(log_path(cfg.out, "els")).releases]


def test_secure_stream_state_survives_checkpoint_and_replay_bit_for_bit(tmp_path):
    cfg = make_cfg(tmp_path, **{"privacy.mechanism": "bandmf", "privacy.bands": 3, "privacy.secure-mode": True})
    a = UserDPStrategy(cfg, np.full(40, 3), [np.zeros(DIM)], 1.0)
    log, noise = [], {}
    a.journal = lambda entry, update: log.append((entry, update))
    a.noise_record = lambda rnd, w: noise.__setitem__(rnd, w)
    for _ in range(2):
        a.run_round(Nodes(cfg))
    meta, arrays = a.state()
    for _ in range(3):
        a.run_round(Nodes(cfg))
    b = UserDPStrategy(cfg, np.full(40, 3), [np.zeros(DIM)], 1.0)
    b.restore(meta, arrays)
    for entry, update in log[2:]:
        b.replay(entry, update, noise[entry["round"]])
    sa, sb = a.stream.state_dict(), b.stream.state_dict()
    assert sa["rounds"] == sb["rounds"] == 5 and sa["buffer"].tobytes() == sb["buffer"].tobytes()
    assert a.weights.tobytes() == b.weights.tobytes()


def crashed(tmp_path):
    flat = {"privacy.mechanism": "bandmf", "privacy.bands": 4, "checkpoint-every": 3}
    cfg = make_cfg(tmp_path, **flat)
    with pytest.raises(RuntimeError):
        run_mode(cfg, setup(cfg), Nodes(cfg, die_at=6), None, cfg.out)
    return cfg


@pytest.mark.parametrize("loss", ["a round's noise", "the whole record", "the checkpoint's buffer"])
def test_a_lost_noise_buffer_is_refused_in_one_line(tmp_path, loss):
    cfg = crashed(tmp_path)
    ckpt = checkpoint_path(cfg.out, "uls")
    if loss == "a round's noise":
        (record_path(cfg.out, "uls") / "w-5.npy").unlink()
        needle = "no recorded noise"
    elif loss == "the whole record":
        for f in record_path(cfg.out, "uls").iterdir():
            f.unlink()
        needle = "secret state is lost"
    else:
        meta, arrays = load_checkpoint(ckpt)
        save_checkpoint(ckpt, {k: v for k, v in meta.items() if k not in ("noise_stream_rounds", "version")},
                        {k: v for k, v in arrays.items() if not k.startswith("noise_")})
        needle = "without the banded noise stream"
    before = read_log(log_path(cfg.out, "uls")).releases
    with pytest.raises(ConfigError, match=needle) as err:
        run_mode(cfg, setup(cfg), Nodes(cfg), None, cfg.out, resume=True)
    assert "\n" not in str(err.value)
    assert read_log(log_path(cfg.out, "uls")).releases == before  # nothing was released


def test_the_noise_is_only_in_the_secret_files(tmp_path):
    """The latest rounds' w (the buffer) appear in the checkpoint and secret-noise-<mode>/ only."""
    cfg = make_cfg(tmp_path, **{"privacy.mechanism": "bandmf", "privacy.bands": 3, "checkpoint-every": 100})
    with pytest.raises(RuntimeError):
        run_mode(cfg, setup(cfg), Nodes(cfg, die_at=6), None, cfg.out)
    out = tmp_path
    w5 = np.load(record_path(out, "uls") / "w-5.npy").tobytes()
    holders = [p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and w5 in p.read_bytes()]
    assert holders == ["secret-noise-uls/w-5.npy"]
    run_mode(cfg, setup(cfg), Nodes(cfg), None, cfg.out, resume=True)
    buffer = load_checkpoint(checkpoint_path(cfg.out, "uls"))[1]["noise_buffer"]
    newest = buffer[0].tobytes()
    holders = [p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and newest in p.read_bytes()]
    assert holders == ["checkpoint-uls.npz"]


@pytest.mark.slow
def test_compare_through_flower_and_in_process_publish_the_same_bits(tmp_path):
    """`fl-userdp compare --set privacy.mechanism=bandmf --set privacy.bands=2`, both modes end to end through
    Flower on Ray and in-process: the same weights and the same secret stream state, bit for bit."""
    from fl_userdp.cli import main

    small = ["--rounds", "3", "--no-progress", "--set", "data.num-users=16", "--set", "sim.users-per-node=8",
             "--set", "privacy.sampling-rate=0.5", "--set", "train.eval-examples=16", "--set", "train.eval-every=3",
             "--set", "data.heldout-users=4", "--set", "privacy.noise-multiplier=1.0",
             "--set", "privacy.mechanism=bandmf", "--set", "privacy.bands=2"]
    ray, inproc = tmp_path / "ray", tmp_path / "inprocess"
    assert main(["compare", "--out", str(ray), *small]) == 0
    assert main(["compare", "--backend", "inprocess", "--out", str(inproc), *small, "--set", "sim.users-per-node=3"]) == 0
    for mode in ("uls", "els"):
        a, b = load_checkpoint(checkpoint_path(ray, mode))[1], load_checkpoint(checkpoint_path(inproc, mode))[1]
        assert sorted(a) == sorted(b) and "noise_buffer" in a
        for key in a:
            assert a[key].tobytes() == b[key].tobytes(), f"{mode} {key}"
        entries = [[{k: v for k, v in e.items() if k != "run_id"} for e in read_log(log_path(out, mode)).releases]
                   for out in (ray, inproc)]
        assert entries[0] == entries[1] and len(entries[0]) == 3


def test_the_identity_holds_the_mechanism_keys_only_where_they_matter(tmp_path):
    """A run with independent noise has the identity it always had (its folders resume as before); a banded run's
    identity holds the strategy, so a resume with other bands or coefficients is refused."""
    from fl_userdp.server.strategy import check_identity, identity

    plain = identity(make_cfg(tmp_path))
    assert not any(k in plain for k in ("privacy.mechanism", "privacy.bands", "privacy.bandmf-coefficients",
                                        "privacy.participation"))
    banded = make_cfg(tmp_path, **{"privacy.mechanism": "bandmf", "privacy.bands": 4})
    meta = {"mode": "uls", "identity": identity(banded)}
    check_identity(meta, banded)
    for other in ({"privacy.bands": 8}, {"privacy.bandmf-coefficients": "optimized"}, {"privacy.mechanism": "independent",
                                                                                      "privacy.bands": 1}):
        with pytest.raises(ConfigError, match="refusing to resume"):
            check_identity(meta, make_cfg(tmp_path, **{"privacy.mechanism": "bandmf", "privacy.bands": 4, **other}))
