"""Simulation overhead: a Flower round vs a plain single-process loop, same cohort, same computations.

Both sides compute the identical clipped updates of the same cohort (default
32 users of the default config: tiny LM + LoRA, synthetic corpus, 4 nodes of
64 users): the Flower side sends one request per node through Flower's
simulation engine on Ray (messages, serialisation, actors), the plain side
calls the same node computations (`fl_userdp.clients.compute`) one after another in
this process. Both are warmed up first; we report medians of --reps rounds
and the ratio flower / plain (target <= 1.3). The server's accounting and
noise are the same on both sides and are left out.

    OMP_NUM_THREADS=1 python experiments/bench_simulation_overhead.py [--cohort 32] [--reps 5]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from fl_userdp.config import parse_config  # noqa: E402
from fl_userdp.rng import rng_for  # noqa: E402
from fl_userdp.server.strategy import NodeReply, NodeRequest, UserDPStrategy, with_mode  # noqa: E402


def cohort_requests(strategy: UserDPStrategy, users: np.ndarray) -> dict[int, NodeRequest]:
    """Requests for a fixed cohort: ULS the users; ELS all kept examples of the same users."""
    U, out = strategy.users_per_node, {}
    for node in np.unique(users // U):
        us = users[users // U == node]
        if strategy.mode == "uls":
            out[int(node)] = NodeRequest("uls", 1, us)
        else:
            ids = [strategy.capped.of_user(int(u)) for u in us]
            offs = np.concatenate([[0], np.cumsum([len(i) for i in ids])])
            out[int(node)] = NodeRequest("els", 1, us, offs, np.concatenate(ids))
    return out


def timed(fn, reps: int, warmup: int) -> tuple[float, list]:
    for _ in range(warmup):
        fn()
    times, result = [], None
    for _ in range(reps):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cohort", type=int, default=32)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--modes", default="uls,els")
    a = ap.parse_args()

    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    from fl_userdp.clients.app import app as client_app
    from fl_userdp.server.app import GridTransport, discover
    from fl_userdp.server.inprocess import InProcessTransport
    from fl_userdp.server.runner import prepare
    from fl_userdp.server.simulate import backend_config

    cfg = parse_config({"privacy.noise-multiplier": 1.0})
    setup = prepare(cfg, ["uls"])
    users = np.sort(rng_for(cfg.seed, "audit", 99).choice(len(setup.counts), a.cohort, replace=False))
    modes = a.modes.split(",")
    strategies = {m: UserDPStrategy(with_mode(cfg, m), setup.counts, setup.init_weights, 1.0) for m in modes}
    requests = {m: cohort_requests(s, users) for m, s in strategies.items()}
    results: dict[str, dict] = {m: {} for m in modes}

    # plain single-process loop over the same node computations
    for m in modes:
        plain = InProcessTransport(with_mode(cfg, m))
        results[m]["plain"], results[m]["plain_out"] = timed(
            lambda: plain(requests[m], strategies[m].weights_list()), a.reps, a.warmup)

    server_app = ServerApp()

    @server_app.main()
    def bench(grid: Grid, context: Context) -> None:
        part2node = discover(grid, strategies[modes[0]].num_nodes, 300.0)
        for m in modes:
            transport = GridTransport(grid, part2node, with_mode(cfg, m))
            results[m]["flower"], results[m]["flower_out"] = timed(
                lambda: transport(requests[m], strategies[m].weights_list()), a.reps, a.warmup)

    run_simulation(server_app=server_app, client_app=client_app, num_supernodes=strategies[modes[0]].num_nodes,
                   backend_config=backend_config(cfg))

    print(f"cohort {a.cohort} users over {len(requests[modes[0]])} nodes, default model; medians of {a.reps} "
          f"after {a.warmup} warm-up rounds")
    for m in modes:
        r = results[m]
        same = all(isinstance(r["flower_out"][n], NodeReply) and all(
            np.allclose(x, y, rtol=1e-5, atol=1e-7) for x, y in zip(r["flower_out"][n].arrays, r["plain_out"][n].arrays))
            for n in requests[m])
        print(f"{m.upper()}: flower round {r['flower']:.3f} s, plain loop {r['plain']:.3f} s, "
              f"ratio {r['flower'] / r['plain']:.2f}x (target <= 1.3), identical updates: {same}")


if __name__ == "__main__":
    main()
