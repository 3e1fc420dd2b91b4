"""The exact-sum grid (fl_userdp.mechanism.fixed_point): a round's sum is the same bits for any count of records a
run can produce and any grouping into nodes (int64 units at the server, a bounded float64 sum per node), and a
grid that drops signal (C far above the records' norms) is measured and warned about once."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from fl_userdp.config import parse_config
from fl_userdp.errors import ConfigError
from fl_userdp.mechanism.fixed_point import (EXACT_RECORDS, GRID_LOSS_WARN, from_units, grid_loss, grid_sum,
                                             scaled_grid_sum, to_units)
from fl_userdp.server.strategy import GridLossWarning, NodeReply, NodeRequest, UserDPStrategy

C = 1.99            # grid unit 2^-30: a record is up to ~2^31 units
RECORDS = 9_000_000  # one-dimensional records: their sum passes 2^53 units


def node_sums(units: np.ndarray, nodes: int) -> list[tuple[np.ndarray, float]]:
    """(users, the node's float64 grid sum) for `nodes` equal shards of the records (each < 2^22 records)."""
    out = []
    for ids in np.array_split(np.arange(units.size), nodes):
        out.append((ids, float(np.ldexp(float(units[ids].sum()), -30))))  # exact: < 2^53 units per node
    return out


def collect(strategy: UserDPStrategy, shards) -> np.ndarray:
    requests = {n: NodeRequest("uls", 1, ids) for n, (ids, _) in enumerate(shards)}
    replies = {n: NodeReply([np.array([value])], ids.size) for n, (ids, value) in enumerate(shards)}
    total, st = strategy.collect(requests, replies)
    assert st["nodes_replied"] == len(shards)
    return total


def test_nine_million_records_sum_to_the_same_bits_on_3_and_1000_nodes():
    rng = np.random.default_rng(0)
    units = rng.integers(2 ** 30, 2 ** 31 - 2 ** 20, size=RECORDS, dtype=np.int64)  # records of norm in [1, C)
    exact = int(units.sum())
    assert exact > 2 ** 53  # beyond what a float64 sum holds exactly
    cfg = parse_config({"privacy.clip-norm": C, "privacy.noise-multiplier": 1.0, "data.num-users": 64})
    strategy = UserDPStrategy(cfg, np.ones(RECORDS, np.int64), [np.zeros(1)], 1.0)
    few, many = node_sums(units, 3), node_sums(units, 1000)
    # what a float64 accumulation over the nodes gives: it depends on the grouping (the old server)
    assert sum(v for _, v in few) != sum(v for _, v in many)
    a, b = collect(strategy, few), collect(strategy, many)
    assert a.tobytes() == b.tobytes()
    assert a[0] == float(exact) * 2.0 ** -30  # the exact sum, rounded once


def test_units_are_exact_and_order_free_beyond_a_float64_sum():
    """The grid functions themselves: chunks' int64 units add up to the whole's, in any order."""
    rng = np.random.default_rng(1)
    records = rng.uniform(1.0, 1.98, size=(RECORDS, 1))
    parts = [to_units(grid_sum(records[i:j], C), C) for i, j in ((0, 4_000_000), (4_000_000, 8_000_000),
                                                                  (8_000_000, RECORDS))]
    assert all(not np.any(rest) for _, rest in parts)  # node sums sit on the grid
    units = sum(u for u, _ in parts)
    backwards = sum(u for u, _ in reversed(parts))
    small = sum(to_units(grid_sum(records[i:i + 9_000], C), C)[0] for i in range(0, RECORDS, 9_000))
    assert units[0] == backwards[0] == small[0]
    assert from_units(units, C).tobytes() == from_units(small, C).tobytes()
    with pytest.raises(ValueError, match=str(EXACT_RECORDS)):
        grid_sum(records, C)  # one float64 sum of 9 M records: refused, it would not be exact
    with pytest.raises(ValueError, match=str(EXACT_RECORDS)):
        scaled_grid_sum(np.ones(RECORDS), records, C)


def test_a_node_that_could_hold_more_than_the_exact_records_is_refused():
    with pytest.raises(ConfigError) as err:
        parse_config({"sim.users-per-node": 9_000_000})
    assert err.value.key == "sim.users-per-node" and str(EXACT_RECORDS) in str(err.value)
    with pytest.raises(ConfigError) as els:
        parse_config({"privacy.mode": "els", "privacy.max-examples-per-user": 64, "sim.users-per-node": 100_000})
    assert els.value.key == "sim.users-per-node"
    parse_config({"sim.users-per-node": EXACT_RECORDS})  # the bound itself is fine


def test_grid_loss_measures_what_truncation_drops():
    rng = np.random.default_rng(2)
    records = rng.normal(size=(50, 400)) * 1e-3  # norms ~0.02
    raw = records.sum(axis=0)
    for clip, big in ((1.0, False), (1e6, True), (1e9, True)):
        lost = []
        total = scaled_grid_sum(np.ones(50), records, clip, lost)
        assert lost[0] == pytest.approx(grid_loss(raw, total))
        assert (lost[0] > GRID_LOSS_WARN) == big
    assert lost[0] == 1.0 and grid_loss(np.zeros(3), np.zeros(3)) == 0.0


def test_the_tiny_lm_loses_2_4_percent_at_c_1e6_and_all_at_1e9():
    """The figures of the grid's loss on the default tiny LM (16 users, 4 examples each, ELS at the start
    weights), measured by the node: ~0 at C = 1, 1.6 % at C = 10^6 (2.4 % before the fixed physical batch), everything at C = 10^9."""
    from fl_userdp.clients.compute import Worker
    from fl_userdp.local.model import get_trainable

    base = {"privacy.mode": "els", "data.num-users": 64}
    worker = Worker(parse_config(base))  # a fresh worker: it measures once per C
    users = np.arange(16)
    take = [min(int(worker.corpus.counts[u]), 4) for u in users]
    offsets, ids = np.concatenate([[0], np.cumsum(take)]), np.concatenate([np.arange(t) for t in take])

    def node(clip: float, **extra):
        cfg = parse_config({**base, "privacy.clip-norm": clip, **extra})
        return worker.els(cfg, get_trainable(worker.model), users, offsets, ids)

    assert node(1.0).grid_loss < 1e-6
    assert 0.005 < node(1e6).grid_loss < 0.05        # 2.4 % measured before the fixed physical batch, 1.6 % after
    at_1e9 = node(1e9)
    assert at_1e9.grid_loss == 1.0 and not np.any(at_1e9.total)
    assert node(1e6).grid_loss is None  # measured once per C
    assert node(2e6, **{"privacy.publish-diagnostics": False}).grid_loss is None  # a diagnostic: not measured


def test_the_run_warns_once_with_the_measured_loss():
    from fl_userdp.server.inprocess import InProcessTransport

    cfg = parse_config({"privacy.clip-norm": 1e6, "privacy.noise-multiplier": 0.0, "privacy.mode": "els",
                        "data.num-users": 64, "privacy.sampling-rate": 0.25, "model.hidden-size": 16,
                        "model.num-layers": 1, "model.seq-len": 16, "train.rounds": 3})
    from fl_userdp.server.runner import prepare

    setup = prepare(cfg)
    strategy = UserDPStrategy(cfg, setup.counts, setup.init_weights, 0.0)
    transport = InProcessTransport(cfg)
    with pytest.warns(GridLossWarning, match=r"dropped \d[\d.]* % of a node's clipped sum") as caught:
        for _ in range(3):
            strategy.run_round(transport)
    assert len([w for w in caught if w.category is GridLossWarning]) == 1
    quiet = UserDPStrategy(parse_config({"privacy.clip-norm": 1.0, "privacy.noise-multiplier": 0.0,
                                         "privacy.mode": "els", "data.num-users": 64, "privacy.sampling-rate": 0.25,
                                         "model.hidden-size": 16, "model.num-layers": 1, "model.seq-len": 16}),
                           setup.counts, setup.init_weights, 0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", GridLossWarning)
        quiet.run_round(InProcessTransport(quiet.cfg))
