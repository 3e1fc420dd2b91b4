"""The drop-in with cyclic participation and banded noise (`UserDP(..., bands=b)`): nodes in b groups fixed at
round 1, release i sampling only group (i − 1) mod b (counted within a segment), noise σC·(C⁻¹z)_i over the group's expected count, the
ledger at ⌈releases/b⌉ participations per segment (a restarted ServerApp has lost its secret buffer and
groups, so it continues the ledger as a new segment); b = 1 is the independent drop-in bit for bit."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ArrayRecord

from fl_userdp.accounting import epsilon_for, make_event
from fl_userdp.errors import ConfigError
from fl_userdp.mechanism.bandmf import sqrt_coefficients
from fl_userdp.server.dropin import UserDPFedAvg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_dropin import USERS, Grid, start, task_identity  # noqa: E402,F401  (the quickstart app's stand-in grid)

ARGS = dict(noise_multiplier=1.2, clipping_norm=1.0, delta=1e-5)


def test_cyclic_groups_separate_each_nodes_participations_by_b_releases():
    s = UserDPFedAvg(sampling_rate=0.5, bands=4, seed=5, **ARGS)
    grid = Grid()
    start(s, grid, 12)
    groups = s.groups
    assert sorted(n for g in groups for n in g) == sorted(grid.get_node_ids())
    assert max(map(len, groups)) - min(map(len, groups)) <= 1
    last: dict[int, int] = {}
    for i, rec in enumerate(s.history, start=1):
        assert rec["expected_count"] == pytest.approx(0.5 * len(groups[(i - 1) % 4]))
    seen = 0
    for i in range(1, 13):   # the nodes each release sent to, in order (grid.sent lists them round by round)
        n_i = s.history[i - 1]["nodes_sampled"]
        sent, seen = grid.sent[seen:seen + n_i], seen + n_i
        assert set(sent) <= set(groups[(i - 1) % 4])
        for n in sent:
            assert n not in last or i - last[n] >= 4
            last[n] = i
    # the ledger: 12 releases of a 4-banded event = 3 participations of the subsampled Gaussian
    assert s.epsilon == pytest.approx(epsilon_for([(make_event("uls", 0.5, 1.2), 3)], 1e-5), rel=1e-12)
    assert s.epsilon == pytest.approx(epsilon_for([(make_event("uls", 0.5, 1.2, bands=4), 12)], 1e-5), rel=1e-12)


def test_fixed_participation_takes_every_node_of_the_group_and_is_the_gaussian_mechanism():
    s = UserDPFedAvg(sampling_rate=1.0, participation="fixed", bands=8, seed=1, **ARGS)
    start(s, Grid(), 10)
    assert [r["nodes_sampled"] for r in s.history] == [len(s.groups[(i - 1) % 8]) for i in range(1, 11)]
    # ⌈10/8⌉ = 2 participations at sensitivity 1: the Gaussian mechanism at sensitivity √2 (σ/√2)
    assert s.epsilon == pytest.approx(epsilon_for([(make_event("uls", 1.0, 1.2 / np.sqrt(2)), 1)], 1e-5), rel=1e-6)


def test_banded_noise_over_the_group_count_whitens_to_independent_noise():
    """Every node silent: release i is σC·w_i / (q·|group|), w = C⁻¹z. Whitened with the coefficients it is
    i.i.d. N(0, (σC/E_i)²); unwhitened, consecutive releases are correlated as C⁻¹C⁻ᵀ says."""
    b, rounds, d = 3, 6, 20_000
    s = UserDPFedAvg(sampling_rate=0.5, bands=b, seed=2, max_failed_rounds=rounds + 1, **ARGS)
    grid = Grid(silent={100 + p for p in range(USERS)})
    models = {}
    s.start(grid, ArrayRecord([np.zeros(d)]), num_rounds=rounds,
            evaluate_fn=lambda rnd, arrays: models.__setitem__(rnd, arrays.to_numpy_ndarrays()[0].copy()))
    w = np.array([(models[t] - models[t - 1]) * s.history[t - 1]["expected_count"] / 1.2 for t in range(1, rounds + 1)])
    c = sqrt_coefficients(b)
    z = np.array([sum(c[j] * w[t - j] for j in range(min(b, t + 1))) for t in range(rounds)])
    assert np.std(z, axis=1) == pytest.approx(np.ones(rounds), rel=0.03)
    assert abs(np.corrcoef(z[3], z[4])[0, 1]) < 0.05
    assert np.corrcoef(w[3], w[4])[0, 1] < -0.2     # C⁻¹ of the sqrt strategy: consecutive w anti-correlated


def test_one_band_is_the_independent_drop_in_bit_for_bit():
    a, b = (UserDPFedAvg(sampling_rate=0.2, seed=9, **ARGS, **extra) for extra in ({}, {"bands": 1}))
    ra, rb = start(a, Grid(), 3), start(b, Grid(), 3)
    assert np.array_equal(ra.arrays.to_numpy_ndarrays()[0], rb.arrays.to_numpy_ndarrays()[0])
    assert a.epsilon == b.epsilon


def test_a_restarted_banded_ledger_is_a_new_segment_composed_with_the_old(tmp_path):
    """5 releases, then a restart and 3 more: ⌈5/4⌉ + ⌈3/4⌉ = 3 participations, not ⌈8/4⌉ = 2 (a fresh
    stream and fresh groups are a second mechanism); the restarted run samples from its segment's first group."""
    path = tmp_path / "ledger.log"
    args = dict(sampling_rate=0.5, bands=4, ledger_path=path, **ARGS)
    first = UserDPFedAvg(seed=1, **args)
    start(first, Grid(), 5)
    again = UserDPFedAvg(seed=2, **args)
    start(again, Grid(), 3)
    one = make_event("uls", 0.5, 1.2)
    assert again.releases == 8 and again.segment == 5
    assert again.epsilon == pytest.approx(epsilon_for([(one, 3)], 1e-5), rel=1e-12)
    assert again.epsilon > epsilon_for([(make_event("uls", 0.5, 1.2, bands=4), 8)], 1e-5)
    assert again.history[0]["expected_count"] == pytest.approx(0.5 * len(again.groups[0]))
    third = UserDPFedAvg(seed=3, **args)           # the file alone gives the same ε
    third._prepare(ArrayRecord([np.zeros(3)]))
    assert third.epsilon == pytest.approx(again.epsilon, rel=1e-12)
    with pytest.raises(ConfigError) as err:       # another mechanism's ledger: named by its setting
        start(UserDPFedAvg(sampling_rate=0.5, seed=1, ledger_path=path, **ARGS), Grid(), 1)
    assert err.value.key == "ledger_path" and "mechanism" in str(err.value) and "\n" not in str(err.value)


def test_a_refused_group_draw_leaves_no_population_behind():
    s = UserDPFedAvg(sampling_rate=1.0, participation="fixed", bands=USERS + 1, seed=1, **ARGS)
    for _ in range(2):                              # the app retries start(): refused again, never unbanded
        with pytest.raises(ConfigError) as err:
            start(s, Grid(), 1)
        assert err.value.key == "bands"
    assert s.population is None and s.releases == 0


def test_a_sent_round_that_is_never_aggregated_is_refused():
    s = UserDPFedAvg(sampling_rate=0.5, bands=4, seed=1, **ARGS)
    grid = Grid()
    s._prepare(ArrayRecord([np.zeros(3)]))
    from flwr.app import ConfigRecord
    s.configure_train(1, ArrayRecord([np.zeros(3)]), ConfigRecord({"lr": 0.1}), grid)
    with pytest.raises(ConfigError) as err:        # round 2 configured without round 1's aggregate_train
        s.configure_train(2, ArrayRecord([np.zeros(3)]), ConfigRecord({"lr": 0.1}), grid)
    assert err.value.key == "strategy" and "aggregate_train" in str(err.value)


@pytest.mark.parametrize("kwargs,key", [({"bands": 0}, "bands"), ({"bands": 2.5}, "bands"),
                                        ({"bands": "4", "participation": "fixed"}, "bands"),
                                        ({"bands": 8, "bandmf_coefficients": "optimized", "num_rounds": 5},
                                         "num_rounds"),
                                        ({"bands": 4, "accountant": "fl_userdp.accounting.prv:PrvAccountant"},
                                         "accountant"),
                                        ({"participation": "all"}, "participation"),
                                        ({"participation": "fixed", "bands": 4}, "sampling_rate"),
                                        ({"bandmf_coefficients": "best", "bands": 4}, "bandmf_coefficients"),
                                        ({"bandmf_coefficients": "optimized", "bands": 4}, "num_rounds")])
def test_bad_banded_arguments_name_the_argument(kwargs, key):
    with pytest.raises(ConfigError) as err:
        UserDPFedAvg(sampling_rate=0.5, **ARGS, **kwargs)
    assert err.value.key == key


def test_more_bands_than_nodes_is_one_line():
    with pytest.raises(ConfigError) as err:
        start(UserDPFedAvg(sampling_rate=0.5, bands=USERS + 1, **ARGS), Grid(), 1)
    assert err.value.key == "bands" and str(USERS) in str(err.value)


def test_target_epsilon_calibrates_for_the_participations():
    s = UserDPFedAvg(sampling_rate=0.5, target_epsilon=2.0, num_rounds=40, bands=8, clipping_norm=1.0, delta=1e-5)
    eps = epsilon_for([(make_event("uls", 0.5, s.sigma), 5)], 1e-5)
    assert eps <= 2.0 and eps == pytest.approx(2.0, rel=0.01)
