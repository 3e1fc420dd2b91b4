"""`fast_dispatch`: Flower's message dispatch loop at 5 ms instead of 0.1 s, for a run's duration only."""
from __future__ import annotations

import os
import queue
import threading
import time

from fl_userdp.server.simulate import fast_dispatch


class State:
    def __init__(self, pending):
        self.pending = {n: list(msgs) for n, msgs in pending.items()}

    def get_message_ins(self, node_id, limit):
        out, self.pending[node_id] = self.pending[node_id][:limit], self.pending[node_id][limit:]
        return out


def drain(loop, pending, count):
    """Run a dispatch loop on a fake link state until `count` messages are queued: (their order, seconds)."""
    q, stop = queue.Queue(), threading.Event()
    t = threading.Thread(target=loop, args=(State(pending), q, {n: i for i, n in enumerate(pending)}, stop))
    t0 = time.perf_counter()
    t.start()
    got = [q.get(timeout=5) for _ in range(count)]
    waited = time.perf_counter() - t0
    stop.set()
    t.join(timeout=5)
    assert not t.is_alive()
    return got, waited


def test_fast_dispatch_is_flowers_loop_faster_and_only_for_the_run():
    from flwr.server.superlink.fleet.vce import vce_api

    original = vce_api.add_messages_to_queue
    pending = {1: ["a", "b", "d"], 2: ["c"], 3: ["e", "f"]}
    want, slow = drain(original, pending, 6)          # Flower's own loop is the oracle: the same order
    with fast_dispatch(0.005) as applied:
        assert applied and vce_api.add_messages_to_queue is not original
        got, fast = drain(vce_api.add_messages_to_queue, pending, 6)
    assert got == want == ["a", "c", "e", "b", "f", "d"]
    assert slow >= 0.19 and fast < 0.1                 # three passes: 2 × 0.1 s of sleep vs 2 × 5 ms
    assert vce_api.add_messages_to_queue is original


class Stored(State):
    """A link state that announces stores, like Flower's in-memory one; counts the dispatch loop's passes."""

    def __init__(self, pending):
        super().__init__(pending)
        self.replies, self.passes = [], 0

    def get_message_ins(self, node_id, limit):
        self.passes += 1
        return super().get_message_ins(node_id, limit)

    def store_message_ins(self, msg):
        self.pending[msg[0]].append(msg)

    def store_message_res(self, msg):
        self.replies.append(msg)


def test_a_stored_message_wakes_the_dispatch_and_an_idle_loop_does_not_poll(monkeypatch):
    """Woken by stores: no pass every 5 ms while the nodes work (each pass is driver CPU taken from them)."""
    from flwr.server.superlink.fleet.vce import vce_api

    from fl_userdp.server import simulate

    monkeypatch.setattr(simulate, "WAKE_FALLBACK_S", 5.0)     # the clock alone would not dispatch in time
    state = Stored({1: [], 2: []})
    q, stop = queue.Queue(), threading.Event()
    with fast_dispatch(0.005):
        t = threading.Thread(target=vce_api.add_messages_to_queue, args=(state, q, {1: 0, 2: 1}, stop))
        t.start()
        time.sleep(0.5)
        idle_passes = state.passes
        t0 = time.perf_counter()
        state.store_message_ins((2, "x"))
        state.store_message_ins((2, "y"))                    # a node's second message: the next pass at once
        assert [q.get(timeout=2), q.get(timeout=2)] == [(2, "x"), (2, "y")]
        assert time.perf_counter() - t0 < 1.0
        res = getattr(state, simulate.STORE_EVENTS)["res"]
        res.clear()
        state.store_message_res("reply")
        assert res.is_set() and state.replies == ["reply"]
        stop.set()
        res.set()
        getattr(state, simulate.STORE_EVENTS)["ins"].set()
        t.join(timeout=10)
        assert not t.is_alive()
    assert idle_passes <= 2 * 2          # ≤ 2 passes (2 nodes each) in 0.5 s idle; polling at 5 ms makes ~200


def test_a_pass_hands_messages_over_in_the_order_they_were_created():
    """The server sends its heaviest nodes first; the loop keeps that order across nodes (Flower's: node order)."""
    from types import SimpleNamespace

    from flwr.server.superlink.fleet.vce import vce_api

    def msg(name, created):
        return SimpleNamespace(name=name, metadata=SimpleNamespace(created_at=created))

    pending = {1: [msg("late", 3.0)], 2: [msg("first", 1.0)], 3: [msg("second", 2.0)]}
    with fast_dispatch(0.005):
        got, _ = drain(vce_api.add_messages_to_queue, pending, 3)
    assert [m.name for m in got] == ["first", "second", "late"]


def test_inline_objects_only_for_a_ray_started_here_and_only_for_the_run(monkeypatch):
    from fl_userdp.server import simulate

    monkeypatch.delenv(simulate.INLINE_ENV, raising=False)
    with simulate.inline_objects(None) as applied:
        assert applied and os.environ[simulate.INLINE_ENV] == str(simulate.INLINE_OBJECT_BYTES)
    assert simulate.INLINE_ENV not in os.environ
    with simulate.inline_objects("127.0.0.1:6379") as applied:       # a cluster's config is its own
        assert not applied and simulate.INLINE_ENV not in os.environ
    monkeypatch.setenv(simulate.INLINE_ENV, "4096")                   # the user's setting wins
    with simulate.inline_objects(None) as applied:
        assert not applied and os.environ[simulate.INLINE_ENV] == "4096"
    assert os.environ[simulate.INLINE_ENV] == "4096"
