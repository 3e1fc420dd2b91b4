"""`UserDPFedAvg` in an unmodified quickstart-style Flower app (a ClientApp that knows nothing of fl-userdp),
through a stand-in grid that runs the real ClientApp on the real messages, as Flower's engine does."""
from __future__ import annotations

import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.common.constant import ErrorCode

from fl_userdp.accounting import epsilon_for, make_event
from fl_userdp.errors import ConfigError
from fl_userdp.server.dropin import UserDP, UserDPFedAvg, non_weight_arrays, sum_within_bound

# ---- the quickstart-style app of experiments/dropin (it knows nothing of fl-userdp) ------------------------
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments" / "dropin"))
from quickstart_app import DIM, app as quickstart, local_data  # noqa: E402

USERS = 200


@pytest.fixture(autouse=True)
def task_identity():
    """The run a Message belongs to (Flower >= 1.41 takes it from TaskIdentity; older versions need none)."""
    try:
        from flwr.supercore.task_identity import TaskIdentity
    except ImportError:
        yield
        return
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
            try:
                out.append(quickstart(msg, self.contexts[nid]))
            except Exception as err:  # noqa: BLE001 - as Flower's engine: an exception becomes an error reply
                reason = str(type(err)) + ":<'" + str(err) + "'>"
                out.append(Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=msg))
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
    assert "bn.running_mean" in msg and "GroupNorm" in msg and "frozen=non_weight_arrays(initial_arrays)" in msg
    assert "\n" not in msg and not grid.sent and s.releases == 0
    ints = record(w=np.zeros(DIM), bn__num_batches_tracked=np.array(0, np.int64))
    with pytest.raises(ConfigError, match="bn.num_batches_tracked.*int64"):
        s.start(grid, ints, num_rounds=2)
    with pytest.raises(ConfigError, match="frozen"):
        UserDPFedAvg(sampling_rate=0.5, noise_multiplier=0.5, clipping_norm=1.0, delta=1e-5,
                     frozen=["no.such"]).start(grid, ints, num_rounds=1)
    # kept out: sent as at the start every round, the replies' values ignored; the weights train
    monkeypatch.setattr(sys.modules[__name__], "quickstart", bn_app())
    k = UserDPFedAvg(sampling_rate=0.5, noise_multiplier=0.5, clipping_norm=1.0, delta=1e-5, seed=0,
                     frozen=non_weight_arrays(bn_arrays()))
    res = k.start(Grid(), bn_arrays(), num_rounds=2, train_config=ConfigRecord({"lr": 0.1}))
    assert [r["nodes_replied"] for r in k.history] == [r["nodes_sampled"] for r in k.history]
    assert res.arrays["bn.num_batches_tracked"].numpy() == 0
    assert res.arrays["bn.num_batches_tracked"].numpy().dtype == np.int64
    assert np.all(res.arrays["bn.running_mean"].numpy() == 0) and np.any(res.arrays["w"].numpy() != 0)


def test_many_batchnorm_arrays_one_bounded_message_and_a_function_that_lists_them(caplog):
    """A DenseNet-sized model (363 BatchNorm arrays): one error naming how many, the first few and how to list
    them all (not one array per attempt); the list as a function; the start lines stay bounded with them frozen."""
    torch = pytest.importorskip("torch")
    arrays = {"w": np.zeros(DIM)}
    for b in range(121):
        arrays.update({f"features.block{b}.norm.running_mean": np.zeros(4, np.float32),
                       f"features.block{b}.norm.running_var": np.ones(4, np.float32),
                       f"features.block{b}.norm.num_batches_tracked": np.array(0, np.int64)})
    rec = ArrayRecord({k: Array(v) for k, v in arrays.items()})
    s = UserDPFedAvg(sampling_rate=0.1, noise_multiplier=1.0, clipping_norm=1.0, delta=1e-5, seed=0)
    with pytest.raises(ConfigError) as err:
        s.start(Grid(), rec, num_rounds=1)
    msg = str(err.value)
    assert "363 of 364 arrays" in msg and "features.block0.norm.running_mean" in msg and "... 360 more" in msg
    assert "block5." not in msg and len(msg) < 1500 and "\n" not in msg
    assert "got 'float32'" not in msg and "stay at their initial values" in msg
    assert "BatchNorm statistics" in msg and "batch counter, int64" in msg
    listed = non_weight_arrays(rec)
    assert len(listed) == 363 and "w" not in listed
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2), torch.nn.Linear(2, 2))
    assert non_weight_arrays(net) == ["1.running_mean", "1.running_var", "1.num_batches_tracked"]
    frozen = UserDPFedAvg(sampling_rate=0.1, noise_multiplier=1.0, clipping_norm=1.0, delta=1e-5, seed=0,
                          frozen=listed)
    caplog.clear()
    with caplog.at_level("INFO", logger="flwr"):
        frozen.start(Grid(), rec, num_rounds=1)
    assert max(len(r.getMessage()) for r in caplog.records) < 600
    assert "(363 in all)" in caplog.text and "initial values" in caplog.text


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


# ---- a wrapper of any strategy --------------------------------------------------------------------------------
def test_wrapped_fedavg_is_the_dropin_bit_for_bit():
    """`UserDPFedAvg` is the FedAvg case of `UserDP`: same cohorts, same noise, same weights, same ε."""
    from flwr.serverapp.strategy import FedAvg

    args = dict(sampling_rate=0.2, noise_multiplier=1.0, clipping_norm=0.5, delta=1e-5, seed=4)
    a, b = UserDPFedAvg(**args), UserDP(FedAvg(fraction_evaluate=0.0), **args)
    ra, rb = start(a, Grid(), 3), start(b, Grid(), 3)
    np.testing.assert_array_equal(ra.arrays.to_numpy_ndarrays()[0], rb.arrays.to_numpy_ndarrays()[0])
    assert [r["epsilon"] for r in a.history] == [r["epsilon"] for r in b.history]
    assert [r["nodes_sampled"] for r in a.history] == [r["nodes_sampled"] for r in b.history]
    event = make_event("uls", 0.2, 1.0)
    assert b.epsilon == pytest.approx(epsilon_for([(event, 3)], 1e-5), rel=1e-12)


def test_fedadam_steps_with_the_noised_mean():
    """The wrapped FedAdam's pseudo-gradient is the released mean: its Adam step on it, nothing else."""
    from flwr.serverapp.strategy import FedAdam

    args = dict(sampling_rate=0.25, noise_multiplier=0.5, clipping_norm=0.5, delta=1e-5, seed=3)
    mean = start(UserDPFedAvg(**args), Grid(), 1).arrays.to_numpy_ndarrays()[0]     # 0 + the released mean
    adam = UserDP(FedAdam(eta=0.1, beta_1=0.9, beta_2=0.99, tau=1e-3), **args)
    got = start(adam, Grid(), 1).arrays.to_numpy_ndarrays()[0]
    m, v = 0.1 * mean, 0.01 * mean ** 2
    eta = 0.1 * np.sqrt(1 - 0.99 ** 2) / (1 - 0.9 ** 2)
    np.testing.assert_allclose(got, eta * m / (np.sqrt(v) + 1e-3), rtol=1e-6)
    assert adam.history[0]["epsilon"] == pytest.approx(epsilon_for([(make_event("uls", 0.25, 0.5), 1)], 1e-5))


class OwnLoop:
    """Parts of an app's FedAvg subclass with its own start(): a learning-rate schedule in configure_train,
    results per round and a best-model checkpoint from the server-side evaluation (as Flower's advanced example)."""

    @staticmethod
    def strategy():
        from flwr.serverapp.strategy import FedAvg

        class CustomFedAvg(FedAvg):
            def configure_train(self, server_round, arrays, config, grid):
                if server_round == 2:
                    config["lr"] = config["lr"] * 0.5
                return super().configure_train(server_round, arrays, config, grid)

            def start(self, grid, initial_arrays, num_rounds=3, timeout=3600, train_config=None,
                      evaluate_config=None, evaluate_fn=None):
                from flwr.serverapp.strategy import Result
                self.results, self.checkpoints, self.started = [], [], True
                result, arrays = Result(), initial_arrays
                for rnd in range(1, num_rounds + 1):
                    replies = grid.send_and_receive(self.configure_train(rnd, arrays, train_config, grid))
                    new, metrics = self.aggregate_train(rnd, replies)
                    if new is not None:
                        result.arrays = arrays = new
                    if metrics is not None:
                        result.train_metrics_clientapp[rnd] = metrics
                    grid.send_and_receive(self.configure_evaluate(rnd, arrays, evaluate_config or ConfigRecord(),
                                                                  grid))
                    res = evaluate_fn(rnd, arrays) if evaluate_fn else None
                    if res is not None:
                        self.checkpoints.append(rnd)
                    self.results.append({"round": rnd, "train": dict(metrics or {}), "eval": dict(res or {})})
                self.finished = True
                return result

        return CustomFedAvg(fraction_evaluate=0.5)


def test_the_wrapped_strategys_own_start_runs_and_the_budget_stop_ends_it_cleanly():
    event = make_event("uls", 0.1, 1.2)
    e2, e3 = (epsilon_for([(event, t)], 1e-5) for t in (2, 3))
    inner = OwnLoop.strategy()
    s = UserDP(inner, sampling_rate=0.1, noise_multiplier=1.2, clipping_norm=1.0, delta=1e-5,
               max_epsilon=(e2 + e3) / 2, seed=2)
    grid, evaluated = Grid(), []

    def evaluate_fn(rnd, arrays):
        evaluated.append(rnd)
        return MetricRecord({"accuracy": float(rnd)})

    res = s.start(grid, ArrayRecord([np.zeros(DIM)]), num_rounds=5, train_config=ConfigRecord({"lr": 0.1}),
                  evaluate_fn=evaluate_fn)
    assert inner.started and inner.finished                  # its own loop ran to its end, no exception
    assert "configure_train" not in vars(inner)              # its methods are its own again
    assert [r["round"] for r in inner.results] == [1, 2, 3, 4, 5]
    assert [sorted(r["train"]) != [] for r in inner.results] == [True, True, False, False, False]
    assert inner.results[1]["train"]["epsilon"] == pytest.approx(e2)
    assert evaluated == [1, 2] and inner.checkpoints == [1, 2]    # no evaluation of an unchanged model
    assert sorted(res.train_metrics_clientapp) == [1, 2] and res.arrays is not None
    assert len(grid.sent) == sum(r["nodes_sampled"] for r in s.history) and "stopped after round 2" in s.stop_reason
    # its learning-rate schedule reached the nodes (the config it changed is what was sent)
    assert inner.results[0]["train"]["diagnostics.nodes_sampled"] == s.history[0]["nodes_sampled"]


def test_a_wrapper_is_a_strategy_to_flowers_loop_too():
    """Used directly (its methods called by a loop), the wrapper checks the arrays at the first round."""
    from flwr.serverapp.strategy import FedAvg
    s = UserDP(FedAvg(), sampling_rate=0.5, noise_multiplier=1.0, clipping_norm=1.0, delta=1e-5, seed=0)
    with pytest.raises(ConfigError, match="num_batches_tracked"):
        s.configure_train(1, record(w=np.zeros(DIM), bn__num_batches_tracked=np.array(0)), ConfigRecord(), Grid())
    with pytest.raises(ConfigError) as err:
        UserDP(object(), sampling_rate=0.5, noise_multiplier=1.0, clipping_norm=1.0, delta=1e-5)
    assert err.value.key == "strategy"


# ---- client-side clipping (the secure-aggregation trust model) -------------------------------------------------
def clipping_app():
    from flwr.clientapp import ClientApp

    from fl_userdp.clients.dropin import userdp_clip_mod

    app, plain = ClientApp(mods=[userdp_clip_mod]), quickstart

    @app.train()
    def train(msg, context):
        return plain(msg, context)

    return app


def test_client_side_clipping_gives_the_server_side_release(monkeypatch):
    """Each node clips its own update (the mod); the server sums, checks and noises: the same release as clipping
    on the server, to float64 rounding."""
    args = dict(sampling_rate=0.25, noise_multiplier=0.0, clipping_norm=0.5, delta=1e-5, seed=3)
    on_server = UserDPFedAvg(**args)
    server = start(on_server, Grid(), 2).arrays.to_numpy_ndarrays()[0]
    monkeypatch.setattr(sys.modules[__name__], "quickstart", clipping_app())
    grid = SpyGrid()
    s = UserDPFedAvg(**args, clipping="client")
    client = start(s, grid, 2).arrays.to_numpy_ndarrays()[0]
    np.testing.assert_allclose(client, server, rtol=1e-9)
    assert all(r["rejected"] == 0 and r["nodes_replied"] > 0 for r in s.history)
    assert [r["clipped"] for r in s.history] == [r["clipped"] for r in on_server.history]   # the mods' flags
    assert all(m.content["config"]["userdp.clip-norm"] == 0.5 for m in grid.messages)
    assert s.epsilon == pytest.approx(epsilon_for([(make_event("uls", 0.25, 0.0), 2)], 1e-5))


def test_client_side_mode_rejects_an_update_the_node_did_not_clip(caplog):
    """Without the mod the updates arrive unclipped: above C they are rejected, the reason naming the mod."""
    s = UserDPFedAvg(sampling_rate=0.25, noise_multiplier=0.0, clipping_norm=0.01, delta=1e-5, seed=3,
                     clipping="client", max_failed_rounds=1)
    with caplog.at_level("INFO", logger="flwr"):
        res = start(s, Grid(), 3)
    assert s.history[0]["rejected"] == s.history[0]["nodes_sampled"] > 0 and len(s.history) == 1
    assert "userdp_clip_mod" in s.stop_reason and "userdp_clip_mod" in caplog.text
    np.testing.assert_array_equal(res.arrays.to_numpy_ndarrays()[0], np.zeros(DIM))   # only (zero) noise released


def test_the_sum_check_and_the_mods_bound_after_the_cast():
    from fl_userdp.clients.dropin import clip_update
    from fl_userdp.mechanism.fixed_point import record_clip_norm

    assert sum_within_bound(np.array([3.0, 4.0]), 5, 1.0) and not sum_within_bound(np.array([3.0, 4.0]), 4, 1.2)
    rng = np.random.default_rng(0)
    for trial in range(50):
        sent = {"a": (rng.normal(size=500) * 10 ** rng.uniform(-2, 4)).astype(np.float32),
                "b": rng.normal(size=(7, 3)).astype(np.float16)}
        reply = {k: (v + rng.normal(size=v.shape)).astype(v.dtype) for k, v in sent.items()}
        clip = 10 ** rng.uniform(-3, 1)
        out, was = clip_update(sent, reply, ["a", "b"], clip)
        upd = np.concatenate([(out[k].astype(np.float64) - sent[k].astype(np.float64)).ravel() for k in "ab"])
        assert np.linalg.norm(upd) <= record_clip_norm(clip) and all(out[k].dtype == sent[k].dtype for k in "ab")


class SpyGrid(Grid):
    def send_and_receive(self, messages, timeout=None):
        messages = list(messages)
        self.messages = getattr(self, "messages", []) + messages
        return super().send_and_receive(messages, timeout)


# ---- a budget instead of σ; a ledger that survives a restart ----------------------------------------------------
def test_target_epsilon_calibrates_sigma_and_is_the_budget():
    from fl_userdp.accounting import calibrate_noise

    s = UserDPFedAvg(sampling_rate=0.1, clipping_norm=1.0, delta=1e-5, target_epsilon=2.0, num_rounds=4, seed=0)
    sigma, _ = calibrate_noise("uls", 2.0, 1e-5, 0.1, 4)
    assert s.sigma == sigma and s.max_epsilon == 2.0
    start(s, Grid(), 7)
    assert len(s.history) == 4 and s.epsilon <= 2.0 and "privacy budget" in s.stop_reason
    for kwargs, key in (({"noise_multiplier": 1.0}, "noise_multiplier"), ({"num_rounds": None}, "num_rounds"),
                        ({"num_rounds": 0}, "num_rounds"), ({"target_epsilon": -1.0}, "target_epsilon")):
        with pytest.raises(ConfigError) as err:
            UserDPFedAvg(**{"sampling_rate": 0.1, "clipping_norm": 1.0, "delta": 1e-5, "target_epsilon": 2.0,
                            "num_rounds": 4, **kwargs})
        assert err.value.key == key


def test_the_ledger_file_continues_epsilon_after_a_restart_and_refuses_other_settings(tmp_path, caplog):
    path = tmp_path / "ledger.log"
    args = dict(sampling_rate=0.1, noise_multiplier=1.2, clipping_norm=1.0, delta=1e-5, ledger_path=path)
    first = UserDPFedAvg(**args, seed=1)
    start(first, Grid(), 2)
    again = UserDPFedAvg(**args, seed=2)               # the ServerApp started again: ε goes on from 2 releases
    start(again, Grid(), 2)
    event = make_event("uls", 0.1, 1.2)
    assert again.releases == 4 and again.run_id == first.run_id
    assert again.epsilon == pytest.approx(epsilon_for([(event, 4)], 1e-5), rel=1e-12)
    assert again.history[-1]["epsilon"] == pytest.approx(again.epsilon)
    with pytest.raises(ConfigError) as err:
        start(UserDPFedAvg(**{**args, "noise_multiplier": 1.0}), Grid(), 1)
    msg = str(err.value)
    assert err.value.key == "ledger_path" and "noise_multiplier 1.2 there, 1.0 here" in msg and "\n" not in msg
    # a budget the ledger has reached: the restarted run sends nothing and returns the arrays it got
    e4, e5 = (epsilon_for([(event, t)], 1e-5) for t in (4, 5))
    grid = Grid()
    done = UserDPFedAvg(**args, max_epsilon=(e4 + e5) / 2)
    res = start(done, grid, 3)
    assert not grid.sent and done.releases == 4 and "privacy budget" in done.stop_reason
    assert np.all(res.arrays.to_numpy_ndarrays()[0] == 0)


# ---- what a user sees: the training signal, the cause of failures ------------------------------------------------
def loss_app():
    from flwr.clientapp import ClientApp

    app, plain = ClientApp(), quickstart

    @app.train()
    def train(msg, context):
        out = plain(msg, context)
        pid = int(context.node_config["partition-id"])
        out.content["metrics"]["train_loss"] = float(pid)
        return out

    return app


def test_the_clients_train_loss_is_kept_as_a_diagnostic(monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "quickstart", loss_app())
    s = UserDPFedAvg(sampling_rate=0.1, noise_multiplier=1.0, clipping_norm=1.0, delta=1e-5, seed=0)
    m = start(s, Grid(), 1).train_metrics_clientapp[1]
    want = np.mean([n - 100 for n in s.requested])        # every node has 10 examples: the plain mean
    assert m["diagnostics.train_loss"] == pytest.approx(want)
    quiet = UserDPFedAvg(sampling_rate=0.1, noise_multiplier=1.0, clipping_norm=1.0, delta=1e-5, seed=0,
                         publish_diagnostics=False)
    assert "diagnostics.train_loss" not in start(quiet, Grid(), 1).train_metrics_clientapp[1].keys()


def test_failures_name_their_error_in_the_log_and_the_stop_line(caplog):
    broken = {100 + p for p in range(USERS)}
    s = UserDPFedAvg(sampling_rate=0.1, noise_multiplier=1.0, clipping_norm=1.0, delta=1e-5, seed=0,
                     max_failed_rounds=2)
    with caplog.at_level("INFO", logger="flwr"):
        start(s, Grid(broken=broken), 4)
    assert len(s.history) == 2 and "first error: node" in s.stop_reason and "boom" in s.stop_reason
    assert "answered with an error; first: node" in caplog.text and caplog.text.count("boom") >= 3
    caplog.clear()
    quiet = UserDPFedAvg(sampling_rate=0.1, noise_multiplier=1.0, clipping_norm=1.0, delta=1e-5, seed=0,
                         max_failed_rounds=2, publish_diagnostics=False)
    with caplog.at_level("INFO", logger="flwr"):
        start(quiet, Grid(broken=broken), 4)
    assert len(quiet.history) == 2 and "boom" not in caplog.text and "failures: 2 rounds" in caplog.text


def test_a_leftover_flower_clipping_mod_is_named_in_the_stop_line(monkeypatch):
    """Flower's fixedclipping_mod (for its own client-side wrapper) makes every reply an error: the stop line
    says what the nodes raised."""
    from flwr.client.mod import fixedclipping_mod
    from flwr.clientapp import ClientApp

    app, plain = ClientApp(mods=[fixedclipping_mod]), quickstart

    @app.train()
    def train(msg, context):
        return plain(msg, context)

    monkeypatch.setattr(sys.modules[__name__], "quickstart", app)
    s = UserDPFedAvg(sampling_rate=0.1, noise_multiplier=1.0, clipping_norm=1.0, delta=1e-5, seed=0,
                     max_failed_rounds=2)
    start(s, Grid(), 5)
    assert len(s.history) == 2 and all(r["failures"] == r["nodes_sampled"] > 0 for r in s.history)
    assert "first error: node" in s.stop_reason and "KeyError" in s.stop_reason and "fitins" in s.stop_reason
