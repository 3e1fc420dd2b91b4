"""δ < 1/N: δ is the chance that the guarantee fails outright, and at δ >= 1/N publishing one user's data whole,
that user drawn at random, is (0, δ)-DP. Runs (the command line, the Python API, either backend: they share
`fl_userdp.server.runner.prepare`) and the drop-in strategy refuse δ >= 1/N once N is known, with one line
giving the rule and the largest δ allowed. (The command line's cases are in tests/test_refusals.py.)"""
from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ArrayRecord

import fl_userdp
from fl_userdp.accounting import check_delta_for_users
from fl_userdp.errors import ConfigError
from fl_userdp.server.dropin import UserDPFedAvg

TINY = {"data.num-users": 64, "data.heldout-users": 2, "sim.users-per-node": 16, "privacy.sampling-rate": 0.25,
        "privacy.noise-multiplier": 1.0, "privacy.max-examples-per-user": 2, "model.vocab-size": 64,
        "model.hidden-size": 16, "model.num-layers": 1, "model.num-heads": 2, "model.seq-len": 16,
        "model.lora-rank": 2, "train.eval-examples": 8, "train.eval-every": 0, "train.rounds": 1}


def test_the_rule_and_its_edge():
    assert check_delta_for_users(np.nextafter(1 / 64, 0), 64) < 1 / 64
    with pytest.raises(ConfigError) as err:
        check_delta_for_users(1 / 64, 64, "privacy.delta")
    assert str(err.value).startswith("privacy.delta must be < 1/N = 0.015625 for N = 64 training users")


@pytest.mark.parametrize("delta", [0.5, 0.1])
def test_the_api_refuses_before_anything_runs(tmp_path, delta):
    """δ = 0.5 and 0.1 were accepted for 64 users: σ calibrated to 0.0156 and the run reported ε = 0.0."""
    out = tmp_path / "run"
    with pytest.raises(ConfigError) as err:
        fl_userdp.simulate({**TINY, "privacy.delta": delta, "privacy.noise-multiplier": "auto"}, modes="els",
                           backend="inprocess", out=out)
    assert err.value.key == "privacy.delta" and "< 1/N = 0.015625 for N = 64 training users" in str(err.value)
    assert not (out / "metrics.jsonl").exists() and not list(out.glob("releases-*.log"))


class Nodes:
    """A grid of `n` connected nodes that must never be sent anything."""

    def __init__(self, n: int) -> None:
        self.ids, self.sent = list(range(100, 100 + n)), []

    def get_node_ids(self):
        return list(self.ids)

    def send_and_receive(self, messages, timeout=None):
        self.sent.extend(messages)
        return []


def test_the_dropin_refuses_at_start_with_n_nodes():
    strategy = UserDPFedAvg(sampling_rate=0.25, noise_multiplier=1.0, clipping_norm=1.0, delta=0.1, seed=1)
    grid = Nodes(64)
    with pytest.raises(ConfigError) as err:
        strategy.start(grid, ArrayRecord([np.zeros(3)]), num_rounds=2)
    assert err.value.key == "delta" and "< 1/N = 0.015625 for N = 64" in str(err.value)
    assert grid.sent == [] and strategy.releases == 0

