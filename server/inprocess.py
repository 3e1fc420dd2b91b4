"""An in-process transport: the same node computations, no engine (tests, benchmarks, debugging).

Nodes are computed one after another in this process with `clients.compute`,
exactly what each Flower node would compute for the same request.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from clients.compute import worker_for
from fl_userdp.config import RunConfig

from .strategy import NodeReply, NodeRequest


def contribution_arrays(total: np.ndarray, shapes) -> list[np.ndarray]:
    parts = np.split(total, np.cumsum([int(np.prod(s)) for s in shapes])[:-1])
    return [p.reshape(s) for p, s in zip(parts, shapes)]


class InProcessTransport:
    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        self.worker = worker_for(cfg)

    def __call__(self, requests: Mapping[int, NodeRequest], weights: list[np.ndarray]) -> dict[int, NodeReply]:
        out = {}
        for node, req in requests.items():
            if req.mode == "uls":
                c = self.worker.uls(self.cfg, weights, req.round, req.users)
            else:
                c = self.worker.els(self.cfg, weights, req.users, req.offsets, req.example_ids)
            out[node] = NodeReply(contribution_arrays(c.total, self.worker.shapes), c.users, c.examples,
                                  c.clipped, c.loss_sum)
        return out

    def evaluate(self, weights: list[np.ndarray]) -> float:
        return self.worker.evaluate(self.cfg, weights)
