"""The ServerApp: map partitions to nodes, then run the strategy's rounds over Flower's Grid.

`app` (for `flwr run .`) reads the flat run config from `context.run_config`
(the keys of `fl_userdp.config.SCHEMA`, from `[tool.flwr.app.config]`).
`build_server_app(...)` makes an app around an already parsed config and
callbacks; `fl_userdp.server.simulate` uses it with `run_simulation`, which has no
run-config argument.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

from fl_userdp.config import RunConfig, parse_config, publish_diagnostics, secure_mode, to_flat
from fl_userdp.errors import ConfigError
from fl_userdp.messages import flat_record, split_record

from .runner import ModeResult, Setup, prepare, run_mode
from .store_events import STORE_EVENTS, WAKE_FALLBACK_S
from .strategy import NodeFailure, NodeReply, NodeRequest, with_mode

NODE_WAIT_S = 120.0
# How a reply says that the Ray worker (ClientApp actor) running the node is gone, not that the node failed.
WORKER_LOST_MARKERS = ("ActorDiedError", "RayActorError", "ActorUnavailableError", "actor died",
                       "WorkerCrashedError")


class WorkerLost(RuntimeError):
    """A ClientApp actor died: the engine's actor pool keeps handing work to it, so restart the engine.

    Raised while collecting a round, before anything of that round is released: the run resumes from its
    release log on a fresh engine and computes the round again (nothing of it was published)."""
PULL_INTERVAL_S = 0.005  # where replies are polled (no announcements): Flower's grid sleeps 0.1 s between polls


def wait_for_nodes(grid: Grid, count: int, timeout: float = NODE_WAIT_S) -> list[int]:
    """Node ids once `count` nodes have registered (simulation nodes start after the ServerApp)."""
    end = time.monotonic() + timeout
    while True:
        ids = sorted(grid.get_node_ids())
        if len(ids) >= count or time.monotonic() > end:
            return ids
        time.sleep(0.1)


def discover(grid: Grid, count: int, timeout: float) -> dict[int, int]:
    """partition id -> node id, from one `query` round (node ids are random)."""
    node_ids = wait_for_nodes(grid, count)
    msgs = [Message(content=RecordDict(), dst_node_id=n, message_type=MessageType.QUERY) for n in node_ids]
    part2node: dict[int, int] = {}
    for rep in grid.send_and_receive(msgs, timeout=timeout):
        if not rep.has_error():
            part2node[int(rep.content["node"]["partition-id"])] = rep.metadata.src_node_id
    missing = sorted(set(range(count)) - set(part2node))
    if missing:
        raise ConfigError("sim.users-per-node", None,
                          f"needs {count} nodes (partitions 0..{count - 1}); partitions {missing[:5]} did not answer "
                          f"(the federation has {len(node_ids)} nodes)")
    return part2node


class GridTransport:
    """Sends each node its request with the weights; errors and timeouts become NodeFailure."""

    def __init__(self, grid: Grid, part2node: Mapping[int, int], cfg: RunConfig) -> None:
        self.grid, self.part2node, self.cfg = grid, dict(part2node), cfg
        if isinstance(getattr(grid, "pull_interval", None), float):  # InMemoryGrid (simulation)
            grid.pull_interval = min(grid.pull_interval, PULL_INTERVAL_S)
        self.node2part = {n: p for p, n in self.part2node.items()}
        self.flat = to_flat(cfg)
        self.timeout = cfg.sim.reply_timeout

    def _config(self, rnd: int, clip_norm: float | None = None) -> ConfigRecord:
        extra = {} if clip_norm is None else {"privacy.clip-norm": float(clip_norm)}  # adaptive clipping: this C
        return ConfigRecord({**self.flat, **extra, "round": int(rnd)})

    def __call__(self, requests: Mapping[int, NodeRequest], weights: list[np.ndarray]) -> dict[int, Any]:
        wrec, msgs = flat_record(weights), []
        shapes = [np.shape(w) for w in weights]
        for part, req in sorted(requests.items(), key=lambda pr: -pr[1].count):   # heaviest nodes first
            sample = {"users": Array(np.asarray(req.users, np.int64))}
            if req.mode == "els":
                sample["offsets"] = Array(np.asarray(req.offsets, np.int64))
                sample["example-ids"] = Array(np.asarray(req.example_ids, np.int64))
            content = RecordDict({"config": self._config(req.round, req.clip_norm), "weights": wrec,
                                  "sample": ArrayRecord(sample)})
            msgs.append(Message(content=content, dst_node_id=self.part2node[part], message_type=f"{MessageType.TRAIN}.{req.mode}"))
        out: dict[int, Any] = {}
        for rep in self._send_and_receive(msgs):
            part = self.node2part.get(rep.metadata.src_node_id)
            if part is None:
                continue
            out[part] = self._parse(rep, shapes)
        lost = [p for p, r in out.items() if isinstance(r, NodeFailure) and worker_lost(r.reason)]
        if lost:
            rnd = next(iter(requests.values())).round
            raise WorkerLost(f"round {rnd}: the Ray worker of node(s) {lost[:5]} died ({out[lost[0]].reason[:120]})")
        return out  # partitions without a reply timed out

    def _send_and_receive(self, msgs: list[Message]) -> list[Message]:
        """Flower's `send_and_receive`, except that in a simulation whose link state announces stored replies
        (`fl_userdp.server.simulate.wake_on_stores`) it waits for that announcement instead of polling."""
        events = getattr(getattr(self.grid, "state", None), STORE_EVENTS, None)
        if events is None or not hasattr(self.grid, "push_messages"):
            return list(self.grid.send_and_receive(msgs, timeout=self.timeout))
        stored = events["res"]
        pending = set(self.grid.push_messages(msgs))
        end, out = time.monotonic() + self.timeout, []
        while pending and time.monotonic() < end:
            stored.clear()   # before pulling: a reply stored meanwhile makes the wait return at once
            got = list(self.grid.pull_messages(pending))
            out.extend(got)
            pending.difference_update(m.metadata.reply_to_message_id for m in got)
            if pending:
                stored.wait(min(WAKE_FALLBACK_S, max(0.0, end - time.monotonic())))
        if pending:   # the deadline passed during a wait: a reply stored in it still counts
            out.extend(self.grid.pull_messages(pending))
        return out

    @staticmethod
    def _parse(rep: Message, shapes: list[tuple[int, ...]]) -> NodeReply | NodeFailure:
        if rep.has_error():
            return NodeFailure(f"{rep.error.code}: {(rep.error.reason or '')[:300]}")
        try:
            m = rep.content["metrics"]
            return NodeReply(split_record(rep.content["update"], shapes), int(m["users"]),
                             int(m["examples"]), int(m["clipped"]),
                             float(m["loss-sum"]) if "loss-sum" in m else None,
                             float(m["grid-loss"]) if "grid-loss" in m else None)
        except Exception as err:  # malformed reply: counted as a failure, never applied
            return NodeFailure(f"malformed reply: {err!r}"[:300])

    def evaluate(self, weights: list[np.ndarray]) -> float | None:
        """Held-out loss, computed by the node of partition 0 (any node holds the held-out set)."""
        content = RecordDict({"config": self._config(0), "weights": flat_record(weights)})
        msg = Message(content=content, dst_node_id=self.part2node[0], message_type=MessageType.EVALUATE)
        for rep in self.grid.send_and_receive([msg], timeout=self.timeout):
            if not rep.has_error():
                loss = float(rep.content["metrics"]["eval-loss"])
                return loss if np.isfinite(loss) else None
        return None


def worker_lost(reason: str) -> bool:
    return any(m in reason for m in WORKER_LOST_MARKERS)


def serve(grid: Grid, cfg: RunConfig, modes: list[str], setup: Setup | None = None, resume: bool = False,
          on_record: Callable[[dict[str, Any]], None] | None = None,
          on_mode: Callable[[str, float], None] | None = None) -> list[ModeResult]:
    """Discover the nodes once, then run every mode in turn on them."""
    setup = setup or prepare(cfg, modes, resume)
    num_nodes = -(-len(setup.counts) // cfg.sim.users_per_node)
    part2node = discover(grid, num_nodes, cfg.sim.reply_timeout)
    results = []
    for mode in modes:
        mcfg = with_mode(cfg, mode)
        if on_mode:
            on_mode(mode, setup.sigmas.get(mode, float("nan")))
        transport = GridTransport(grid, part2node, mcfg)
        results.append(run_mode(mcfg, setup, transport, transport.evaluate, mcfg.out, resume, on_record))
    return results


def build_server_app(cfg: RunConfig, modes: list[str], setup: Setup | None = None, resume: bool = False,
                     on_record: Callable | None = None, on_mode: Callable | None = None,
                     sink: dict | None = None) -> ServerApp:
    """A ServerApp bound to a parsed config; results (or the exception) land in `sink`."""
    server_app = ServerApp()
    sink = sink if sink is not None else {}

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        try:
            sink["results"] = serve(grid, cfg, modes, setup, resume, on_record, on_mode)
        except BaseException as err:  # surfaced by the driver after the engine stops
            sink["error"] = err

    return server_app


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """`flwr run .`: the flat run config is the schema; one mode (privacy.mode), outputs in `out`."""
    from fl_userdp.records import report

    cfg = parse_config(dict(context.run_config))
    results = serve(grid, cfg, [cfg.privacy.mode])
    records = [r for res in results for r in res.records]
    summary = report.summarize(records, {"stop_reasons": [r.stop_reason for r in results if r.stop_reason],
                                         "run_id": results[0].run_id, "seed": cfg.seed},
                               publish_diagnostics(cfg), secure_mode(cfg),
                               banded=cfg.privacy.mechanism == "bandmf" and cfg.privacy.bands > 1)
    report.write_summary(cfg.out, summary)
    for res in results:
        print(f"[fl-userdp] {res.mode}: {len(res.records)} rounds, epsilon={res.epsilon:.4g} "
              f"(delta={cfg.privacy.delta:g}), outputs in {cfg.out}" + (f"; {res.stop_reason}" if res.stop_reason else ""))
    print(f"[fl-userdp] {summary['guarantee_line']}")
