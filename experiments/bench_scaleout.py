"""Scale-out: a round through Flower on a local Ray vs the in-process backend, and where the round's time goes.

Each configuration runs `fl-userdp run` (the production round loop, `fl_userdp.server.runner.run_mode`) for
--rounds rounds on both backends, one after the other in this process, and reports the median wall time of
rounds 3.. (rounds 1–2 warm the workers), the ratio in-process / Flower (2 cores allow 2×), and per round:

* the driver's phases (this process): sampling, the transport call (send → last reply), collection and
  validation, noise and release, the ledger, the release log, the server step — timed by wrapping the
  strategy's own functions;
* the nodes: each reply's compute seconds (measured in the node, `seconds` of its reply), their sum and the
  slowest node, and the actors' idle time = actors × transport time − Σ node seconds (the stragglers and
  the message overhead together);
* CPU seconds per process over the run (driver, ClientApp actors, other Ray processes), from /proc.

    OMP_NUM_THREADS=1 python experiments/bench_scaleout.py                  # the table (tiny LM + LoRA, 1,024 users)
    OMP_NUM_THREADS=1 python experiments/bench_scaleout.py --nodes 8 --repeat 3   # medians of 3 alternating runs
    OMP_NUM_THREADS=1 python experiments/bench_scaleout.py --nodes 8 --modes els --detail   # + per-phase breakdown
    OMP_NUM_THREADS=1 python experiments/bench_scaleout.py --linear        # + the linear task at 10^6 users
    OMP_NUM_THREADS=1 python experiments/bench_scaleout.py --two-raylets   # + Flower on two raylets on loopback
    OMP_NUM_THREADS=1 python experiments/bench_scaleout.py --polling       # + Flower with the engine polling (before)
    OMP_NUM_THREADS=1 python experiments/bench_scaleout.py --ceiling       # + two in-process runs at once vs one
    OMP_NUM_THREADS=1 python experiments/bench_scaleout.py --ray-defaults  # + Flower with Ray's 100 KiB inline limit

With --two-raylets a Ray head and a second Ray node (one CPU each, own temp dir, free ports) are started on
127.0.0.1 (stopped by PID at the end), and each Flower run is repeated attached to them (`sim.ray-address`):
the same 2 cores as two Ray nodes, so the figure shows what crossing a raylet costs.

Run it on a quiet machine (nothing else on the cores): both sides of a ratio are measured in the same run.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

BASE = {"data.num-users": 1024, "sim.num-cpus": 2, "privacy.noise-multiplier": 1.0,
        "privacy.sampling-rate": 0.25, "train.eval-every": 0}
LINEAR = {"model.name": "linear", "data.num-users": 1_000_000, "sim.users-per-node": 125_000, "sim.num-cpus": 2,
          "privacy.noise-multiplier": 1.0, "privacy.sampling-rate": 0.01, "train.eval-every": 0}


# -- per-process CPU ---------------------------------------------------------------------------------------
def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = defaultdict(list)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                kids[int(stat.rsplit(")", 1)[1].split()[1])].append(int(entry))
    return kids


def descendants(pid: int) -> list[int]:
    """The processes under `pid` (from /proc, by parent PID)."""
    kids, todo, out = _children(), [pid], []
    while todo:
        for child in kids.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def cpu_by_process() -> dict[str, float]:
    """CPU seconds (user + system) so far: this driver process, its ClientApp actors, its other descendants."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = defaultdict(float)
    for pid in [os.getpid(), *descendants(os.getpid())]:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            secs = (int(fields[11]) + int(fields[12])) / tick
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            key = "driver" if pid == os.getpid() else "actors" if b"ClientAppActor" in cmd else "other ray"
            out[key] += secs
            for tid in os.listdir(f"/proc/{pid}/task"):   # context switches, every thread of the process
                with contextlib.suppress(OSError, IndexError, ValueError):
                    status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
                    out[f"wakeups: {key}"] += int(status.split("\nvoluntary_ctxt_switches:")[1].split()[0])
                    if key == "actors" and tid == str(pid):   # the actor's main thread: the node's compute
                        out["preempted: actors' main threads"] += int(
                            status.split("nonvoluntary_ctxt_switches:")[1].split()[0])
    return dict(out)


# -- driver phases ------------------------------------------------------------------------------------------
class Phases:
    """Wraps the strategy's steps with timers (this process only); `rounds` holds one dict per round."""

    def __init__(self) -> None:
        self.rounds: list[dict[str, float]] = []
        self.nodes: list[list[float]] = []
        self._cur: dict[str, float] = defaultdict(float)
        self._node_secs: list[float] = []
        self._wrapped: set[int] = set()
        self.cpu: list[dict[str, float]] = []
        self.idle: list[dict[str, float]] = []   # Flower only: the actors' idle time per round, by cause
        self._calls: list[tuple[int, float, float, float]] = []
        self._window = (0.0, 0.0)

    def timer(self, name: str, fn):
        def wrapped(*a, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                self._cur[name] += time.perf_counter() - t0
        return wrapped

    @contextlib.contextmanager
    def installed(self):
        from fl_userdp.clients import compute
        from fl_userdp.local import model, updates
        from fl_userdp.server import app, inprocess, runner, strategy

        S = strategy.UserDPStrategy
        saved = [(S, "run_round", S.run_round), (S, "collect", S.collect), (S, "sample", S.sample),
                 (strategy, "release", strategy.release), (strategy, "release_rng", strategy.release_rng),
                 (app.GridTransport, "__call__", app.GridTransport.__call__),
                 (app.GridTransport, "_parse", app.GridTransport._parse),
                 (inprocess.InProcessTransport, "__call__", inprocess.InProcessTransport.__call__),
                 (runner, "run_mode", runner.run_mode)]
        # the node's steps (timed where the node runs in this process: the in-process backend)
        node_steps = [(updates, "per_example_grads", "node: forward + backward (per-example gradients, loss)"),
                      (updates, "grid_units", "node: clip + exact (grid) sum"),
                      (compute.Worker, "prefetch", "node: rows (generate / cache)"),
                      (compute.Worker, "examples_of", "node: rows (generate / cache)"),
                      (model, "set_trainable", "node: weights in"), (updates, "set_trainable", "node: weights in")]
        saved += [(obj, name, getattr(obj, name)) for obj, name, _ in node_steps]
        from flwr.server.superlink.fleet.vce.backend.raybackend import RayBackend
        saved.append((RayBackend, "process_message", RayBackend.process_message))   # last: saved[-1]
        me = self

        def run_round(s, *a, **kw):
            me._cur, me._node_secs = defaultdict(float), []
            if id(s) not in me._wrapped:  # once per strategy: its ledger, release log and optimizer
                me._wrapped.add(id(s))
                s.accountant.compose = me.timer("ledger", s.accountant.compose)
                s.accountant.epsilon = me.timer("ledger", s.accountant.epsilon)
                if s.journal is not None:
                    s.journal = me.timer("release log", s.journal)
                s.optimizer.step = me.timer("server step", s.optimizer.step)
            t0 = time.perf_counter()
            rec = saved[0][2](s, *a, **kw)
            me._cur["round"] = time.perf_counter() - t0
            me.rounds.append(dict(me._cur))
            me.nodes.append(list(me._node_secs))
            me.cpu.append(cpu_by_process())  # after the round: per-round CPU per process from the differences
            if me._calls:
                me.idle.append(actor_idle(me._calls, *me._window))
            me._calls = []
            return rec

        def grid_call(t, *a, **kw):
            w0 = time.monotonic()
            try:
                return saved[5][2](t, *a, **kw)
            finally:
                me._window = (w0, time.monotonic())

        def process_message(backend, message, context):   # one per node, in the engine's worker threads
            t0 = time.monotonic()
            out = saved[-1][2](backend, message, context)
            secs = float("nan")
            with contextlib.suppress(Exception):
                secs = float(out[0].content["metrics"]["seconds"])
            me._calls.append((threading.get_ident(), t0, time.monotonic(), secs))
            return out

        def parse(rep, *a, **kw):
            with contextlib.suppress(Exception):
                if not rep.has_error():
                    me._node_secs.append(float(rep.content["metrics"]["seconds"]))
            return saved[6][2](rep, *a, **kw)

        def inproc_call(t, requests, weights):
            out = {}
            for node, req in requests.items():
                t0 = time.perf_counter()
                out.update(saved[7][2](t, {node: req}, weights))
                me._node_secs.append(time.perf_counter() - t0)
            return out

        for obj, name, label in node_steps:
            setattr(obj, name, self.timer(label, getattr(obj, name)))
        S.run_round = run_round
        S.collect = self.timer("collect + validate", S.collect)
        S.sample = self.timer("sample (this round's, or the next one's ahead)", S.sample)
        strategy.release = self.timer("noise + release", strategy.release)
        strategy.release_rng = self.timer("noise key", strategy.release_rng)
        app.GridTransport.__call__ = self.timer("transport (send → last reply)", grid_call)
        RayBackend.process_message = process_message
        app.GridTransport._parse = staticmethod(parse)
        inprocess.InProcessTransport.__call__ = self.timer("transport (send → last reply)", inproc_call)
        try:
            yield self
        finally:
            for obj, name, fn in saved:
                setattr(obj, name, staticmethod(fn) if name == "_parse" else fn)


def actor_idle(calls: list[tuple[int, float, float, float]], start: float, end: float) -> dict[str, float]:
    """Where the actors' time in one round's transport went that was not node compute, summed over the engine's
    worker threads (one per actor; each runs one node at a time): `calls` = (thread, submitted, returned, node
    seconds) per node, `start`/`end` = the transport call."""
    out = {"before the first node": 0.0, "between nodes (driver hand-off)": 0.0,
           "per node in Ray and Flower (submit → result − node compute)": 0.0,
           "after the last node (waiting for the slowest)": 0.0}
    threads: dict[int, list[tuple[float, float, float]]] = defaultdict(list)
    for tid, t0, t1, secs in calls:
        if start <= t0 <= end:
            threads[tid].append((t0, t1, secs))
    for seq in threads.values():
        seq.sort()
        out["before the first node"] += seq[0][0] - start
        out["between nodes (driver hand-off)"] += sum(b[0] - a[1] for a, b in zip(seq, seq[1:]))
        out["per node in Ray and Flower (submit → result − node compute)"] += sum(t1 - t0 - s for t0, t1, s in seq
                                                                                if s == s)
        out["after the last node (waiting for the slowest)"] += end - seq[-1][1]
    return out


# -- one run ------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def two_raylets():
    """A Ray head + a second node on loopback, one CPU each; yields the address; stopped by PID."""
    import shutil
    import signal
    import socket
    import subprocess

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    ray_bin = str(Path(sys.executable).with_name("ray"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    procs = []

    def start(args: list[str], log: Path) -> None:
        proc = subprocess.Popen([ray_bin, "start", "--block", "--disable-usage-stats", "--node-ip-address=127.0.0.1",
                                 "--num-cpus=1", *args], stdout=log.open("w"), stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
        procs.append(proc)
        deadline = time.monotonic() + 120
        while "Ray runtime started" not in log.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(log.read_text()[-2000:])
            time.sleep(0.5)

    try:
        start(["--head", f"--port={port}", f"--temp-dir={temp}", "--include-dashboard=false",
               f"--min-worker-port={port + 100}", f"--max-worker-port={port + 199}"], Path(temp) / "head.log")
        start([f"--address=127.0.0.1:{port}", f"--min-worker-port={port + 200}", f"--max-worker-port={port + 299}"],
              Path(temp) / "second.log")
        yield f"127.0.0.1:{port}"
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(temp, ignore_errors=True)


def run_once(flat: dict, mode: str, backend: str) -> dict:
    from fl_userdp.config import parse_config
    from fl_userdp.server import inprocess, simulate

    out = tempfile.mkdtemp(prefix="fl-userdp-scaleout-")
    cfg = parse_config({**{k: v for k, v in flat.items() if not k.startswith("_")}, "privacy.mode": mode,
                        "out": out})
    t0 = time.perf_counter()
    with Phases().installed() as ph:
        if backend == "inprocess":
            inprocess.run(cfg, [mode])
        else:
            simulate.run(cfg, [mode], ray_address=flat.get("_ray_address"))
    wall = time.perf_counter() - t0
    settle()
    rounds = ph.rounds[2:] or ph.rounds
    med = {k: statistics.median(r.get(k, 0.0) for r in rounds) for k in rounds[0]}
    node = [n for n in ph.nodes[2:] or ph.nodes]
    return {"backend": backend, "mode": mode, "round_s": med["round"], "phases": med,
            "node_sum_s": statistics.median(sum(n) for n in node),
            "node_max_s": statistics.median(max(n) if n else 0.0 for n in node),
            "nodes": len(node[0]) if node else 0, "run_s": wall, "cpu": per_round_cpu(ph.cpu[1:]),
            "idle": {k: statistics.median(r[k] for r in ph.idle[2:] or ph.idle) for k in (ph.idle or [{}])[0]}}


def inprocess_copies(flat: dict, mode: str, copies: int) -> list[float]:
    """Median round seconds (rounds 3..) of `copies` in-process runs (`fl-userdp run --backend inprocess`)
    started at once, each in its own process: one copy alone vs two at once shows what the 2 cores give a
    one-process round at this moment (shared caches, memory bandwidth, the host's own load), the ceiling
    against which Flower's ratio is read."""
    import json
    import subprocess

    cli = str(Path(sys.executable).with_name("fl-userdp"))
    outs, procs = [], []
    for _ in range(copies):
        out = tempfile.mkdtemp(prefix="fl-userdp-ceiling-")
        sets = [a for k, v in flat.items() if not k.startswith("_") for a in ("--set", f"{k}={v}")]
        procs.append(subprocess.Popen([cli, "run", "--mode", mode, "--backend", "inprocess", "--out", out,
                                       "--no-progress", *sets], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                      env={**os.environ, "OMP_NUM_THREADS": "1"}))
        outs.append(out)
    secs = []
    for proc, out in zip(procs, outs):
        if proc.wait() != 0:
            raise RuntimeError(f"an in-process copy failed (exit {proc.returncode})")
        rows = [json.loads(line) for line in Path(out, "metrics.jsonl").read_text().splitlines()]
        secs.append(statistics.median(r["diagnostics"]["wall_time"] for r in rows if r["round"] >= 3))
    return secs


def settle(timeout: float = 30.0) -> None:
    """Wait until the processes this run started (Ray's, when it started one) have exited, so that their
    shutdown does not run into the next measurement."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = 0
        for child in descendants(os.getpid()):
            with contextlib.suppress(OSError):
                alive += Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        if not alive:
            break
        time.sleep(0.5)
    time.sleep(1.0)


def per_round_cpu(snapshots: list[dict[str, float]]) -> dict[str, float]:
    """Median CPU seconds per round per process group, from the snapshots taken after each round (from
    round 3 on: the first difference spans rounds 2–3)."""
    keys = {k for s in snapshots for k in s}
    diffs = [{k: b.get(k, 0.0) - a.get(k, 0.0) for k in keys} for a, b in zip(snapshots, snapshots[1:])]
    return {k: statistics.median(d[k] for d in diffs) for k in keys} if diffs else {}


def median_run(runs: list[dict]) -> dict:
    """The run whose round time is the median of the repetitions' (the lower middle one for an even count)."""
    return sorted(runs, key=lambda r: r["round_s"])[(len(runs) - 1) // 2]


def actors(flat: dict) -> int:
    from fl_userdp.config import parse_config

    cfg = parse_config({k: v for k, v in flat.items() if not k.startswith("_")})
    return max(1, int(cfg.sim.num_cpus // cfg.sim.cpus_per_node))


def report(rows: list[dict], flat: dict, detail: bool) -> None:
    by = {(r["mode"], r["backend"]): r for r in rows}
    for mode in sorted({r["mode"] for r in rows}):
        ip, fl = by.get((mode, "inprocess")), by.get((mode, "ray"))
        if ip and fl:
            idle = actors(flat) * fl["phases"]["transport (send → last reply)"] - fl["node_sum_s"]
            print(f"| {flat.get('_label', '')} | {mode} | {fl['nodes']} | {ip['round_s']:.3f} | {fl['round_s']:.3f} | "
                  f"**{ip['round_s'] / fl['round_s']:.2f}×** | {fl['node_sum_s']:.3f} | {fl['node_max_s']:.3f} | "
                  f"{idle:.3f} |", flush=True)
        if detail:
            for r in (ip, fl):
                if r is None:
                    continue
                print(f"\n  {mode} {r['backend']}: median round {r['round_s']:.3f} s; driver phases (s/round):")
                driver = {k: v for k, v in r["phases"].items() if k != "round" and not k.startswith("node: ")}
                for k, v in sorted(driver.items(), key=lambda kv: -kv[1]):
                    print(f"    {k:<56} {v:.4f}")
                print(f"    {'(rest of the round loop)':<56} {r['round_s'] - sum(driver.values()):.4f}")
                node = {k: v for k, v in r["phases"].items() if k.startswith("node: ")}
                if node:
                    print("  inside the transport, the nodes' steps (s/round, all nodes):")
                    for k, v in sorted(node.items(), key=lambda kv: -kv[1]):
                        print(f"    {k:<56} {v:.4f}")
                    print(f"    {'node: the rest (requests, sampling ids, loss sums)':<56} "
                          f"{r['node_sum_s'] - sum(node.values()):.4f}")
                print(f"  nodes per round {r['nodes']}: Σ node compute {r['node_sum_s']:.3f} s, slowest node "
                      f"{r['node_max_s']:.3f} s")
                if r.get("idle"):
                    print("  the actors' time that was not node compute (actor-seconds per round, all actors):")
                    for k, v in r["idle"].items():
                        print(f"    {k:<64} {v:.4f}")
                cpu = {k: v for k, v in r["cpu"].items() if ":" not in k}
                switches = {k: v for k, v in r["cpu"].items() if ":" in k}
                if switches:
                    print("  context switches per round (median, rounds 3..; wakeups = voluntary, all threads): "
                          + ", ".join(f"{k} {v:.0f}" for k, v in sorted(switches.items())))
                print("  CPU seconds per round (median, rounds 3..): "
                      + ", ".join(f"{k} {v:.3f}" for k, v in sorted(cpu.items()))
                      + f" (of {os.cpu_count()} cores × {r['round_s']:.3f} s); whole run {r['run_s']:.1f} s wall\n")


HEADER = ("| task | mode | nodes | in-process s/round | Flower s/round | ratio | Σ node compute s | slowest node s | "
          "actor idle s |\n|---|---|---|---|---|---|---|---|---|")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nodes", default="4,8,32", help="node counts (users per node = 1,024 / nodes)")
    ap.add_argument("--modes", default="els,uls")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=1, help="repetitions per configuration, the backends alternating; "
                    "the table shows the median run of each backend")
    ap.add_argument("--detail", action="store_true", help="per-phase breakdown and CPU per process")
    ap.add_argument("--linear", action="store_true", help="also the linear task at 10^6 users (8 nodes)")
    ap.add_argument("--two-raylets", action="store_true", help="also Flower on two raylets on loopback (8 nodes)")
    ap.add_argument("--ceiling", action="store_true", help="also what the 2 cores give a one-process round now: "
                    "one in-process run alone vs two at once, alternating, --repeat times (8 nodes)")
    ap.add_argument("--polling", action="store_true", help="also Flower with the engine's dispatch loop and the "
                    "server's reply collection polling the link state (8 nodes), as before they waited on its stores")
    ap.add_argument("--ray-defaults", action="store_true", help="also Flower with Ray's default inline limit for "
                    "task arguments and results (fl_userdp.server.simulate.INLINE_OBJECT_BYTES: 1 MiB), 8 nodes")
    ap.add_argument("--pull-interval", type=float, help="override fl_userdp.server.app.PULL_INTERVAL_S (seconds "
                    "between the driver's polls for replies, where it polls)")
    ap.add_argument("--dispatch-interval", type=float, help="override fl_userdp.server.simulate.DISPATCH_INTERVAL_S "
                    "(seconds between the engine's passes over the nodes' queued messages, where it polls)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()
    extra = dict(kv.split("=", 1) for kv in args.set)
    if args.pull_interval is not None:
        from fl_userdp.server import app

        app.PULL_INTERVAL_S = args.pull_interval
    if args.dispatch_interval is not None:
        from fl_userdp.server import simulate

        simulate.DISPATCH_INTERVAL_S = args.dispatch_interval
    print(f"uptime before: {os.popen('uptime').read().strip()}")
    print(HEADER, flush=True)
    for nodes in [int(n) for n in args.nodes.split(",") if n]:
        flat = {**BASE, "sim.users-per-node": 1024 // nodes, "train.rounds": args.rounds, **extra}
        rows = []
        for mode in args.modes.split(","):
            reps = [(run_once(flat, mode, "inprocess"), run_once(flat, mode, "ray")) for _ in range(args.repeat)]
            rows += [median_run([r[0] for r in reps]), median_run([r[1] for r in reps])]
            if args.repeat > 1:
                print(f"|  | {mode} | {nodes} | paired ratios of the {args.repeat} repetitions (in-process, then "
                      f"Flower, alternating): " + ", ".join(f"{a['round_s'] / b['round_s']:.2f}×" for a, b in reps)
                      + " |  |  |  |  |  |", flush=True)
        report(rows, {**flat, "_label": "tiny LM + LoRA, 1,024 users"}, args.detail)
    if args.linear:
        flat = {**LINEAR, "train.rounds": args.rounds, **extra}
        rows = [run_once(flat, "uls", b) for b in ("inprocess", "ray")]
        report(rows, {**flat, "_label": "linear, 10⁶ users"}, args.detail)
        print("  (the linear round: 0.07-0.1 s of node compute, so the messages and the driver are much of a Flower "
              "round: see experiments/README.md)")
    if args.two_raylets:
        flat = {**BASE, "sim.users-per-node": 128, "train.rounds": args.rounds, **extra}
        with two_raylets() as address:
            for mode in args.modes.split(","):
                ip = run_once(flat, mode, "inprocess")
                two = run_once({**flat, "_ray_address": address}, mode, "ray")
                print(f"| two raylets on loopback (1 CPU each), 8 nodes | {mode} | {ip['round_s']:.3f} | "
                      f"{two['round_s']:.3f} | **{ip['round_s'] / two['round_s']:.2f}×** | Σ node "
                      f"{two['node_sum_s']:.3f} | slowest {two['node_max_s']:.3f} |", flush=True)
    if args.ceiling:
        flat = {**BASE, "sim.users-per-node": 128, "train.rounds": args.rounds, **extra}
        for mode in args.modes.split(","):
            pairs = []
            for _ in range(args.repeat):
                alone = inprocess_copies(flat, mode, 1)[0]
                both = inprocess_copies(flat, mode, 2)
                pairs.append((alone, statistics.mean(both)))
            ceil = [2 * a / b for a, b in pairs]
            print(f"| two in-process runs at once vs one alone, 8 nodes | {mode} | alone "
                  f"{statistics.median(a for a, _ in pairs):.3f} | two at once {statistics.median(b for _, b in pairs):.3f} "
                  f"each | **{statistics.median(ceil):.2f}×** the work per second (the ceiling for Flower's ratio); "
                  f"per repetition " + ", ".join(f"{c:.2f}×" for c in ceil) + " |", flush=True)
    from fl_userdp.server import simulate

    variants = {"polling": (f"Flower, engine and server polling every {simulate.DISPATCH_INTERVAL_S * 1e3:g} ms",
                            "WAKE_ON_STORES", False),
                "ray_defaults": ("Flower, Ray's default inline limit (100 KiB: weights via its object store)",
                                 "INLINE_OBJECT_BYTES", 100 * 1024)}
    for name, (label, attr, value) in variants.items():
        if not getattr(args, name):
            continue
        flat = {**BASE, "sim.users-per-node": 128, "train.rounds": args.rounds, **extra}
        for mode in args.modes.split(","):
            ip = run_once(flat, mode, "inprocess")
            saved = getattr(simulate, attr)
            setattr(simulate, attr, value)
            try:
                other = run_once(flat, mode, "ray")
            finally:
                setattr(simulate, attr, saved)
            cpu = other["cpu"]
            print(f"| {label}, 8 nodes | {mode} | {ip['round_s']:.3f} | {other['round_s']:.3f} | "
                  f"**{ip['round_s'] / other['round_s']:.2f}×** | Σ node {other['node_sum_s']:.3f} | driver CPU/round "
                  f"{cpu.get('driver', 0):.3f}, other Ray {cpu.get('other ray', 0):.3f} | wakeups/round "
                  f"{sum(v for k, v in cpu.items() if k.startswith('wakeups')):.0f} |", flush=True)
    print(f"uptime after: {os.popen('uptime').read().strip()}")


if __name__ == "__main__":
    main()
