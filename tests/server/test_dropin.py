"""`UserDPFedAvg` in an unmodified quickstart-style Flower app (a ClientApp that knows nothing of fl-userdp),
through a stand-in grid that runs the real ClientApp on the real messages, as Flower's engine does."""
from __future__ import annotations

import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, RecordDict
from flwr.common.constant import ErrorCode
from flwr.supercore.task_identity import TaskIdentity

from fl_userdp.accounting import epsilon_for, make_event
from fl_userdp.errors import ConfigError
from fl_userdp.server.dropin import UserDPFedAvg

# ---- the quickstart-style app of experiments/dropin (it knows nothing of fl-userdp) ------------------------
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments" / "dropin"))
from quickstart_app import DIM, app as quickstart, local_data  # noqa: E402

USERS = 200


@pytest.fixture(autouse=True)
def task_identity():
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 7, 1, 0
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


class Grid:
    """Runs the ClientApp on every message; nodes in `broken` raise (an error reply), `silent` never answer."""

    def __init__(self, broken=(), silent=()):
        self.contexts = {100 + p: Context(run_id=7, node_id=100 + p, state=RecordDict(),
                                          node_config={"partition-id": p, "num-partitions": USERS}, run_config={})
                         for p in range(USERS)}
        self.broken, self.silent, self.sent = set(broken), set(silent), []

    def get_node_ids(self):
        return list(self.contexts)

    def send_and_receive(self, messages, timeout=None):
        out = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = uuid.uuid4().hex
            nid = msg.metadata.dst_node_id
            self.sent.append(nid)
            if nid in self.silent:
                continue
            if nid in self.broken:
                out.append(Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason="boom"), reply_to=msg))
                continue
            out.append(quickstart(msg, self.contexts[nid]))
        return out


def start(strategy, grid, rounds):
    return strategy.start(grid, ArrayRecord([np.zeros(DIM)]), num_rounds=rounds, train_config=ConfigRecord({"lr": 0.1}))


def test_no_noise_one_round_is_the_clipped_sum_over_the_expected_cohort():
    s = UserDPFedAvg(sampling_rate=0.25, noise_multiplier=0.0, clipping_norm=0.5, delta=1e-5, seed=3)
    grid = Grid(broken={100 + 4}, silent={100 + 9})
    res = start(s, grid, 1)
    want = np.zeros(DIM)
    for nid in s.requested:
        if nid in grid.broken or nid in grid.silent:
            continue
        x, y = local_data(nid - 100)
        upd = -0.1 * x.T @ (0 - y) / len(y)
        want += upd * min(1.0, 0.5 / np.linalg.norm(upd))
    # each clipped update is put on the fixed-point grid (unit ≤ C·2^-30) before it is added
    np.testing.assert_allclose(res.arrays.to_numpy_ndarrays()[0], want / (0.25 * USERS), rtol=1e-8)
    rec = s.history[0]
    assert rec["nodes_sampled"] == len(s.requested) and rec["failures"] == sum(
        n in grid.broken | grid.silent for n in s.requested)


def test_poisson_cohorts_ledger_and_budget_stop():
    s = UserDPFedAvg(sampling_rate=0.1, noise_multiplier=1.2, clipping_norm=1.0, delta=1e-5, seed=1)
    start(s, Grid(), 30)
    sizes = [r["nodes_sampled"] for r in s.history]
    assert len(set(sizes)) > 3 and abs(np.mean(sizes) - 20) < 4       # Poisson, mean q·N = 20
    event = make_event("uls", 0.1, 1.2)
    assert s.epsilon == pytest.approx(epsilon_for([(event, 30)], 1e-5), rel=1e-12)
    # max_epsilon between ε after 2 and after 3 rounds: exactly 2 releases, then nothing is sent or changed
    e2, e3 = (epsilon_for([(event, t)], 1e-5) for t in (2, 3))
    b = UserDPFedAvg(sampling_rate=0.1, noise_multiplier=1.2, clipping_norm=1.0, delta=1e-5,
                     max_epsilon=(e2 + e3) / 2, seed=2)
    grid = Grid()
    res = start(b, grid, 6)
    assert len(b.history) == 2 and b.epsilon == pytest.approx(e2) and "stopped after round 2" in b.stop_reason
    assert len(grid.sent) == sum(r["nodes_sampled"] for r in b.history)
    # the run ended there: the Result holds the two released rounds and their weights, nothing after
    assert sorted(res.train_metrics_clientapp) == [1, 2]
    assert res.train_metrics_clientapp[2]["epsilon"] == pytest.approx(e2)
    assert res.arrays is not None and np.any(res.arrays.to_numpy_ndarrays()[0] != 0)


def test_noise_is_full_scale_and_the_denominator_is_the_expected_count():
    """With every node silent, the released update is the noise alone: std σC / (q·N) per coordinate."""
    s = UserDPFedAvg(sampling_rate=0.2, noise_multiplier=2.0, clipping_norm=0.5, delta=1e-5)  # OS entropy
    grid = Grid(silent={100 + p for p in range(USERS)})
    big = ArrayRecord([np.zeros(40_000)])
    res = s.start(grid, big, num_rounds=1)
    assert np.std(res.arrays.to_numpy_ndarrays()[0]) == pytest.approx(2.0 * 0.5 / (0.2 * USERS), rel=0.02)
    assert s.history[0]["nodes_replied"] == 0 and s.accountant.steps == 1


@pytest.mark.parametrize("kwargs,key", [({"sampling_rate": 0}, "sampling_rate"), ({"clipping_norm": -1}, "clipping_norm"),
                                        ({"delta": 1.0}, "delta"), ({"accountant": "nope"}, "accountant")])
def test_bad_arguments_name_the_argument(kwargs, key):
    args = {"sampling_rate": 0.1, "noise_multiplier": 1.0, "clipping_norm": 1.0, "delta": 1e-5, **kwargs}
    with pytest.raises(ConfigError) as err:
        UserDPFedAvg(**args)
    assert err.value.key == key


@pytest.mark.slow
def test_side_by_side_with_flowers_own_dp_wrapper_through_the_engine():
    """One Flower simulation: the drop-in and Flower's DP wrapper with its accountant on the same app."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "experiments/dropin/compare_accountants.py", "--users", "30",
                           "--rounds", "3"], cwd=root, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(res["ours_nodes_sampled"]) == 3
    want = epsilon_for([(make_event("uls", 0.2, 1.0), 3)], 1e-5)
    assert res["ours_epsilon_pld_poisson"] == pytest.approx(want, rel=1e-12)
    assert res["ours_epsilon_pld_poisson"] < res["flower_rdp_with_poisson_amplification"] \
        < res["flower_epsilon_rdp_no_amplification"]


class EchoTwice(Grid):
    """Every sampled node's reply arrives twice (a retry, or a node answering twice)."""

    def send_and_receive(self, messages, timeout=None):
        out = super().send_and_receive(messages, timeout)
        return out + out


def test_one_reply_per_sampled_node():
    """A node is one user: a second reply from it is not summed (it would double that user's sensitivity)."""
    once = UserDPFedAvg(sampling_rate=0.25, noise_multiplier=0.0, clipping_norm=0.5, delta=1e-5, seed=3)
    twice = UserDPFedAvg(sampling_rate=0.25, noise_multiplier=0.0, clipping_norm=0.5, delta=1e-5, seed=3)
    a = start(once, Grid(), 1).arrays.to_numpy_ndarrays()[0]
    b = start(twice, EchoTwice(), 1).arrays.to_numpy_ndarrays()[0]
    np.testing.assert_array_equal(a, b)
    assert twice.history[0]["nodes_replied"] == len(twice.requested)


# ---- real models: arrays that are not weights, rejected rounds, what is logged ------------------------------
def bn_app():
    """A quickstart-style app whose model has a BatchNorm: its replies carry num_batches_tracked (int64)."""
    from flwr.app import Array, MetricRecord
    from flwr.clientapp import ClientApp

    app = ClientApp()

    @app.train()
    def train(msg, context):
        rec = msg.content["arrays"]
        x, y = local_data(int(context.node_config["partition-id"]))
        w = rec["w"].numpy()
        new = w - 0.1 * x.T @ (x @ w - y) / len(y)
        out = ArrayRecord({"w": Array(new), "bn.running_mean": Array(rec["bn.running_mean"].numpy() + x.mean(0)),
                           "bn.num_batches_tracked": Array(np.asarray(rec["bn.num_batches_tracked"].numpy() + 1))})
        return Message(RecordDict({"arrays": out, "metrics": MetricRecord({"num-examples": len(y)})}),
                       reply_to=msg)

    return app


def record(**arrays):
    from flwr.app import Array

    return ArrayRecord({k.replace("__", "."): Array(np.asarray(v)) for k, v in arrays.items()})


def bn_arrays():
    return record(w=np.zeros(DIM), bn__running_mean=np.zeros(DIM), bn__num_batches_tracked=np.array(0, np.int64))


def test_batchnorm_state_is_refused_before_round_one_or_kept_out_of_the_release(monkeypatch):
    s = UserDPFedAvg(sampling_rate=0.5, noise_multiplier=0.5, clipping_norm=1.0, delta=1e-5, seed=0)
    grid = Grid()
    with pytest.raises(ConfigError) as err:
        s.start(grid, bn_arrays(), num_rounds=2)
    msg = str(err.value)
    assert "bn.running_mean" in msg and "GroupNorm" in msg and "frozen=['bn.running_mean']" in msg
    assert "\n" not in msg and not grid.sent and s.accountant.steps == 0
    ints = record(w=np.zeros(DIM), bn__num_batches_tracked=np.array(0, np.int64))
    with pytest.raises(ConfigError, match="bn.num_batches_tracked.*int64"):
        s.start(grid, ints, num_rounds=2)
    with pytest.raises(ConfigError, match="frozen"):
        UserDPFedAvg(sampling_rate=0.5, noise_multiplier=0.5, clipping_norm=1.0, delta=1e-5,
                     frozen=["no.such"]).start(grid, ints, num_rounds=1)
    # kept out: sent as at the start every round, the replies' values ignored; the weights train
    monkeypatch.setattr(sys.modules[__name__], "quickstart", bn_app())
    k = UserDPFedAvg(sampling_rate=0.5, noise_multiplier=0.5, clipping_norm=1.0, delta=1e-5, seed=0,
                     frozen=["bn.running_mean", "bn.num_batches_tracked"])
    res = k.start(Grid(), bn_arrays(), num_rounds=2, train_config=ConfigRecord({"lr": 0.1}))
    assert [r["nodes_replied"] for r in k.history] == [r["nodes_sampled"] for r in k.history]
    assert res.arrays["bn.num_batches_tracked"].numpy() == 0
    assert res.arrays["bn.num_batches_tracked"].numpy().dtype == np.int64
    assert np.all(res.arrays["bn.running_mean"].numpy() == 0) and np.any(res.arrays["w"].numpy() != 0)


def test_rounds_whose_replies_are_all_rejected_stop_the_run_with_the_reason(monkeypatch, caplog):
    from flwr.app import Array, MetricRecord
    from flwr.clientapp import ClientApp

    bad = ClientApp()

    @bad.train()
    def train(msg, context):  # answers with the wrong shape: rejected, never applied
        return Message(RecordDict({"arrays": ArrayRecord([np.zeros(DIM + 1)]),
                                   "metrics": MetricRecord({"num-examples": 1})}), reply_to=msg)

    monkeypatch.setattr(sys.modules[__name__], "quickstart", bad)
    s = UserDPFedAvg(sampling_rate=0.1, noise_multiplier=1.0, clipping_norm=1.0, delta=1e-5, seed=0,
                     max_failed_rounds=2)
    with caplog.at_level("INFO", logger="flwr"):
        res = start(s, Grid(), 10)
    assert len(s.history) == 2 and all(r["rejected"] == r["nodes_sampled"] > 0 for r in s.history)
    assert s.stop_reason.startswith("failures: 2 rounds in a row") and "shape (6,)" in s.stop_reason
    assert sorted(res.train_metrics_clientapp) == [1, 2]
    text = caplog.text
    assert "replies rejected" in text and "failures: 2 rounds in a row" in text and "stopped after 2" in text


def test_start_line_labels_and_infinite_epsilon(caplog):
    s = UserDPFedAvg(sampling_rate=0.1, noise_multiplier=0.0, clipping_norm=0.5, delta=1e-5, seed=0,
                     max_epsilon=None)
    with caplog.at_level("INFO", logger="flwr"):
        res = start(s, Grid(), 1)
    text = caplog.text
    for part in ("q=0.1", "noise multiplier 0", "C=0.5", "delta 1e-05", "no budget", "client-side evaluation: off",
                 "outside it", "population N=200 nodes", "noise std per coordinate is σC/(q·N)=0"):
        assert part in text, part
    m = res.train_metrics_clientapp[1]
    assert m["epsilon"] == float("inf") and "epsilon inf" in text
    assert {k for k in m.keys() if not k.startswith("diagnostics.")} == {
        "round", "released", "epsilon", "delta", "noise_multiplier", "clip_norm", "expected_count"}
    assert m["diagnostics.nodes_sampled"] == s.history[0]["nodes_sampled"]
    quiet = UserDPFedAvg(sampling_rate=0.1, noise_multiplier=1.0, clipping_norm=0.5, delta=1e-5, seed=0,
                         publish_diagnostics=False)
    assert not any(k.startswith("diagnostics.") for k in start(quiet, Grid(), 1).train_metrics_clientapp[1].keys())
