"""privacy.secure-noise=true: DP noise from OS entropy (right scale, never repeats), same ε as seeded noise."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from fl_userdp.config import parse_config
from fl_userdp.noise import gaussian_noise, secure_standard_normal
from fl_userdp.rng import rng_for
from server.runner import Setup, run_mode
from server.strategy import NodeReply, UserDPStrategy

SHAPES = [(200, 100), (5000,)]
D = 25_000
SIGMA, C = 1.3, 0.5
ROUNDS = 3


def cfg(secure: bool, **flat):
    return parse_config({"privacy.secure-noise": secure, "privacy.noise-multiplier": SIGMA, "privacy.clip-norm": C,
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


def test_secure_noise_scale_no_repeats_same_epsilon():
    seeded, eps_seeded = noise_per_round(cfg(False))
    a, eps_a = noise_per_round(cfg(True))
    b, eps_b = noise_per_round(cfg(True))
    # the seeded run is the seeded generator's draw, so it is reproducible
    for rnd, z in enumerate(seeded, 1):
        np.testing.assert_allclose(z, rng_for(11, "noise", rnd).standard_normal(D), rtol=1e-9, atol=1e-9)
    # secure noise: N(0, σ²C²) per coordinate (std within ±2 %: ~4.5 standard errors at D = 25 000)
    for z in a + b:
        assert abs(z.mean()) < 5 / np.sqrt(D)
        assert z.std() == pytest.approx(1.0, rel=0.02)
        assert stats.kstest(z, "norm").pvalue > 1e-6
    # ... that does not repeat: not across two runs with the same seed, not across rounds, not the seeded draw
    for za, zb, zs in zip(a, b, seeded):
        assert abs(np.corrcoef(za, zb)[0, 1]) < 0.05 and abs(np.corrcoef(za, zs)[0, 1]) < 0.05
    assert abs(np.corrcoef(a[0], a[1])[0, 1]) < 0.05
    # the privacy accounting is unchanged: identical ε trajectories
    assert eps_a == eps_b == eps_seeded and eps_a[0] < eps_a[1] < eps_a[2]


def test_secure_noise_resume_keeps_the_ledger_not_the_weights(tmp_path):
    """Resume under secure noise: the same ε trajectory, different weights (documented in the README)."""
    setup = Setup(np.full(100, 3), [np.zeros(sh, np.float32) for sh in SHAPES], {"uls": SIGMA})
    full = run_mode(cfg(True, **{"checkpoint-every": 1}), setup, zero_replies, None, tmp_path / "a")
    run_mode(cfg(True, **{"checkpoint-every": 1, "train.rounds": 2}), setup, zero_replies, None, tmp_path / "b")
    resumed = run_mode(cfg(True, **{"checkpoint-every": 1}), setup, zero_replies, None, tmp_path / "b", resume=True)
    assert resumed.resumed_from == 2
    assert [r["epsilon"] for r in resumed.records] == [r["epsilon"] for r in full.records]
    assert not np.allclose(resumed.strategy.weights, full.strategy.weights)


def test_secure_normals_ignore_global_seeds():
    np.random.seed(0)
    x = secure_standard_normal(10_001)
    np.random.seed(0)
    y = secure_standard_normal(10_001)
    assert x.shape == (10_001,) and np.all(np.isfinite(x)) and not np.array_equal(x, y)
    z = gaussian_noise(40_000, 2.5, None, secure=True)
    assert z.std() == pytest.approx(2.5, rel=0.03) and stats.kstest(z / 2.5, "norm").pvalue > 1e-6
    with pytest.raises(ValueError):
        gaussian_noise(3, 1.0, None, secure=False)
