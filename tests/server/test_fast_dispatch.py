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


def test_fast_dispatch_moves_messages_at_its_interval_and_restores_flowers_loop():
    from flwr.server.superlink.fleet.vce import vce_api

    original = vce_api.add_messages_to_queue
    with fast_dispatch(0.005) as applied:
        assert applied and vce_api.add_messages_to_queue is not original
        q, stop = queue.Queue(), threading.Event()
        state = State({1: ["a", "b"], 2: ["c"]})
        t = threading.Thread(target=vce_api.add_messages_to_queue, args=(state, q, {1: 0, 2: 1}, stop))
        t0 = time.perf_counter()
        t.start()
        got = [q.get(timeout=2) for _ in range(3)]
        waited = time.perf_counter() - t0
        stop.set()
        t.join(timeout=2)
        assert sorted(got) == ["a", "b", "c"] and not t.is_alive()
        assert waited < 0.09   # Flower's own loop needs a second pass 0.1 s later for node 1's second message
    assert vce_api.add_messages_to_queue is original
