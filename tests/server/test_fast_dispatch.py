"""`fast_dispatch`: Flower's message dispatch loop at 5 ms instead of 0.1 s, for a run's duration only."""
from __future__ import annotations

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
