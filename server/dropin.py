"""A drop-in user-level DP strategy for existing Flower apps (Message API, Flower 1.42).

In your own `ServerApp`, replace

    strategy = DifferentialPrivacyServerSideFixedClipping(FedAvg(fraction_train=0.1), noise_multiplier=1.0,
                                                          clipping_norm=1.0, num_sampled_clients=10)

by the one line

    strategy = UserDPFedAvg(sampling_rate=0.1, noise_multiplier=1.0, clipping_norm=1.0, delta=1e-5)

and keep `strategy.start(grid, initial_arrays, num_rounds)`. Your ClientApp stays as it is (a
quickstart-style `@app.train()` that receives "arrays" and "config" and answers with its updated
"arrays"). Each node is one user. Per round:

  0. budget  — before anything is sent, stop if the next release would take ε past `max_epsilon`
               (the remaining rounds release nothing; `stop_reason` says why)
  1. sample  — every node independently with probability q (Poisson; OS entropy unless `seed` is given)
  2. send    — the current arrays and config to the sampled nodes
  3. collect — a reply with an error, missing arrays, other keys/shapes/dtypes or NaN/Inf is a
               failure; a node that does not answer in time too
  4. clip    — each reply's update (its arrays − the sent arrays) to norm C, on the server
  5. release — Σ clipped + N(0, σ²C²·I) (noise drawn for this release only), divided by the
               *expected* cohort q·N (N = the nodes registered at round 1, the population)
  6. account — compose a Poisson-subsampled Gaussian round in the ledger (PLD by default, or any
               `privacy.accountant` plug-in), also for empty cohorts and rounds with failures
  7. step    — new arrays = sent arrays + server_lr · the released mean

Flower's own wrapper samples a fixed-size cohort, divides by the number of replies and accounts
without amplification; this strategy is what the Poisson-subsampled Gaussian analysis assumes. The
metrics it returns per round (`epsilon`, `delta`, `noise_multiplier`, `round`) are covered by the
guarantee; `nodes_sampled`, `nodes_replied`, `failures` and `clipped` are diagnostics (from the
users' data, without noise). Client-side evaluation is off unless `evaluate_strategy` (e.g.
`FedAvg(fraction_train=0, fraction_evaluate=0.1)`) is given: its metrics are diagnostics too.
"""
from __future__ import annotations

import math
from typing import Any, Iterable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fl_userdp.accounting import make_accountant, make_event
from fl_userdp.accounting.plugins import check_supports
from fl_userdp.aggregate import release
from fl_userdp.clipping import clip_factors
from fl_userdp.errors import ConfigError
from fl_userdp.fixed_point import record_clip_norm, to_grid
from fl_userdp.noise import SecureGenerator, release_rng
from fl_userdp.rng import rng_for


class UserDPFedAvg(Strategy):
    """User-level DP FedAvg with Poisson sampling of nodes, server-side clipping and a PLD ledger."""

    def __init__(self, sampling_rate: float, noise_multiplier: float, clipping_norm: float, delta: float, *,
                 max_epsilon: float | None = None, accountant: str = "pld", seed: int | None = None,
                 server_lr: float = 1.0, arrays_key: str = "arrays", min_available_nodes: int = 1,
                 evaluate_strategy: Strategy | None = None) -> None:
        super().__init__()
        checks = [(0 < sampling_rate <= 1, "sampling_rate", sampling_rate, "must be in (0, 1]"),
                  (0 <= noise_multiplier < math.inf, "noise_multiplier", noise_multiplier, "must be >= 0"),
                  (0 < clipping_norm < math.inf, "clipping_norm", clipping_norm, "must be > 0"),
                  (0 < delta < 1, "delta", delta, "must be in (0, 1)"),
                  (max_epsilon is None or max_epsilon > 0, "max_epsilon", max_epsilon, "must be > 0"),
                  (server_lr > 0, "server_lr", server_lr, "must be > 0")]
        for ok, key, value, requirement in checks:
            if not ok:
                raise ConfigError(key, value, requirement)
        self.q, self.sigma, self.clip, self.delta = float(sampling_rate), float(noise_multiplier), \
            float(clipping_norm), float(delta)
        self.max_epsilon, self.seed, self.server_lr = max_epsilon, seed, float(server_lr)
        self.arrays_key, self.min_available_nodes = arrays_key, int(min_available_nodes)
        self.evaluate_strategy = evaluate_strategy
        self.event = make_event("uls", self.q, self.sigma)
        self.accountant = make_accountant(accountant, self.delta, "accountant")
        check_supports(self.accountant, self.event, accountant, "accountant")
        self.population: list[int] | None = None
        self.current: ArrayRecord | None = None
        self.requested: list[int] = []
        self.stop_reason: str | None = None
        self.history: list[dict[str, Any]] = []

    # -- Flower's Strategy interface ------------------------------------------------------
    def summary(self) -> None:  # Flower logs this at start
        pass

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        # 0. budget
        if self.stop_reason is None and self.max_epsilon is not None \
                and self.accountant.epsilon_after(self.event) > self.max_epsilon:
            self.stop_reason = (f"privacy budget: round {server_round} would take epsilon from "
                                f"{self.accountant.epsilon():.4g} to {self.accountant.epsilon_after(self.event):.4g} "
                                f"> max_epsilon {self.max_epsilon:g}; stopped after round {server_round - 1}")
        if self.stop_reason is not None:
            self.requested = []
            return []
        # 1. sample (the population is fixed at round 1: the analysis takes N as given)
        if self.population is None:
            nodes = sorted(grid.get_node_ids())
            if len(nodes) < self.min_available_nodes:
                raise ConfigError("min_available_nodes", self.min_available_nodes,
                                  f"exceeds the {len(nodes)} connected nodes")
            self.population = nodes
        rng = SecureGenerator() if self.seed is None else rng_for(self.seed, "sampling", server_round)
        self.requested = [n for n, hit in zip(self.population, rng.random(len(self.population)) < self.q) if hit]
        # 2. send
        self.current = arrays
        return [Message(RecordDict({self.arrays_key: arrays, "config": config}), dst_node_id=n,
                        message_type=MessageType.TRAIN) for n in self.requested]

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        if self.stop_reason is not None:
            return None, MetricRecord({"round": server_round, "released": 0})
        current = [np.asarray(a, np.float64) for a in self.current.to_numpy_ndarrays()]
        keys = list(self.current.keys())
        flat0 = np.concatenate([a.ravel() for a in current]) if current else np.zeros(0)
        # 3./4. collect, validate, clip per user
        total, replied, clipped = np.zeros_like(flat0), 0, 0
        taken: set[int] = set()            # at most one reply per sampled node: one user, one record
        for rep in replies:
            node = rep.metadata.src_node_id
            if node in taken or node not in self.requested:
                continue
            upd = self._update(rep, keys, current, flat0)
            if upd is None:
                continue
            taken.add(node)
            norm = float(np.linalg.norm(upd))
            # exact (grid) sum: the release does not depend on the order the replies arrive in
            total += to_grid(upd * float(clip_factors(np.array([norm]), record_clip_norm(self.clip))[0]), self.clip)
            replied, clipped = replied + 1, clipped + (norm > self.clip)
        # 5. release: noise once, the expected cohort q·N
        expected = self.q * len(self.population)
        std = self.sigma * self.clip
        rng = SecureGenerator() if self.seed is None else \
            release_rng(self.seed, "uls", server_round, std, expected, total)
        rel = release(total, self.clip, self.sigma, expected, rng)
        # 6. account
        self.accountant.compose(self.event)
        eps = float(self.accountant.epsilon())
        # 7. step
        new = flat0 + self.server_lr * rel.update
        parts = np.split(new, np.cumsum([a.size for a in current])[:-1]) if current else []
        arrays = ArrayRecord({k: Array(p.reshape(a.shape).astype(self.current[k].numpy().dtype))
                              for k, p, a in zip(keys, parts, current)})
        record = {"round": server_round, "epsilon": eps if math.isfinite(eps) else -1.0, "delta": self.delta,
                  "noise_multiplier": self.sigma, "nodes_sampled": len(self.requested), "nodes_replied": replied,
                  "failures": len(self.requested) - replied, "clipped": clipped}
        self.history.append(record)
        return arrays, MetricRecord(record)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        if self.evaluate_strategy is None:
            return []
        return self.evaluate_strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        if self.evaluate_strategy is None:
            return None
        return self.evaluate_strategy.aggregate_evaluate(server_round, replies)

    # -- helpers -----------------------------------------------------------------------------
    def _update(self, rep: Message, keys: list[str], current: list[np.ndarray], flat0: np.ndarray):
        """The reply's arrays − the sent arrays, flat; None for an error or a malformed reply."""
        if rep.has_error():
            return None
        try:
            rec = rep.content[self.arrays_key]
            if list(rec.keys()) != keys:
                return None
            got = [np.asarray(rec[k].numpy()) for k in keys]
        except Exception:  # noqa: BLE001 - anything unreadable is a failure, never applied
            return None
        if any(g.shape != c.shape or g.dtype.kind != "f" for g, c in zip(got, current)):
            return None
        flat = np.concatenate([g.astype(np.float64).ravel() for g in got]) if got else np.zeros(0)
        return flat - flat0 if np.all(np.isfinite(flat)) else None

    @property
    def epsilon(self) -> float:
        return float(self.accountant.epsilon())
