"""Drive a run through Flower's simulation engine on Ray (`run_simulation`).

`run(cfg, modes)` prepares the server state (fails fast on bad input), starts
one simulation with ⌈N / users-per-node⌉ nodes, runs every mode in it (ULS
then ELS for compare: one Ray start), shows progress, and returns the
per-mode results. When a Ray worker (a ClientApp actor) dies, Flower's actor
pool keeps handing messages to the dead actor, so the run would decay to a
fraction of its nodes: instead the round in progress is abandoned before
release (`fl_userdp.server.app.WorkerLost`), the engine is started afresh and the run
resumes from its release log (at most `sim.max-restarts` times). `sim.ray-address` (or `ray_address=`) attaches to a running
Ray cluster (`auto` or host:port) instead of starting a local one. Ray
workers run with one thread (OMP_NUM_THREADS=1) unless the caller set it.

The engine moves each round's messages from its link state to the actors' queue in a loop that sleeps
0.1 s between passes (Flower 1.42, `vce_api.add_messages_to_queue`): on average 0.05 s of every round
passes before any node starts, and a million-user linear round (0.08 s of compute) cannot go below 0.1 s.
For the run's duration `fast_dispatch` replaces that loop, when the installed Flower has it as expected
(else Flower is left as it is), by the same passes, woken when a message is stored in the link state
(`wake_on_stores`) instead of on a clock: the engine's driver-side threads then use no CPU while the nodes
work (at 8 nodes on 2 cores, polling every 5 ms kept the driver process at 0.13 CPU-seconds per second, on
the cores the actors need; woken by stores, 0.07). A pass
hands the messages it finds to the actors' queue in the order the server created them, so a server that
sends its heaviest nodes first gets them started first (`fl_userdp.server.app.GridTransport`). On a link
state that is not Flower's in-memory one the loop polls every `DISPATCH_INTERVAL_S`. For a Ray started
here, `inline_objects` lets task arguments and results up to `INLINE_OBJECT_BYTES` travel inline instead of
through Ray's object store (see there).
"""
from __future__ import annotations

import inspect
import logging
import os
import threading
from contextlib import contextmanager
from typing import Any, Callable

from fl_userdp.config import RunConfig

from .runner import ModeResult, Setup, prepare
from .store_events import STORE_EVENTS, WAKE_FALLBACK_S


def backend_config(cfg: RunConfig, ray_address: str | None = None) -> dict[str, Any]:
    """Flower's Ray backend config: one actor per `sim.cpus-per-node` CPUs; start or attach."""
    address = cfg.sim.ray_address if ray_address is None else ray_address
    init: dict[str, Any] = {"address": address} if address else {"num_cpus": cfg.sim.num_cpus}
    init.update(include_dashboard=False, logging_level="warning", log_to_driver=False)
    return {"client_resources": {"num_cpus": cfg.sim.cpus_per_node, "num_gpus": 0.0}, "init_args": init}


DISPATCH_INTERVAL_S = 0.005   # the dispatch loop's pass interval where the link state does not announce stores
WAKE_ON_STORES = True         # False: poll every DISPATCH_INTERVAL_S (and the transport every PULL_INTERVAL_S)
# Ray passes a task's arguments and results inline up to this many bytes (its default: 100 KiB); larger ones go
# through its object store, whose get path woke the driver's and the raylet's threads thousands of times a
# second while the nodes computed (a tiny LM's update, 17,408 float64, is 139 KB). For a local Ray only.
INLINE_OBJECT_BYTES = 1 << 20


def _created(msg) -> float:
    return float(getattr(getattr(msg, "metadata", None), "created_at", 0.0) or 0.0)


@contextmanager
def fast_dispatch(interval: float | None = None):
    """Flower's message dispatch loop woken by stored messages (else every `interval` seconds, default
    `DISPATCH_INTERVAL_S`) instead of every 0.1 s, for the duration (see above). Yields whether it was applied."""
    interval = DISPATCH_INTERVAL_S if interval is None else interval
    try:
        from flwr.server.superlink.fleet.vce import vce_api
        original = vce_api.add_messages_to_queue
        expected = "f_stop.wait(0.1)" in inspect.getsource(original)
    except (ImportError, AttributeError, OSError, TypeError):
        expected = False
    if not expected:
        yield False
        return

    def add_messages_to_queue(state, queue, nodes_mapping, f_stop) -> None:  # Flower's passes, woken by stores
        stored = wake_on_stores(state) if WAKE_ON_STORES else None
        while not f_stop.is_set():
            if stored is not None:
                stored.clear()   # before the pass: a message stored during it wakes the next pass at once
            found = [msg for node_id in nodes_mapping.keys() for msg in state.get_message_ins(node_id=node_id, limit=1)]
            for msg in sorted(found, key=_created):   # stable: Flower's order where creation times tie
                queue.put(msg)
            if found and stored is not None:
                continue         # a pass takes one message per node: look again for a node's next one
            if stored is None:
                f_stop.wait(interval)
            else:
                stored.wait(WAKE_FALLBACK_S)

    vce_api.add_messages_to_queue = add_messages_to_queue
    try:
        yield True
    finally:
        vce_api.add_messages_to_queue = original




def wake_on_stores(state) -> threading.Event | None:
    """An event set whenever a message for the nodes is stored in the engine's link state
    (`store_message_ins`), installed once per state, or None where the state has no such method. A second
    event, for replies (`store_message_res`), is left on the state (attribute `STORE_EVENTS`) for
    `fl_userdp.server.app.GridTransport`, which then waits on it instead of polling."""
    events = getattr(state, STORE_EVENTS, None)
    if events is None:
        if not all(callable(getattr(state, n, None)) for n in ("store_message_ins", "store_message_res")):
            return None
        events = {"ins": threading.Event(), "res": threading.Event()}
        for kind, name in (("ins", "store_message_ins"), ("res", "store_message_res")):
            store = getattr(state, name)

            def storing(*args, _store=store, _event=events[kind], **kwargs):
                try:
                    return _store(*args, **kwargs)
                finally:
                    _event.set()

            setattr(state, name, storing)
        setattr(state, STORE_EVENTS, events)
    return events["ins"]


INLINE_ENV = "RAY_max_direct_call_object_size"


@contextmanager
def inline_objects(address: str | None):
    """For a Ray started here (no `address`), task arguments and results up to `INLINE_OBJECT_BYTES` travel
    inline, for the duration (Ray reads `RAY_max_direct_call_object_size` when it starts). Attached to a
    cluster, or with the variable already set, nothing changes. Yields whether it was applied."""
    import ray

    if address or INLINE_ENV in os.environ or ray.is_initialized():   # a running Ray has read its config
        yield False
        return
    os.environ[INLINE_ENV] = str(INLINE_OBJECT_BYTES)
    try:
        yield True
    finally:
        os.environ.pop(INLINE_ENV, None)


@contextmanager
def _quiet_flower(quiet: bool):
    logger = logging.getLogger("flwr")
    level = logger.level
    if quiet:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def run(cfg: RunConfig, modes: list[str], *, resume: bool = False, ray_address: str | None = None,
        setup: Setup | None = None, on_record: Callable[[dict[str, Any]], None] | None = None,
        on_mode: Callable[[str, float], None] | None = None, quiet: bool = True,
        on_restart: Callable[[str, int], None] | None = None) -> list[ModeResult]:
    """Run `modes` (e.g. ["uls", "els"]) for cfg on the simulation engine; outputs in cfg.out."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")   # inherited by locally started Ray workers
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    # Ray's future default (leave accelerator env vars alone when num_gpus=0), which also silences its
    # FutureWarning at every start; our actors request no GPU
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    from flwr.simulation import run_simulation

    from fl_userdp.clients.app import app as client_app

    from .app import WorkerLost, build_server_app

    setup = setup or prepare(cfg, modes, resume)
    num_nodes = -(-len(setup.counts) // cfg.sim.users_per_node)
    address = cfg.sim.ray_address if ray_address is None else ray_address
    for attempt in range(cfg.sim.max_restarts + 1):
        sink: dict[str, Any] = {}
        server_app = build_server_app(cfg, modes, setup, resume or attempt > 0, on_record, on_mode, sink)
        with _quiet_flower(quiet), fast_dispatch(), inline_objects(address):
            run_simulation(server_app=server_app, client_app=client_app, num_supernodes=num_nodes,
                           backend_config=backend_config(cfg, ray_address))
        if isinstance(sink.get("error"), WorkerLost) and attempt < cfg.sim.max_restarts:
            logging.getLogger("fl_userdp").warning("%s; restarting the engine and resuming from the release log "
                                                   "(restart %d of at most %d)", sink["error"], attempt + 1,
                                                   cfg.sim.max_restarts)
            if on_restart:
                on_restart(str(sink["error"]), attempt + 1)
            continue
        break
    if "error" in sink:
        raise sink["error"]
    if "results" not in sink:
        raise RuntimeError("the simulation ended without results (see the log above)")
    return sink["results"]
