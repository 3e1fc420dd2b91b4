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
without amplification; this strategy is what the Poisson-subsampled Gaussian analysis assumes.

What it logs and returns. At start one line gives q, σ, C, δ, the budget, the accountant, the
randomness and whether client-side evaluation runs. Each round's MetricRecord holds the release
(`round`, `released`, `epsilon`, `delta`, `noise_multiplier`, `clip_norm`, `expected_count`: covered by
the guarantee; an infinite ε is written as inf) and, unless `publish_diagnostics=False`, the
diagnostics under `diagnostics.` (`nodes_sampled`, `nodes_replied`, `failures`, `rejected`, `clipped`:
from the users' data without noise, outside the guarantee). Client-side evaluation is off unless
`evaluate_strategy` (e.g. `FedAvg(fraction_train=0, fraction_evaluate=0.1)`) is given — the start line
says which; its metrics are outside the guarantee too.

Arrays that are not weights. Only float arrays can be clipped and noised. A non-float array (BatchNorm's
`num_batches_tracked`) or BatchNorm's running statistics (`running_mean`, `running_var`: statistics of
a user's batches, not gradients) are refused before round 1 with one line naming the array and the fix
(as opacus' ModuleValidator refuses BatchNorm): replace BatchNorm by GroupNorm
(`opacus.validators.ModuleValidator.fix(model)`), or pass the array in `frozen=[...]` — frozen arrays
are kept out of the release: every round sends them as they were at the start and ignores the
replies' values.

Stops. The run ends cleanly (the strategy returns its Result early, nothing more is sent or evaluated)
when the budget would be passed (`max_epsilon`) or after `max_failed_rounds` rounds in a row where more
than `max_failed_fraction` of the sampled nodes failed or sent a reply that was rejected (a round where
every reply is rejected counts); `stop_reason` and an ERROR/WARNING log line say why, with the ε.
The failure stop's point depends on the replies and is outside the guarantee.
"""
from __future__ import annotations

import math
from logging import ERROR, INFO, WARNING
from typing import Any, Callable, Iterable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

from fl_userdp.accounting import make_accountant, make_event
from fl_userdp.accounting.plugins import check_supports
from fl_userdp.mechanism.aggregate import release
from fl_userdp.mechanism.clipping import clip_factors
from fl_userdp.errors import ConfigError
from fl_userdp.mechanism.fixed_point import record_clip_norm, to_grid
from fl_userdp.mechanism.noise import SecureGenerator, release_rng
from fl_userdp.rng import rng_for


BATCHNORM_STATE = ("running_mean", "running_var", "num_batches_tracked")
COVERED = ("round", "released", "epsilon", "delta", "noise_multiplier", "clip_norm", "expected_count")
DIAGNOSTICS = ("nodes_sampled", "nodes_replied", "failures", "rejected", "clipped")


class _Stopped(Exception):
    """Raised by configure_train once a stop is decided: `start` ends the run and returns its Result."""


class UserDPFedAvg(Strategy):
    """User-level DP FedAvg with Poisson sampling of nodes, server-side clipping and a PLD ledger."""

    def __init__(self, sampling_rate: float, noise_multiplier: float, clipping_norm: float, delta: float, *,
                 max_epsilon: float | None = None, accountant: str = "pld", seed: int | None = None,
                 server_lr: float = 1.0, arrays_key: str = "arrays", min_available_nodes: int = 1,
                 evaluate_strategy: Strategy | None = None, frozen: Iterable[str] = (),
                 max_failed_rounds: int = 3, max_failed_fraction: float = 0.5,
                 publish_diagnostics: bool = True) -> None:
        super().__init__()
        if isinstance(frozen, str):
            frozen = [frozen]
        checks = [(0 < sampling_rate <= 1, "sampling_rate", sampling_rate, "must be in (0, 1]"),
                  (0 <= noise_multiplier < math.inf, "noise_multiplier", noise_multiplier, "must be >= 0"),
                  (0 < clipping_norm < math.inf, "clipping_norm", clipping_norm, "must be > 0"),
                  (0 < delta < 1, "delta", delta, "must be in (0, 1)"),
                  (max_epsilon is None or max_epsilon > 0, "max_epsilon", max_epsilon, "must be > 0"),
                  (server_lr > 0, "server_lr", server_lr, "must be > 0"),
                  (int(max_failed_rounds) >= 1, "max_failed_rounds", max_failed_rounds, "must be >= 1"),
                  (0 <= max_failed_fraction < 1, "max_failed_fraction", max_failed_fraction, "must be in [0, 1)")]
        for ok, key, value, requirement in checks:
            if not ok:
                raise ConfigError(key, value, requirement)
        self.q, self.sigma, self.clip, self.delta = float(sampling_rate), float(noise_multiplier), \
            float(clipping_norm), float(delta)
        self.max_epsilon, self.seed, self.server_lr = max_epsilon, seed, float(server_lr)
        self.arrays_key, self.min_available_nodes = arrays_key, int(min_available_nodes)
        self.evaluate_strategy = evaluate_strategy
        self.frozen = tuple(frozen)
        self.max_failed_rounds, self.max_failed_fraction = int(max_failed_rounds), float(max_failed_fraction)
        self.publish_diagnostics = bool(publish_diagnostics)
        self.accountant_name = accountant
        self.event = make_event("uls", self.q, self.sigma)
        self.accountant = make_accountant(accountant, self.delta, "accountant")
        check_supports(self.accountant, self.event, accountant, "accountant")
        self.population: list[int] | None = None
        self.current: ArrayRecord | None = None
        self.requested: list[int] = []
        self.stop_reason: str | None = None
        self.failed_streak = 0
        self.history: list[dict[str, Any]] = []
        self._result = Result()

    # -- Flower's Strategy interface ------------------------------------------------------
    def start(self, grid: Grid, initial_arrays: ArrayRecord, num_rounds: int = 3, timeout: float = 3600,
              train_config: ConfigRecord | None = None, evaluate_config: ConfigRecord | None = None,
              evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None) -> Result:
        """Flower's round loop, which ends early (returning what was released) on a budget or failure stop."""
        try:
            check_arrays(initial_arrays, self.frozen)
        except ConfigError as err:
            log(ERROR, "UserDPFedAvg: %s", err)
            raise
        self._result = Result(arrays=initial_arrays)
        if evaluate_fn is not None:
            evaluate_fn = self._recording(evaluate_fn)
        try:
            result = super().start(grid, initial_arrays, num_rounds, timeout, train_config, evaluate_config,
                                   evaluate_fn)
        except _Stopped:
            result = self._result
        eps = self.epsilon
        log(INFO, "UserDPFedAvg: %s after %d released rounds: epsilon %s (delta %g, user-level)",
            "stopped" if self.stop_reason else "finished", self.accountant.steps, _fmt_eps(eps), self.delta)
        return result

    def _recording(self, evaluate_fn):
        def wrapped(server_round: int, arrays: ArrayRecord):
            res = evaluate_fn(server_round, arrays)
            if res is not None:
                self._result.evaluate_metrics_serverapp[server_round] = res
            return res
        return wrapped

    def summary(self) -> None:  # Flower logs this at start
        budget = f"max_epsilon {self.max_epsilon:g}" if self.max_epsilon is not None else "no budget (max_epsilon)"
        noise = "OS randomness (secure)" if self.seed is None else f"seeded (seed {self.seed}: the seed is its key)"
        log(INFO, "\t├── user-level DP: Poisson sampling q=%g of the nodes (one node = one user), noise "
            "multiplier %g, clipping norm C=%g, delta %g, %s, accountant %s, %s", self.q, self.sigma, self.clip,
            self.delta, budget, self.accountant_name, noise)
        if self.evaluate_strategy is None:
            log(INFO, "\t├── client-side evaluation: off (the app's @app.evaluate is not called; pass "
                "evaluate_strategy=FedAvg(fraction_train=0, fraction_evaluate=...) to run it)")
        else:
            log(INFO, "\t├── client-side evaluation: %s (its metrics are outside the guarantee)",
                type(self.evaluate_strategy).__name__)
        if self.frozen:
            log(INFO, "\t├── kept out of the release (sent as at the start): %s", ", ".join(self.frozen))
        log(INFO, "\t└── metrics: release keys covered by the guarantee; diagnostics.* (from users' data, no "
            "noise) are outside it")

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        # 0. budget
        if self.stop_reason is None and self.max_epsilon is not None \
                and self.accountant.epsilon_after(self.event) > self.max_epsilon:
            self.stop_reason = (f"privacy budget: round {server_round} would take epsilon from "
                                f"{self.accountant.epsilon():.4g} to {self.accountant.epsilon_after(self.event):.4g} "
                                f"> max_epsilon {self.max_epsilon:g}; stopped after round {server_round - 1}")
            log(WARNING, "UserDPFedAvg: %s", self.stop_reason)
        if self.stop_reason is not None:
            self.requested = []
            raise _Stopped(self.stop_reason)
        # 1. sample (the population is fixed at round 1: the analysis takes N as given)
        if self.population is None:
            nodes = sorted(grid.get_node_ids())
            if len(nodes) < self.min_available_nodes:
                raise ConfigError("min_available_nodes", self.min_available_nodes,
                                  f"exceeds the {len(nodes)} connected nodes")
            self.population = nodes
            expected = self.q * len(nodes)
            log(INFO, "UserDPFedAvg: population N=%d nodes, expected cohort q·N=%g; the released mean's noise std "
                "per coordinate is σC/(q·N)=%.3g (compare it with the updates' size: more users per round or a "
                "smaller C lowers it)", len(nodes), expected, self.sigma * self.clip / expected)
        rng = SecureGenerator() if self.seed is None else rng_for(self.seed, "sampling", server_round)
        self.requested = [n for n, hit in zip(self.population, rng.random(len(self.population)) < self.q) if hit]
        # 2. send
        self.current = arrays
        return [Message(RecordDict({self.arrays_key: arrays, "config": config}), dst_node_id=n,
                        message_type=MessageType.TRAIN) for n in self.requested]

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        current = [np.asarray(a, np.float64) if k not in self.frozen else a
                   for k, a in zip(self.current.keys(), self.current.to_numpy_ndarrays())]
        keys = list(self.current.keys())
        trained = [i for i, k in enumerate(keys) if k not in self.frozen]
        flat0 = np.concatenate([current[i].ravel() for i in trained]) if trained else np.zeros(0)
        # 3./4. collect, validate, clip per user
        total, replied, clipped, rejected, reasons = np.zeros_like(flat0), 0, 0, 0, []
        taken: set[int] = set()            # at most one reply per sampled node: one user, one record
        for rep in replies:
            node = rep.metadata.src_node_id
            if node in taken or node not in self.requested:
                continue
            taken.add(node)
            upd, reason = self._update(rep, keys, current, trained, flat0)
            if upd is None:
                rejected += reason != "failed"
                if reason != "failed":
                    reasons.append(reason)
                continue
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
        # 7. step (frozen arrays go back as they were sent)
        new = flat0 + self.server_lr * rel.update
        parts = dict(zip(trained, np.split(new, np.cumsum([current[i].size for i in trained])[:-1]))) \
            if trained else {}
        arrays = ArrayRecord({k: Array(parts[i].reshape(a.shape).astype(self.current[k].numpy().dtype))
                              if i in parts else self.current[k] for i, (k, a) in enumerate(zip(keys, current))})
        requested = len(self.requested)
        record = {"round": server_round, "released": 1, "epsilon": eps, "delta": self.delta,
                  "noise_multiplier": self.sigma, "clip_norm": self.clip, "expected_count": expected,
                  "nodes_sampled": requested, "nodes_replied": replied,
                  "failures": requested - replied - rejected, "rejected": rejected, "clipped": clipped}
        self.history.append(record)
        self._health(server_round, requested, requested - replied, rejected, reasons)
        metrics = MetricRecord(self.metric_record(record))
        self._result.arrays = arrays
        self._result.train_metrics_clientapp[server_round] = metrics
        return arrays, metrics

    def metric_record(self, record: dict[str, Any]) -> dict[str, Any]:
        """A round's record as published: the release's keys, then `diagnostics.*` (when published)."""
        out = {k: record[k] for k in COVERED}
        if self.publish_diagnostics:
            out.update({f"diagnostics.{k}": record[k] for k in DIAGNOSTICS})
        return out

    def _health(self, rnd: int, requested: int, bad: int, rejected: int, reasons: list[str]) -> None:
        """Log rejections; count a round where more than max_failed_fraction of the sampled nodes failed or
        were rejected (every reply rejected included); stop after max_failed_rounds such rounds in a row."""
        if rejected:
            log(WARNING, "UserDPFedAvg: round %d: %d of %d replies rejected (first: %s) [diagnostic: from the replies, "
                "outside the guarantee]", rnd, rejected, requested, reasons[0])
        if requested and bad / requested > self.max_failed_fraction:
            self.failed_streak += 1
            if self.failed_streak >= self.max_failed_rounds:
                why = f"; last rejection: {reasons[0]}" if reasons else ""
                self.stop_reason = (f"failures: {self.failed_streak} rounds in a row with more than "
                                    f"{self.max_failed_fraction:g} of the sampled nodes failed or rejected "
                                    f"(round {rnd}: {bad} of {requested}){why}; stopped after round {rnd}, "
                                    f"epsilon {_fmt_eps(self.epsilon)}")
                log(ERROR, "UserDPFedAvg: %s [the stop's point depends on the replies: outside the guarantee]",
                    self.stop_reason)
        else:
            self.failed_streak = 0

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        if self.evaluate_strategy is None:
            return []
        return self.evaluate_strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        if self.evaluate_strategy is None:
            return None
        res = self.evaluate_strategy.aggregate_evaluate(server_round, replies)
        if res is not None:
            self._result.evaluate_metrics_clientapp[server_round] = res
        return res

    # -- helpers -----------------------------------------------------------------------------
    def _update(self, rep: Message, keys: list[str], current: list[np.ndarray], trained: list[int],
                flat0: np.ndarray) -> tuple[np.ndarray | None, str]:
        """(the reply's trained arrays − the sent ones, flat; "") or (None, why): "failed" for an error reply,
        else the reason a malformed reply was rejected (it is never applied)."""
        if rep.has_error():
            return None, "failed"
        try:
            rec = rep.content[self.arrays_key]
            if list(rec.keys()) != keys:
                return None, f"array names {list(rec.keys())[:3]}... differ from the sent {keys[:3]}..."
            got = {i: np.asarray(rec[keys[i]].numpy()) for i in trained}
        except Exception as err:  # noqa: BLE001 - anything unreadable is a failure, never applied
            return None, f"unreadable reply ({type(err).__name__})"
        for i, g in got.items():
            if g.shape != current[i].shape or g.dtype.kind != "f":
                return None, (f"array '{keys[i]}' has shape {g.shape} dtype {g.dtype}, sent {current[i].shape} "
                              f"float")
        flat = np.concatenate([got[i].astype(np.float64).ravel() for i in trained]) if trained else np.zeros(0)
        if not np.all(np.isfinite(flat)):
            return None, "non-finite values"
        return flat - flat0, ""

    @property
    def epsilon(self) -> float:
        return float(self.accountant.epsilon())


def check_arrays(arrays: ArrayRecord, frozen: Iterable[str] = ()) -> None:
    """Refuse, with one line naming the array and the fix, an array that cannot be clipped and noised as a
    weight: non-float arrays and BatchNorm's running statistics (unless listed in `frozen`)."""
    frozen = set(frozen)
    unknown = sorted(frozen - set(arrays.keys()))
    if unknown:
        raise ConfigError("frozen", unknown[0], f"names no array of the model (it has {list(arrays.keys())[:4]}...)")
    for key in arrays.keys():
        if key in frozen:
            continue
        dtype = np.dtype(arrays[key].numpy().dtype)
        batchnorm = key.rsplit(".", 1)[-1] in BATCHNORM_STATE
        if dtype.kind != "f" or batchnorm:
            what = ("BatchNorm state, computed from a user's batches" if batchnorm else
                    f"dtype {dtype}, not float")
            raise ConfigError(f"array '{key}'", str(dtype),
                              f"cannot be clipped and noised as a weight ({what}): replace BatchNorm by GroupNorm "
                              f"(opacus.validators.ModuleValidator.fix(model)) or keep it out of the release "
                              f"with UserDPFedAvg(..., frozen=['{key}'])")


def _fmt_eps(eps: float) -> str:
    return f"{eps:.4g}" if math.isfinite(eps) else "inf"
