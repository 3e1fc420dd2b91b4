"""Population scale: user-updates/s through Flower with users sharded over nodes, vs plain loops and stock Flower.

The task of the reference measurements (experiments/README.md, Population scale): linear regression (`model.name = "linear"`, d = 64), each sampled user takes one
local SGD step on the squared loss over its ≤ k = 8 examples from the broadcast weights (update = lr · mean
gradient), clipped to C = 1, summed, Gaussian noise once (σ = 1). Measured side by side in one process:

* ours through Flower: `run_simulation` with --nodes nodes (1 CPU each) hosting ⌈N / nodes⌉ users each, the
  production round loop (`fl_userdp.server.runner.run_mode` + `UserDPStrategy` + `GridTransport`: sampling, the
  node computations, validation, noise, server step, accounting; evaluation off), N = 10,000 (cohort
  1,000, q = 0.1) and N = 100,000 (cohort 1,000, q = 0.01); user-updates/s = users in the round / seconds
  between consecutive rounds, median over the rounds after --warmup;
* plain single-process loops over the same cohorts (the sampled users of the same rounds), one user at a
  time: torch and numpy on the users' data already in memory (compute only, as the reference "plain torch
  loop"), and numpy generating each user's data as a node does (`LinearWorker.uls_loop`, the same work);
* vectorised: one batched computation over the cohort (data in memory), and a node's code path on the whole
  cohort in this process (`LinearWorker.uls`, data generated);
* stock Flower: one node per user, `FedAvg` wrapped in `DifferentialPrivacyServerSideFixedClipping`
  (Flower 1.42 Message API), --stock-users users, cohort 10 %, the same per-user step and clip;
* pfl-research 0.6 (only with --pfl-python, the python of an environment holding pfl 0.6 and torch; see
  experiments/README.md): the users of the 10,000-user population (the config and seed ours runs on) are
  saved to an .npz and `experiments/pfl_linear.py` trains them in a subprocess, once per --pfl-workers
  process count (`PyTorchModel` + `FederatedAveraging` + `SimulatedBackend` + central `GaussianMechanism`: cohort 1,000
  drawn with replacement, the same per-user step, clip and noise, the noised sum divided by the cohort
  size); user-updates/s = users in the round / seconds between rounds, median over the rounds after --warmup.

* --scale (the million-user row): N = 100,000 and 1,000,000 users, cohort --scale-cohort (10,000: q = 0.1
  and 0.01), two nodes of N/2 users: ours through Flower next to the in-process backend (`--backend
  inprocess`: the same strategy and node code, nodes computed one after another in this process) on the
  same config, in this run; user-updates/s of each, their ratio, s/round at 1,000,000 over 100,000, and
  peak RSS of the driver and of the largest node process.

Peak RSS: this process (server side) and the largest node process (reported by the nodes).

    OMP_NUM_THREADS=1 python experiments/bench_population.py [--rounds 30] [--nodes 2] [--stock-users 1000]
        [--pfl-python .pfl-venv/bin/python [--pfl-workers 1,2]]
    OMP_NUM_THREADS=1 python experiments/bench_population.py --scale [--rounds 20]
"""
from __future__ import annotations

import argparse
import math
import os
import resource
import statistics
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

import numpy as np  # noqa: E402

from fl_userdp.config import parse_config  # noqa: E402

COHORT = 1000
PFL_USERS = 10_000
BASE = {"model.name": "linear", "model.dim": 64, "data.heldout-users": 32, "privacy.mode": "uls",
        "privacy.noise-multiplier": 1.0, "privacy.clip-norm": 1.0, "privacy.max-examples-per-user": 8,
        "train.update": "local-steps", "train.local-steps": 1, "train.local-lr": 0.5, "train.local-batch-size": 8,
        "train.server-optimizer": "sgd", "train.server-lr": 1.0, "train.eval-every": 0,
        "sim.cpus-per-node": 1.0, "sim.num-cpus": 2}


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def config(num_users: int, nodes: int, rounds: int, out: str, cohort: int = COHORT):
    return parse_config({**BASE, "data.num-users": num_users, "privacy.sampling-rate": min(1.0, cohort / num_users),
                         "sim.users-per-node": math.ceil(num_users / nodes), "train.rounds": rounds, "out": out})


# -- ours through Flower ------------------------------------------------------------------------------------
def measured_transport(base):
    """`base` (the Flower transport, `fl_userdp.server.app.GridTransport`) noting each node's peak RSS and compute
    seconds from its reply's metrics; parsing is the base's own (a static `_parse(rep, shapes)`)."""

    class Measured(base):
        node_rss, node_seconds = 0.0, []

        @staticmethod
        def _parse(rep, shapes):
            if not rep.has_error():
                m = rep.content["metrics"]
                Measured.node_rss = max(Measured.node_rss, float(m.get("max-rss-mb", 0.0)))
                Measured.node_seconds.append(float(m["seconds"]))
            return base._parse(rep, shapes)

    return Measured


def run_ours(cfg, warmup: int) -> dict:
    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    from fl_userdp.clients.app import app as client_app
    from fl_userdp.server.app import GridTransport, discover
    from fl_userdp.server.runner import prepare, run_mode
    from fl_userdp.server.simulate import backend_config

    Measured = measured_transport(GridTransport)
    setup = prepare(cfg)
    nodes = math.ceil(cfg.data.num_users / cfg.sim.users_per_node)
    stamps, recs, out = [], [], {}
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        try:
            transport = Measured(grid, discover(grid, nodes, 300.0), cfg)
            stamps.append(time.perf_counter())

            def on_record(rec):
                stamps.append(time.perf_counter())
                recs.append(rec)
            res = run_mode(cfg, setup, transport, None, cfg.out, False, on_record)
            out["epsilon"] = res.epsilon
        except BaseException as err:  # noqa: BLE001 — surfaced below
            out["error"] = err

    run_simulation(server_app=app, client_app=client_app, num_supernodes=nodes, backend_config=backend_config(cfg))
    if "error" in out:
        raise out["error"]
    dts = np.diff(stamps)[warmup:]
    users = np.array([r["users_replied"] for r in recs])[warmup:]
    return {"s_per_round": float(np.median(dts)), "ups": float(np.median(users / dts)),
            "users": float(np.mean(users)), "node_rss": Measured.node_rss,
            "node_s": float(np.median(Measured.node_seconds[warmup * nodes:])),
            "strategy_s": float(np.median([r["wall_time"] for r in recs][warmup:])), "epsilon": out["epsilon"],
            "nodes": nodes, "rounds": len(recs)}


# -- plain loops and the vectorised computation over the same cohorts ------------------------------------------
def run_inprocess(cfg, warmup: int) -> dict:
    """The in-process backend on the same config: the same `run_mode`, strategy and node code, no engine."""
    from fl_userdp.server.inprocess import InProcessTransport
    from fl_userdp.server.runner import prepare, run_mode

    setup = prepare(cfg)
    transport = InProcessTransport(cfg)
    stamps, recs = [time.perf_counter()], []

    def on_record(rec):
        stamps.append(time.perf_counter())
        recs.append(rec)
    run_mode(cfg, setup, transport, None, cfg.out, False, on_record)
    dts = np.diff(stamps)[warmup:]
    users = np.array([r["users_replied"] for r in recs])[warmup:]
    return {"s_per_round": float(np.median(dts)), "ups": float(np.median(users / dts)),
            "users": float(np.mean(users))}


def run_scale(a, tmp: str) -> None:
    """The million-user row: Flower vs the in-process backend at 100,000 and 1,000,000 users, 2 nodes."""
    rows = {}
    for n in (100_000, 1_000_000):
        rows[("flower", n)] = run_ours(config(n, 2, a.rounds, os.path.join(tmp, f"f{n}"), a.scale_cohort), a.warmup)
        rows[("inprocess", n)] = run_inprocess(config(n, 2, a.rounds, os.path.join(tmp, f"i{n}"), a.scale_cohort),
                                               a.warmup)
    print(f"\nlinear task d=64, 2 nodes x 1 CPU, cohort ~{a.scale_cohort:,}; medians of rounds "
          f"{a.warmup + 1}..{a.rounds}")
    print(f"{'system':58s} {'user-updates/s':>15s} {'s/round':>8s}")
    for (kind, n), r in rows.items():
        extra = (f"   (node compute {r['node_s']:.3f} s; peak RSS largest node {r['node_rss']:.0f} MB)"
                 if kind == "flower" else "")
        label = f"ours, {'Flower' if kind == 'flower' else 'in-process backend'}, {n:,} users, cohort ~{r['users']:.0f}"
        print(f"{label:58s} {r['ups']:15,.0f} {r['s_per_round']:8.3f}{extra}")
    print("\nratios (same run):")
    for n in (100_000, 1_000_000):
        print(f"  {n:,} users: Flower / in-process user-updates/s: "
              f"{rows[('flower', n)]['ups'] / rows[('inprocess', n)]['ups']:.2f}x (target >= 1.5)")
    print(f"  Flower s/round 1,000,000 / 100,000 users: "
          f"{rows[('flower', 1_000_000)]['s_per_round'] / rows[('flower', 100_000)]['s_per_round']:.2f}x "
          f"(target <= 1.2)")
    print(f"  peak RSS: driver {rss_mb():.0f} MB (target <= 1,500), largest node "
          f"{max(r['node_rss'] for k, r in rows.items() if k[0] == 'flower'):.0f} MB (target <= 1,000)")


def cohorts(cfg, rounds: int) -> list[np.ndarray]:
    from fl_userdp.server.runner import prepare
    from fl_userdp.server.strategy import UserDPStrategy

    setup = prepare(cfg)
    s = UserDPStrategy(cfg, setup.counts, setup.init_weights, 1.0)
    return [np.concatenate([r.users for r in s.sample(t).values()]) for t in range(1, rounds + 1)]


def sum_tolerance(records: int, clip_norm: float) -> float:
    """How far a node's sum (`vec_lazy`, `numpy_lazy`: each clipped record put on the fixed-point grid of
    `fl_userdp.mechanism.fixed_point`, coordinates truncated toward zero to multiples of u = grid_unit(C), and
    clipped to record_clip_norm(C) = C·(1 − 2^-40)) may lie from the plain float sums of the same records, per
    coordinate: at most u per record from the truncation, at most C·2^-40 per record from the clip margin,
    plus float rounding (1e-9). At a cohort of 1,000 and C = 1 that is ~9.3e-7 (the measured gap: ~2.5e-7)."""
    from fl_userdp.mechanism.fixed_point import CLIP_MARGIN, grid_unit

    return records * (grid_unit(clip_norm) + clip_norm * CLIP_MARGIN) + 1e-9


def run_plain(cfg, cohort_list: list[np.ndarray]) -> dict:
    import torch

    from fl_userdp.clients.compute import LinearWorker, linear_choice
    from fl_userdp.mechanism.clipping import clip_factors

    torch.set_num_threads(1)
    worker = LinearWorker(cfg)
    lr, C, k = cfg.train.local_lr, cfg.privacy.clip_norm, cfg.privacy.max_examples_per_user
    w = np.random.default_rng(0).normal(size=cfg.model.dim) * 0.1
    res: dict[str, list[float]] = {k_: [] for k_ in ("torch", "numpy", "numpy_lazy", "vec", "vec_lazy")}
    totals = {}
    for rnd, users in enumerate(cohort_list, start=1):
        owner, local = linear_choice(cfg.seed, rnd, worker.corpus.counts, users, k)
        x, y = worker.corpus.rows(users[owner], local)
        offs = np.concatenate([[0], np.cumsum(np.bincount(owner, minlength=users.size))])
        xs = [x[offs[i]:offs[i + 1]] for i in range(users.size)]
        ys = [y[offs[i]:offs[i + 1]] for i in range(users.size)]
        # plain torch loop, data in memory
        tx, ty, tw = [torch.from_numpy(a) for a in xs], [torch.from_numpy(a) for a in ys], torch.from_numpy(w)
        t0 = time.perf_counter()
        tot = torch.zeros_like(tw)
        with torch.no_grad():
            for a, b in zip(tx, ty):
                upd = lr * (a.T @ (a @ tw - b)) / a.shape[0]
                tot += upd * torch.clamp(C / torch.clamp(torch.linalg.vector_norm(upd), min=1e-300), max=1.0)
        res["torch"].append(time.perf_counter() - t0)
        totals["torch"] = tot.numpy()
        # plain numpy loop, data in memory
        t0 = time.perf_counter()
        tot = np.zeros_like(w)
        for a, b in zip(xs, ys):
            upd = lr * (a.T @ (a @ w - b)) / a.shape[0]
            n = math.sqrt(float(upd @ upd))
            tot += upd * min(1.0, C / max(n, 1e-300))
        res["numpy"].append(time.perf_counter() - t0)
        totals["numpy"] = tot
        # vectorised, data in memory: one batched computation over the cohort
        t0 = time.perf_counter()
        r = x @ w - y
        upd = lr * np.add.reduceat(r[:, None] * x, offs[:-1], axis=0) / np.diff(offs)[:, None]
        tot = clip_factors(np.sqrt(np.einsum("ud,ud->u", upd, upd)), C) @ upd
        res["vec"].append(time.perf_counter() - t0)
        totals["vec"] = tot
        # a node's code path on the whole cohort (data generated), and the per-user loop doing the same work
        t0 = time.perf_counter()
        totals["vec_lazy"] = worker.uls(cfg, [w], rnd, users).total
        res["vec_lazy"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        totals["numpy_lazy"] = worker.uls_loop(cfg, [w], rnd, users).total
        res["numpy_lazy"].append(time.perf_counter() - t0)
        tol = sum_tolerance(users.size, C)
        gaps = {k_: float(np.abs(v - totals["vec"]).max()) for k_, v in totals.items()}
        assert all(g <= tol for g in gaps.values()), (gaps, tol)
    n = float(np.mean([u.size for u in cohort_list]))
    return {k_: n / statistics.median(v) for k_, v in res.items()}


# -- pfl-research 0.6 on the same users, in its own environment -------------------------------------------------
def save_users(cfg, path: str) -> None:
    """The training users of `cfg` (all their examples) as x (E, d) float32, y (E,) float32, offsets (N + 1,)."""
    from fl_userdp.data.linear import LinearCorpus

    corpus = LinearCorpus(cfg.data, cfg.model, cfg.seed)
    counts = corpus.counts.astype(np.int64)
    owners = np.repeat(np.arange(counts.size), counts)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    x, y = corpus.rows(owners, np.arange(owners.size) - offsets[owners])
    np.savez(path, x=x.astype(np.float32), y=y.astype(np.float32), offsets=offsets)


def run_pfl(python: str, cfg, path: str, rounds: int, warmup: int, workers: int) -> dict:
    """`python experiments/pfl_linear.py` (pfl's venv) on the users of `cfg` saved at `path`; its JSON line."""
    import json
    import subprocess
    import sys

    p = cfg.privacy
    cmd = [python, os.path.join(os.path.dirname(os.path.abspath(__file__)), "pfl_linear.py"), "--users", path,
           "--rounds", str(rounds), "--warmup", str(warmup), "--workers", str(workers),
           "--cohort", str(round(p.sampling_rate * cfg.data.num_users)), "--k", str(p.max_examples_per_user),
           "--local-lr", str(cfg.train.local_lr), "--server-lr", str(cfg.train.server_lr),
           "--clip", str(p.clip_norm), "--sigma", str(p.noise_multiplier), "--seed", str(cfg.seed)]
    out = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=sys.stderr, text=True, check=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}).stdout
    return json.loads(out.strip().splitlines()[-1])


# -- stock Flower: one node per user, FedAvg + server-side fixed-clipping DP -----------------------------------
def run_stock(num_users: int, rounds: int, warmup: int) -> dict:
    from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping, FedAvg
    from flwr.simulation import run_simulation

    cfg = config(num_users, 1, rounds, "unused", num_users // 10)
    client = ClientApp()

    @client.train()
    def train(msg: Message, context: Context) -> Message:
        from fl_userdp.clients.compute import linear_example_ids, worker_for

        worker = worker_for(cfg)
        user = int(context.node_config["partition-id"])
        rnd = int(msg.content["config"].get("server-round", 0))
        w = msg.content["arrays"].to_numpy_ndarrays()[0]
        ids = linear_example_ids(cfg.seed, rnd, user, int(worker.corpus.counts[user]), cfg.privacy.max_examples_per_user)
        x, y = worker.corpus.rows(np.full(ids.size, user), ids)
        new = w - cfg.train.local_lr * (x.T @ (x @ w - y)) / ids.size   # the server clips new - w
        return Message(RecordDict({"arrays": ArrayRecord([new]), "metrics": MetricRecord({"num-examples": 1})}),
                       reply_to=msg)

    stamps: list[float] = []
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        fedavg = FedAvg(fraction_train=0.1, fraction_evaluate=0.0, min_train_nodes=2, min_evaluate_nodes=0,
                        min_available_nodes=num_users)
        dp = DifferentialPrivacyServerSideFixedClipping(fedavg, noise_multiplier=1.0, clipping_norm=1.0,
                                                        num_sampled_clients=num_users // 10)
        dp.start(grid, ArrayRecord([np.zeros(cfg.model.dim)]), num_rounds=rounds,
                 evaluate_fn=lambda rnd, arrays: stamps.append(time.perf_counter()))

    from fl_userdp.server.simulate import backend_config
    run_simulation(server_app=server, client_app=client, num_supernodes=num_users, backend_config=backend_config(cfg))
    dts = np.diff(stamps)[warmup:]
    return {"s_per_round": float(np.median(dts)), "ups": (num_users // 10) / float(np.median(dts)),
            "rounds": len(stamps) - 1}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--nodes", type=int, default=2)
    ap.add_argument("--populations", default="10000,100000")
    ap.add_argument("--plain-rounds", type=int, default=5)
    ap.add_argument("--stock-users", default="1000", help="comma-separated; '' skips stock Flower")
    ap.add_argument("--stock-rounds", type=int, default=8)
    ap.add_argument("--pfl-python", default=None,
                    help="python of an environment with pfl 0.6 (and torch): also run pfl-research on the "
                         f"{PFL_USERS:,}-user population (experiments/pfl_linear.py)")
    ap.add_argument("--pfl-workers", default="1,2",
                    help="comma-separated pfl process counts, one pfl row each (torch.distributed.run if > 1)")
    ap.add_argument("--scale", action="store_true",
                    help="only the million-user row: Flower vs the in-process backend at 100,000 and 1,000,000 users")
    ap.add_argument("--scale-cohort", type=int, default=10_000)
    a = ap.parse_args()
    import logging
    logging.getLogger("flwr").setLevel(logging.ERROR)
    if a.scale:
        run_scale(a, tempfile.mkdtemp(prefix="bench_population_"))
        return

    pops = [int(p) for p in a.populations.split(",") if p]
    tmp = tempfile.mkdtemp(prefix="bench_population_")
    ours, plain = {}, None
    for n in pops:
        cfg = config(n, a.nodes, a.rounds, os.path.join(tmp, str(n)))
        if plain is None:
            plain = run_plain(cfg, cohorts(cfg, a.plain_rounds))
        ours[n] = run_ours(cfg, a.warmup)
        ours[n]["server_rss"] = rss_mb()
    stock = {int(n): run_stock(int(n), a.stock_rounds, 2) for n in a.stock_users.split(",") if n}
    pfl = []
    if a.pfl_python:
        pcfg, path = config(PFL_USERS, a.nodes, a.rounds, os.path.join(tmp, "pfl")), os.path.join(tmp, "users.npz")
        save_users(pcfg, path)
        try:
            pfl = [run_pfl(a.pfl_python, pcfg, path, a.rounds, a.warmup, int(w)) for w in a.pfl_workers.split(",") if w]
        finally:
            os.remove(path)

    print(f"\nlinear task d=64, k=8, one local step, clip 1, sigma 1; ours: {a.nodes} nodes x 1 CPU, "
          f"medians of rounds {a.warmup + 1}..{a.rounds}; plain/vectorised: {a.plain_rounds} cohorts of the first "
          f"population, medians")
    print(f"{'system':58s} {'user-updates/s':>15s} {'s/round':>8s}")
    for n, r in ours.items():
        label = f"ours, Flower, {n:,} users, cohort ~{r['users']:.0f}, {r['nodes']} nodes"
        print(f"{label:58s} "
              f"{r['ups']:15,.0f} {r['s_per_round']:8.3f}   (strategy {r['strategy_s']:.3f} s, node compute "
              f"{r['node_s']:.3f} s; peak RSS server {r['server_rss']:.0f} MB, largest node {r['node_rss']:.0f} MB)")
    for n, r in stock.items():
        label = f"stock Flower 1.42, one node per user, {n:,} users, cohort {n // 10}"
        print(f"{label:58s} "
              f"{r['ups']:15,.0f} {r['s_per_round']:8.3f}")
    for r in pfl:
        label = (f"pfl-research {r['pfl_version']}, {r['workers']} process(es), {r['users']:,} users, "
                 f"cohort {r['cohort']:.0f}")
        print(f"{label:58s} {r['ups']:15,.0f} {r['s_per_round']:8.3f}   (loss {r['loss_start']:.4f} -> "
              f"{r['loss_end']:.4f}; medians of rounds {a.warmup + 1}..{r['rounds']})")
    names = {"torch": "plain torch loop, one user at a time (data in memory)",
             "numpy": "plain numpy loop, one user at a time (data in memory)",
             "numpy_lazy": "plain numpy loop, one user at a time (data generated)",
             "vec": "vectorised over the cohort (data in memory)",
             "vec_lazy": "vectorised over the cohort (node code, data generated)"}
    for k_, v in plain.items():
        print(f"{names[k_]:58s} {v:15,.0f}")
    first = ours[pops[0]]
    print("\nratios (same run):")
    for k_ in ("torch", "numpy", "numpy_lazy", "vec"):
        print(f"  ours {pops[0]:,} / {names[k_]}: {first['ups'] / plain[k_]:.2f}x")
    if len(pops) > 1:
        print(f"  s/round {pops[-1]:,} users / {pops[0]:,} users: "
              f"{ours[pops[-1]]['s_per_round'] / first['s_per_round']:.2f}x (target <= 1.2)")
    for n, r in stock.items():
        ref = min(ours, key=lambda m: abs(m - 10 * n))
        print(f"  ours {ref:,} / stock Flower {n:,} users: {ours[ref]['ups'] / r['ups']:.1f}x user-updates/s")
    for r in pfl if PFL_USERS in ours else []:
        print(f"  ours {PFL_USERS:,} / pfl-research {r['pfl_version'].rsplit('.', 1)[0]} "
              f"({r['workers']} process(es)): {ours[PFL_USERS]['ups'] / r['ups']:.1f}x user-updates/s")
    print(f"  targets: ours {pops[0]:,} >= 2,750 user-updates/s: {first['ups'] >= 2750}; "
          f">= 0.5x plain torch loop: {first['ups'] >= 0.5 * plain['torch']}")


if __name__ == "__main__":
    main()
