"""Client faults through the real Flower message path, without Ray.

`FakeGrid` stands in for the simulation engine: it runs the real ClientApp (`fl_userdp.clients.app.app`) on
each real `flwr.app.Message` that `fl_userdp.server.app.GridTransport` builds, and, like Flower's engine
(`vce_api.worker`), turns an exception raised inside the ClientApp into an error reply
(`ErrorCode.CLIENT_APP_RAISED_EXCEPTION`). Out of 10 nodes, one node's ClientApp raises (its
partition id does not host the users it is asked for, so `_shard_check` raises), one answers with
a malformed reply, and one never answers (a timeout): 20 % failing plus one malformed.
"""
from __future__ import annotations

import uuid

import numpy as np
import pytest
from flwr.app import Context, Error, Message, MetricRecord, RecordDict
from flwr.common.constant import ErrorCode
from flwr.supercore.task_identity import TaskIdentity

from fl_userdp.clients.app import app as client_app
from fl_userdp.accounting import UserLevelAccountant
from fl_userdp.config import parse_config
from fl_userdp.mechanism.noise import release_rng
from fl_userdp.server.app import GridTransport
from fl_userdp.server.inprocess import InProcessTransport
from fl_userdp.server.runner import prepare
from fl_userdp.server.strategy import NodeFailure, NodeReply, UserDPStrategy

NODES = 10
RAISES, MALFORMED, SILENT = 3, 5, 8  # partitions
SERVER_NODE = 1


@pytest.fixture
def task_identity():
    """Messages need a run/node/task identity (set by Flower's runtime in a real ServerApp process)."""
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 42, SERVER_NODE, 0
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


def node_id(part: int) -> int:
    return 1000 + 17 * part


class FakeGrid:
    def __init__(self) -> None:
        self.calls: list[list[Message]] = []
        self.contexts = {}
        for part in range(NODES):
            # the raising node believes it hosts another partition: the real ClientApp refuses the users
            pid = (part + 1) % NODES if part == RAISES else part
            self.contexts[node_id(part)] = Context(run_id=42, node_id=node_id(part), state=RecordDict(),
                                                   node_config={"partition-id": pid, "num-partitions": NODES},
                                                   run_config={})

    def get_node_ids(self):
        return list(self.contexts)

    def send_and_receive(self, messages, timeout=None):
        self.calls.append(list(messages))
        replies = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = uuid.uuid4().hex  # the SuperLink assigns ids
            nid = msg.metadata.dst_node_id
            part = (nid - 1000) // 17
            if part == SILENT and msg.metadata.message_type.startswith("train"):
                continue  # never answers within the timeout
            try:
                rep = client_app(msg, self.contexts[nid])
            except Exception as ex:  # as Flower's engine does: an error reply, not a crash
                rep = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION,
                                    reason=str(type(ex)) + ":<'" + str(ex) + "'>"), reply_to=msg)
            if part == MALFORMED and msg.metadata.message_type.startswith("train"):
                rep = Message(RecordDict({"metrics": MetricRecord({"users": 2})}), reply_to=msg)  # no "update"
            replies.append(rep)
        return replies


def tiny_cfg(mode: str):
    return parse_config({
        "privacy.mode": mode, "privacy.sampling-rate": 1.0, "privacy.noise-multiplier": 0.7,
        "privacy.clip-norm": 0.5, "privacy.max-examples-per-user": 3, "seed": 5,
        "data.num-users": 2 * NODES, "data.heldout-users": 2, "sim.users-per-node": 2,
        "model.vocab-size": 64, "model.hidden-size": 16, "model.num-layers": 1, "model.num-heads": 2,
        "model.seq-len": 16, "model.lora-rank": 2, "train.eval-examples": 8,
        "train.server-optimizer": "sgd", "train.server-lr": 1.0, "train.rounds": 2})


@pytest.mark.parametrize("mode", ["uls", "els"])
def test_failing_nodes_through_the_real_client_app(task_identity, mode):
    cfg = tiny_cfg(mode)
    setup = prepare(cfg)
    grid = FakeGrid()
    transport = GridTransport(grid, {p: node_id(p) for p in range(NODES)}, cfg)
    s = UserDPStrategy(cfg, setup.counts, setup.init_weights, setup.sigmas[mode])
    reference = UserLevelAccountant(cfg.privacy.delta, cfg.privacy.accountant)
    honest = InProcessTransport(cfg)
    for rnd in (1, 2):
        w0 = s.weights.copy()
        requests = s.sample(rnd)
        assert sorted(requests) == list(range(NODES))  # q = 1: every node is asked
        replies = transport(requests, s.weights_list())
        # the conversion itself: raise -> error reply -> NodeFailure; malformed -> NodeFailure; silent -> absent
        assert isinstance(replies[RAISES], NodeFailure) and f"{ErrorCode.CLIENT_APP_RAISED_EXCEPTION}:" in \
            replies[RAISES].reason and "hosts users" in replies[RAISES].reason
        assert isinstance(replies[MALFORMED], NodeFailure) and "malformed reply" in replies[MALFORMED].reason
        assert SILENT not in replies
        assert all(isinstance(replies[p], NodeReply) for p in set(range(NODES)) - {RAISES, MALFORMED, SILENT})

        rec = s.run_round(transport)
        assert rec is not None and rec["round"] == rnd
        assert rec["failures"] == 3 and rec["nodes_requested"] == NODES and rec["nodes_replied"] == NODES - 3
        assert rec["rejected"] == 0
        # ε composed as for a full round; the denominator is the expected count, not the replies
        assert rec["epsilon"] == pytest.approx(reference.compose(s.event), rel=1e-12) and s.accountant.steps == rnd
        n_expected = 2 * NODES if mode == "uls" else int(np.minimum(setup.counts, 3).sum())
        assert rec["expected_count"] == pytest.approx(n_expected)
        # released update (SGD, lr 1) = (Σ honest nodes + N(0, σ²C²)) / expected count, noise at full scale
        ok = {p: requests[p] for p in requests if p not in (RAISES, MALFORMED, SILENT)}
        total = np.concatenate([np.concatenate([a.astype(np.float64).ravel() for a in rep.arrays])
                                for rep in honest(ok, [w.copy() for w in _weights(s, w0)]).values()]) \
            .reshape(len(ok), -1).sum(axis=0)
        exact, _ = s.collect(requests, replies)  # the strategy's own sum (same order, same bytes)
        np.testing.assert_allclose(exact, total, rtol=1e-9, atol=1e-12)
        noise = 0.7 * 0.5 * release_rng(cfg.seed, mode, rnd, 0.7 * 0.5, s.expected, exact).standard_normal(exact.size)
        np.testing.assert_allclose((w0 - s.weights) * s.expected, total + noise, rtol=1e-6, atol=1e-9)
        residual = (w0 - s.weights) * s.expected - total
        assert np.std(residual) == pytest.approx(0.7 * 0.5, rel=0.2)  # σC, not scaled by the 70 % that replied


def _weights(s: UserDPStrategy, flat: np.ndarray) -> list[np.ndarray]:
    parts = np.split(flat, np.cumsum(s.sizes)[:-1])
    return [w.reshape(sh).astype(d) for w, sh, d in zip(parts, s.shapes, s.dtypes)]


def test_the_transport_sends_heaviest_first_and_waits_for_announced_replies(task_identity, monkeypatch):
    """In a simulation whose link state announces stored replies, the transport waits on that announcement
    (no 5 ms polling of the link state while the nodes work) and pushes the nodes with most records first."""
    import threading
    import time

    from fl_userdp.server import app as server_app
    from fl_userdp.server.simulate import STORE_EVENTS
    from fl_userdp.server.strategy import NodeRequest

    monkeypatch.setattr(server_app, "WAKE_FALLBACK_S", 5.0)   # the clock alone would not collect in time

    class State:
        pass

    class AnnouncingGrid:
        def __init__(self):
            self.state = State()
            setattr(self.state, STORE_EVENTS, {"ins": threading.Event(), "res": threading.Event()})
            self.pushed, self.stored, self.pulls = [], [], 0

        def push_messages(self, messages):
            ids = []
            for msg in messages:
                msg.metadata.__dict__["_message_id"] = uuid.uuid4().hex
                self.pushed.append(msg)
                ids.append(msg.metadata.message_id)

            def answer():
                for msg in self.pushed:
                    time.sleep(0.05)
                    self.stored.append(Message(Error(code=ErrorCode.UNKNOWN, reason="test"), reply_to=msg))
                    getattr(self.state, STORE_EVENTS)["res"].set()
            threading.Thread(target=answer).start()
            return ids

        def pull_messages(self, ids):
            self.pulls += 1
            got, self.stored = [m for m in self.stored if m.metadata.reply_to_message_id in ids], \
                [m for m in self.stored if m.metadata.reply_to_message_id not in ids]
            return got

    cfg = tiny_cfg("uls")
    grid = AnnouncingGrid()
    transport = GridTransport(grid, {p: node_id(p) for p in range(4)}, cfg)
    requests = {p: NodeRequest("uls", 1, np.arange(n) + 2 * p) for p, n in enumerate([1, 3, 0, 2])}
    t0 = time.perf_counter()
    replies = transport(requests, [np.zeros(3)])
    assert time.perf_counter() - t0 < 2.0
    assert sorted(replies) == [0, 1, 2, 3] and all(isinstance(r, NodeFailure) for r in replies.values())
    assert [(m.metadata.dst_node_id - 1000) // 17 for m in grid.pushed] == [1, 3, 0, 2]   # most users first
    assert grid.pulls <= 2 * 4 + 1    # woken by the four stores (polling at 5 ms: ~40 pulls in 0.2 s)


def test_a_reply_stored_during_the_last_wait_is_collected(task_identity, monkeypatch):
    """The deadline can pass while the transport waits; a reply stored in that wait (even unannounced) is
    still collected by one last pull, not counted as a timeout."""
    import threading
    import time

    from fl_userdp.server import app as server_app
    from fl_userdp.server.simulate import STORE_EVENTS
    from fl_userdp.server.strategy import NodeRequest

    monkeypatch.setattr(server_app, "WAKE_FALLBACK_S", 5.0)

    class State:
        pass

    class QuietGrid:                       # stores its reply without announcing it
        def __init__(self):
            self.state, self.stored = State(), []
            setattr(self.state, STORE_EVENTS, {"ins": threading.Event(), "res": threading.Event()})

        def push_messages(self, messages):
            msgs = list(messages)
            for msg in msgs:
                msg.metadata.__dict__["_message_id"] = uuid.uuid4().hex

            def answer():
                time.sleep(0.2)
                self.stored += [Message(Error(code=ErrorCode.UNKNOWN, reason="late"), reply_to=m) for m in msgs]
            threading.Thread(target=answer).start()
            return [m.metadata.message_id for m in msgs]

        def pull_messages(self, ids):
            got = [m for m in self.stored if m.metadata.reply_to_message_id in ids]
            self.stored = [m for m in self.stored if m not in got]
            return got

    transport = GridTransport(QuietGrid(), {0: node_id(0)}, tiny_cfg("uls"))
    transport.timeout = 0.5
    replies = transport({0: NodeRequest("uls", 1, np.arange(2))}, [np.zeros(3)])
    assert list(replies) == [0] and isinstance(replies[0], NodeFailure) and "late" in replies[0].reason
