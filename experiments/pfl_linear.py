"""pfl-research 0.6 on the population-scale linear task, for `bench_population.py --pfl-python`.

Runs in pfl's own environment (pfl 0.6 pins dp-accounting < 0.6; see experiments/README.md, Population
scale, for the two install commands). The task is the one of `bench_population.py`: linear regression,
d = 64; each sampled user takes one local SGD step (lr 0.5) on 0.5 · mean squared error over at most k = 8
of its examples (a fresh uniformly random k-subset each time it is sampled, as our nodes do), so its
update is lr · mean gradient; the update is clipped to ℓ² norm C = 1, the cohort's updates are summed and
Gaussian noise N(0, σ²C²) (σ = 1) is added once per round, the sum is divided by the cohort size and
applied with server SGD, lr 1. Weights start at zero.

Built from pfl's own pieces: `PyTorchModel` (CPU, float32), `FederatedAveraging`, `SimulatedBackend`,
`FederatedDataset` with pfl's 'random' user sampler (a fixed cohort of --cohort users per round, each
drawn uniformly from the population, with replacement), and
`CentrallyAppliedPrivacyMechanism(GaussianMechanism(C, σ))` (clip each user's update, noise on the sum).
Per-user evaluation is off after the first round (pfl always evaluates in round 0, a warm-up round).

The users come from the .npz written by `bench_population.py` (`save_users`): the training users of
`LinearCorpus` for the same config and seed, as x (E, d) float32, y (E,) float32 and offsets (N + 1,).

Prints one JSON line on stdout: user-updates/s (median over the rounds after --warmup of users in the
round / seconds between consecutive rounds), seconds per round, and the loss (0.5 · mean squared error
over all the users' examples) before and after training; progress goes to stderr.

    OMP_NUM_THREADS=1 .pfl-venv/bin/python experiments/pfl_linear.py --users users.npz [--rounds 30]
        [--warmup 5] [--workers 2]

--workers W > 1 re-runs this script under `torch.distributed.run` with W processes (pfl's distributed
simulation: each process trains part of the cohort, the sums are all-reduced over gloo).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402


def log(*a) -> None:
    print(*a, file=sys.stderr, flush=True)


def parse(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", required=True, help=".npz with x, y, offsets (bench_population.save_users)")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--cohort", type=int, default=1000)
    ap.add_argument("--k", type=int, default=8, help="examples per user per round (at most)")
    ap.add_argument("--local-lr", type=float, default=0.5)
    ap.add_argument("--server-lr", type=float, default=1.0)
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--sigma", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=1, help="> 1: pfl's distributed simulation via torchrun")
    return ap.parse_args(argv)


def relaunch(a: argparse.Namespace) -> None:
    """Re-run this script as --workers processes under torch.distributed.run (pfl reads its env)."""
    import subprocess

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={a.workers}",
           os.path.abspath(__file__), *sys.argv[1:]]
    sys.exit(subprocess.call(cmd))


def main() -> None:
    a = parse()
    if a.workers > 1 and "TORCHELASTIC_RUN_ID" not in os.environ:
        relaunch(a)
    import torch

    torch.set_num_threads(1)
    # pfl's noise step copies a tensor with torch.tensor(t) (pfl/internal/ops/pytorch_ops.py); harmless here
    warnings.filterwarnings("ignore", message="To copy construct from a tensor")
    # pfl's samplers and seeds derive from numpy's global state: the same on every worker
    np.random.seed(a.seed)
    torch.manual_seed(a.seed)

    from pfl.aggregate.base import get_num_devices_weight_name
    from pfl.aggregate.simulate import SimulatedBackend
    from pfl.algorithm import FederatedAveraging, NNAlgorithmParams
    from pfl.callback.base import TrainingProcessCallback
    from pfl.common_types import Population
    from pfl.data.dataset import Dataset
    from pfl.data.federated_dataset import FederatedDataset
    from pfl.data.sampling import get_user_sampler
    from pfl.hyperparam import NNEvalHyperParams, NNTrainHyperParams
    from pfl.internal.ops.selector import get_default_framework_module as get_ops
    from pfl.metrics import Metrics, Weighted
    from pfl.model.pytorch import PyTorchModel
    from pfl.privacy import CentrallyAppliedPrivacyMechanism, GaussianMechanism

    rank = get_ops().distributed.global_rank
    world = get_ops().distributed.world_size
    data = np.load(a.users)
    x, y, offs = data["x"].astype(np.float32), data["y"].astype(np.float32), data["offsets"].astype(np.int64)
    num_users, dim = offs.size - 1, x.shape[1]
    pick = np.random.default_rng([a.seed, rank])   # each worker's users' k-subsets

    def make_dataset(uid: int) -> Dataset:
        s, e = int(offs[uid]), int(offs[uid + 1])
        if e - s > a.k:
            idx = s + np.sort(pick.choice(e - s, a.k, replace=False))
            return Dataset((x[idx], y[idx]), user_id=uid)
        return Dataset((x[s:e], y[s:e]), user_id=uid)

    users = FederatedDataset(make_dataset, get_user_sampler("random", list(range(num_users))))

    class Linear(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(dim))

        def forward(self, xb):
            return xb @ self.w

        def loss(self, xb, yb):
            return 0.5 * torch.mean((xb @ self.w - yb) ** 2)

        @torch.no_grad()
        def metrics(self, xb, yb):
            return {"loss": Weighted(0.5 * float(torch.sum((xb @ self.w - yb) ** 2)), len(xb))}

    net = Linear()
    model = PyTorchModel(net, local_optimizer_create=torch.optim.SGD,
                         central_optimizer=torch.optim.SGD(net.parameters(), lr=a.server_lr))
    dp = CentrallyAppliedPrivacyMechanism(GaussianMechanism(clipping_bound=a.clip, relative_noise_stddev=a.sigma))
    backend = SimulatedBackend(training_data=users, val_data=users, postprocessors=[dp])
    algo_params = NNAlgorithmParams(central_num_iterations=a.rounds, evaluation_frequency=a.rounds + 1,
                                    train_cohort_size=a.cohort, val_cohort_size=None)
    train_params = NNTrainHyperParams(local_num_epochs=None, local_learning_rate=a.local_lr, local_batch_size=a.k,
                                      local_num_steps=1)

    def central_loss() -> float:
        w = net.w.detach().double().numpy()
        return float(0.5 * np.mean((x.astype(np.float64) @ w - y) ** 2))

    devices = get_num_devices_weight_name(Population.TRAIN)

    class Stamps(TrainingProcessCallback):
        def __init__(self) -> None:
            self.t: list[float] = []
            self.users: list[float] = []
            self.last: dict = {}

        def on_train_begin(self, *, model) -> Metrics:
            self.t.append(time.perf_counter())
            return Metrics()

        def after_central_iteration(self, aggregate_metrics, model, *, central_iteration):
            self.t.append(time.perf_counter())
            n = aggregate_metrics[devices]
            self.users.append(float(getattr(n, "overall_value", n)))
            self.last = aggregate_metrics.to_simple_dict()
            return False, Metrics()

    stamps = Stamps()
    loss0, w0 = central_loss(), net.w.detach().clone()
    if rank == 0:
        log(f"pfl: {num_users} users, {x.shape[0]} examples, d={dim}, cohort {a.cohort}, {world} process(es), "
            f"{a.rounds} rounds; loss at start {loss0:.4f}")
    FederatedAveraging().run(algorithm_params=algo_params, backend=backend, model=model,
                             model_train_params=train_params,
                             model_eval_params=NNEvalHyperParams(local_batch_size=None),
                             callbacks=[stamps], send_metrics_to_platform=False)
    loss1 = central_loss()
    moved = float(torch.linalg.vector_norm(net.w.detach() - w0))
    if rank != 0:
        return
    dp_metrics = {k_: v for k_, v in stamps.last.items() if "DP" in k_}
    log(f"pfl: loss at end {loss1:.4f}, |w_end - w_start| = {moved:.4f}; last round: {dp_metrics}")
    if not loss1 < loss0:
        log("pfl: the loss did not decrease")
    dts = np.diff(stamps.t)[a.warmup:]
    ups = np.array(stamps.users[a.warmup:]) / dts
    print(json.dumps({"system": "pfl-research", "pfl_version": __import__("pfl").__version__,
                      "torch_version": torch.__version__, "workers": world, "users": num_users,
                      "cohort": float(np.mean(stamps.users)), "rounds": len(stamps.users), "warmup": a.warmup,
                      "ups": float(np.median(ups)), "s_per_round": float(statistics.median(dts)),
                      "loss_start": loss0, "loss_end": loss1, "weights_moved": moved}), flush=True)


if __name__ == "__main__":
    main()
