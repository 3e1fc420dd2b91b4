"""An in-process transport: the same node computations, no engine (tests, benchmarks, debugging).

Nodes are computed one after another in this process with `fl_userdp.clients.compute`,
exactly what each Flower node would compute for the same request.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from fl_userdp.mechanism.aggregate import split_flat
from fl_userdp.clients.compute import worker_for
from fl_userdp.config import RunConfig

from .strategy import NodeReply, NodeRequest, with_clip_norm


class InProcessTransport:
    def __init__(self, cfg: RunConfig, worker=None) -> None:
        self.cfg = cfg
        self.worker = worker if worker is not None else worker_for(cfg)

    def __call__(self, requests: Mapping[int, NodeRequest], weights: list[np.ndarray]) -> dict[int, NodeReply]:
        out = {}
        for node, req in requests.items():
            cfg = self.cfg if req.clip_norm is None else with_clip_norm(self.cfg, req.clip_norm)
            if req.mode == "uls":
                c = self.worker.uls(cfg, weights, req.round, req.users)
            else:
                c = self.worker.els(cfg, weights, req.users, req.offsets, req.example_ids)
            out[node] = NodeReply(split_flat(c.total, self.worker.shapes), c.users, c.examples,
                                  c.clipped, c.loss_sum, c.grid_loss)
        return out

    def evaluate(self, weights: list[np.ndarray]) -> float:
        return self.worker.evaluate(self.cfg, weights)


def run(cfg: RunConfig, modes: list[str], *, resume: bool = False, setup=None, on_record=None,
        on_mode=None) -> list:
    """Every mode of cfg in this process, one after another (`fl-userdp run --backend inprocess`).

    Same server (`run_mode`: budget stop, checkpoints, resume, metrics) and the same node computations
    as the Flower simulation, without the engine: fast and deterministic for small configs and tests.
    """
    from .runner import prepare, run_mode
    from .strategy import with_mode

    setup = setup or prepare(cfg, modes, resume)
    results = []
    for mode in modes:
        mcfg = with_mode(cfg, mode)
        if on_mode:
            on_mode(mode, setup.sigmas.get(mode, float("nan")))
        transport = InProcessTransport(mcfg)
        results.append(run_mode(mcfg, setup, transport, transport.evaluate, mcfg.out, resume, on_record))
    return results
