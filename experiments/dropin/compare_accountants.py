"""Side by side in one Flower simulation: the same quickstart app trained with `UserDPFedAvg` (the drop-in) and
with Flower's own `DifferentialPrivacyServerSideFixedClipping(FedAvg)` + its `RdpAccountant`, at the same σ, C,
rounds and (expected) cohort; prints the ε each reports, plus Flower's RDP with Poisson amplification.

    OMP_NUM_THREADS=1 python experiments/dropin/compare_accountants.py [--users 50] [--rate 0.2] [--rounds 5]

Flower's wrapper accepts an accountant only with sampling_method='no-amplification' (it samples a fixed-size
cohort), so its ε is that of T Gaussian releases without subsampling; the drop-in samples Poisson and its
PLD ledger takes the amplification. One JSON line on stdout.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from flwr.app import ArrayRecord, ConfigRecord, Context  # noqa: E402
from flwr.serverapp import Grid, ServerApp  # noqa: E402
from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping, FedAvg  # noqa: E402
from flwr.simulation import run_simulation  # noqa: E402
from flwr.supercore.privacy_accounting import NeighboringRelation, PrivacyConfig, SamplingMethod  # noqa: E402
from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant  # noqa: E402

from quickstart_app import DIM, app as client_app  # noqa: E402
from fl_userdp.server.dropin import UserDPFedAvg  # noqa: E402
from fl_userdp.server.flower_accountant import FlowerRdpAccountant  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=50)
    ap.add_argument("--rate", type=float, default=0.2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--sigma", type=float, default=1.0)
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--delta", type=float, default=1e-5)
    a = ap.parse_args()
    logging.getLogger("flwr").setLevel(logging.ERROR)
    out: dict = {"users": a.users, "rate": a.rate, "rounds": a.rounds, "sigma": a.sigma, "delta": a.delta}
    server = ServerApp()

    @server.main()
    def serve(grid: Grid, context: Context) -> None:
        init, cfg = ArrayRecord([np.zeros(DIM)]), ConfigRecord({"lr": 0.1})
        ours = UserDPFedAvg(sampling_rate=a.rate, noise_multiplier=a.sigma, clipping_norm=a.clip, delta=a.delta)
        ours.start(grid, init, num_rounds=a.rounds, train_config=cfg)
        out["ours_epsilon_pld_poisson"] = ours.epsilon
        out["ours_nodes_sampled"] = [r["nodes_sampled"] for r in ours.history]
        cohort = max(1, round(a.rate * a.users))
        acc = RdpAccountant(PrivacyConfig(target_delta=a.delta, population_size=a.users,
                                          neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
                                          sampling_method=SamplingMethod.NO_AMPLIFICATION))
        flower = DifferentialPrivacyServerSideFixedClipping(
            FedAvg(fraction_train=cohort / a.users, min_train_nodes=cohort, min_available_nodes=a.users,
                   fraction_evaluate=0.0), a.sigma, a.clip, cohort, accountant=acc)
        flower.start(grid, init, num_rounds=a.rounds, train_config=cfg)
        out["flower_epsilon_rdp_no_amplification"] = acc.get_epsilon(a.delta)
        out["flower_cohort"] = cohort
        poisson = FlowerRdpAccountant(delta=a.delta)
        poisson.compose(ours.event, a.rounds)
        out["flower_rdp_with_poisson_amplification"] = poisson.epsilon()

    from fl_userdp.server.simulate import backend_config
    from fl_userdp.config import parse_config
    run_simulation(server_app=server, client_app=client_app, num_supernodes=a.users,
                   backend_config=backend_config(parse_config({})))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
