"""Secure mode (privacy.secure-mode): sampling and noise from OS entropy; seeded mode: noise per release.

* seeded noise is the per-release generator's draw (reproducible: same release, same noise);
* secure noise has scale σC, its coordinates are independent (also the two halves of one Box–Muller
  vector), and it never repeats: not across runs with the same seed, not across rounds;
* two secure runs with the same seed sample different cohorts, at the declared rate; seeded runs sample
  the same ones; the ε trajectory does not depend on the mode.
"""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from fl_userdp.config import parse_config
from fl_userdp.mechanism.noise import SecureGenerator, gaussian_noise, release_rng, secure_standard_normal
from fl_userdp.mechanism.sampling import poisson_users
from fl_userdp.server.strategy import NodeReply, UserDPStrategy

SHAPES = [(200, 100), (5000,)]
D = 25_000
SIGMA, C = 1.3, 0.5
ROUNDS = 3


def cfg(secure: bool, **flat):
    return parse_config({"privacy.secure-mode": secure, "privacy.noise-multiplier": SIGMA, "privacy.clip-norm": C,
                         "privacy.sampling-rate": 0.2, "sim.users-per-node": 10, "train.server-optimizer": "sgd",
                         "train.server-lr": 1.0, "train.rounds": ROUNDS, "seed": 11, **flat})


def zero_replies(requests, weights):
    """Every node answers with a zero sum: the released update is the noise alone."""
    return {n: NodeReply([np.zeros(s) for s in SHAPES], r.users.size, r.count, 0) for n, r in requests.items()}


def noise_per_round(c) -> tuple[list[np.ndarray], list[float]]:
    """The noise each round released, in units of σC (SGD lr 1: Δw = -noise / expected count)."""
    s = UserDPStrategy(c, np.full(100, 3), [np.zeros(sh, np.float32) for sh in SHAPES], SIGMA)
    noises, eps = [], []
    for _ in range(ROUNDS):
        w0 = s.weights.copy()
        rec = s.run_round(zero_replies)
        noises.append((w0 - s.weights) * s.expected / (SIGMA * C))
        eps.append(rec["epsilon"])
    return noises, eps


def assert_standard_normal_and_independent(z: np.ndarray) -> None:
    assert abs(z.mean()) < 5 / np.sqrt(z.size)
    assert z.std() == pytest.approx(1.0, rel=0.02)
    assert stats.kstest(z, "norm").pvalue > 1e-6
    half = z.size // 2
    a, b = z[:half], z[half:2 * half]  # Box–Muller's cos and sin halves: independent, not equal or tied
    assert abs(np.corrcoef(a, b)[0, 1]) < 0.05
    assert abs(np.corrcoef(a ** 2, b ** 2)[0, 1]) < 0.05  # independence, not only no linear correlation
    assert abs(np.corrcoef(z[:-1], z[1:])[0, 1]) < 0.05


def test_seeded_noise_is_drawn_per_release_and_reproducible():
    seeded, eps_seeded = noise_per_round(cfg(False))
    again, _ = noise_per_round(cfg(False))
    s = UserDPStrategy(cfg(False), np.full(100, 3), [np.zeros(sh, np.float32) for sh in SHAPES], SIGMA)
    for rnd, z in enumerate(seeded, 1):
        want = release_rng(11, "uls", rnd, SIGMA * C, s.expected, np.zeros(D)).standard_normal(D)
        np.testing.assert_allclose(z, want, rtol=1e-9, atol=1e-9)
        np.testing.assert_array_equal(z, again[rnd - 1])
        assert_standard_normal_and_independent(z)
    assert abs(np.corrcoef(seeded[0], seeded[1])[0, 1]) < 0.05


def test_secure_noise_scale_independence_no_repeats_same_epsilon():
    seeded, eps_seeded = noise_per_round(cfg(False))
    a, eps_a = noise_per_round(cfg(True))
    b, eps_b = noise_per_round(cfg(True))
    for z in a + b:
        assert_standard_normal_and_independent(z)
    for za, zb, zs in zip(a, b, seeded):
        assert abs(np.corrcoef(za, zb)[0, 1]) < 0.05 and abs(np.corrcoef(za, zs)[0, 1]) < 0.05
    assert abs(np.corrcoef(a[0], a[1])[0, 1]) < 0.05
    assert eps_a == eps_b == eps_seeded and eps_a[0] < eps_a[1] < eps_a[2]


def test_secure_normals_ignore_global_seeds_and_are_independent_within_a_vector():
    np.random.seed(0)
    x = secure_standard_normal(100_001)
    np.random.seed(0)
    y = secure_standard_normal(100_001)
    assert x.shape == (100_001,) and np.all(np.isfinite(x)) and not np.array_equal(x, y)
    assert_standard_normal_and_independent(x)
    z = gaussian_noise(40_000, 2.5, SecureGenerator())
    assert z.std() == pytest.approx(2.5, rel=0.03) and stats.kstest(z / 2.5, "norm").pvalue > 1e-6
    with pytest.raises(ValueError):
        gaussian_noise(3, 1.0, None)


def test_secure_uniforms_and_binomials():
    g = SecureGenerator()
    u = g.random(200_000)
    assert u.min() >= 0 and u.max() < 1 and stats.kstest(u, "uniform").pvalue > 1e-6
    b = g.binomial(8, 0.25, 50_000)
    assert b.min() >= 0 and b.max() <= 8 and b.mean() == pytest.approx(2.0, rel=0.02)


def test_secure_runs_sample_different_cohorts_at_the_declared_rate():
    """Anyone holding the seed recomputes a seeded run's cohorts; a secure run's are not derived from it."""
    counts = np.full(2000, 3)
    weights = [np.zeros(4, np.float32)]
    def cohorts(secure: bool, mode: str = "uls"):
        c = cfg(secure, **{"privacy.mode": mode, "privacy.max-examples-per-user": 2})
        s = UserDPStrategy(c, counts, weights, SIGMA)
        return [np.concatenate([r.users for r in s.sample(rnd).values()]) for rnd in (1, 2)]
    for mode in ("uls", "els"):
        s1, s2 = cohorts(True, mode), cohorts(True, mode)
        assert not np.array_equal(s1[0], s2[0]) and not np.array_equal(s1[0], s1[1])
        p1, p2 = cohorts(False, mode), cohorts(False, mode)
        assert all(np.array_equal(x, y) for x, y in zip(p1, p2))
    # Poisson at rate q: the cohort size over many draws is Binomial(N, q)
    sizes = [poisson_users(SecureGenerator(), 2000, 0.2).size for _ in range(200)]
    assert np.mean(sizes) == pytest.approx(400, rel=0.02)
    assert np.std(sizes) == pytest.approx(np.sqrt(2000 * 0.2 * 0.8), rel=0.25)


def test_secure_normals_are_four_box_muller_draws_halved(monkeypatch):
    """Floating-point attacks read the gaps of a single sampler draw: each secure normal is the sum of
    4 independent Box–Muller draws divided by 2 (opacus' secure mode), and is exactly N(0, 1)."""
    import fl_userdp.mechanism.noise as noise

    calls = []
    monkeypatch.setattr(noise, "box_muller", lambda n: calls.append(n) or np.full(n, float(len(calls))))
    np.testing.assert_allclose(noise.secure_standard_normal(3), (1 + 2 + 3 + 4) / 2)
    assert calls == [3, 3, 3, 3]
    monkeypatch.undo()
    z = noise.secure_standard_normal(200_000)
    assert stats.kstest(z, "norm").pvalue > 1e-4
    assert z.std() == pytest.approx(1.0, rel=0.01)
    assert stats.kurtosis(z) == pytest.approx(0.0, abs=0.05)


def test_own_data_is_secure_by_default_and_the_console_says_which(tmp_path, capsys):
    """privacy.secure-mode defaults to "auto": off for the built-in synthetic data (the main job reproduces
    from its seed), on for a data source of the user's own or a task plug-in; explicit values win."""
    import json as _json

    from fl_userdp.cli import main
    from fl_userdp.config import secure_mode

    data = tmp_path / "users.jsonl"
    data.write_text("\n".join(_json.dumps({"user": f"u{i % 12}", "text": "to be or not to be " * 3})
                              for i in range(48)))
    assert not secure_mode(parse_config({}))
    assert secure_mode(parse_config({"data.source": str(data)}))
    assert secure_mode(parse_config({"model.name": "mypkg.task:make"}))
    assert not secure_mode(parse_config({"data.source": str(data), "privacy.secure-mode": False}))
    assert secure_mode(parse_config({"privacy.secure-mode": "true"}))
    assert parse_config({"privacy.secure-mode": "auto"}).privacy.secure_mode is None
    base = ["run", "--mode", "uls", "--backend", "inprocess", "--rounds", "1", "--no-progress", "--set",
            "data.heldout-users=2", "--set", "data.num-users=10", "--set", "sim.users-per-node=5", "--set",
            "privacy.noise-multiplier=1", "--set", "model.num-layers=1", "--set", "model.hidden-size=16",
            "--set", "model.num-heads=2", "--set", "model.seq-len=8", "--set", "train.eval-every=0"]
    assert main([*base, "--out", str(tmp_path / "own"), "--set", f"data.source={data}"]) == 0
    assert "OS randomness (secure mode; own data)" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "builtin")]) == 0
    assert "seeded randomness (seed 0; built-in data)" in capsys.readouterr().err
