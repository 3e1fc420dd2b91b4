"""The user-level DP strategy: one readable round loop, testable without Flower.

The strategy never touches the engine. Each round it hands a `Transport` one
`NodeRequest` per node that hosts sampled users (node p hosts users
[p·U, (p+1)·U), U = sim.users-per-node) together with the current weights,
and gets back, per node, a `NodeReply` (the node's summed clipped updates and
counts) or a `NodeFailure`; a node missing from the answer timed out. The
Flower transport lives in `fl_userdp.server.app`; tests pass fakes.

Round r (`run_round`):
  0. budget  — stop before a release that would take ε past the budget (privacy.max-epsilon, and
               privacy.target-epsilon when σ was calibrated for it)
  1. sample  — Poisson users (ULS) or Poisson kept examples (ELS): seeded by (seed, mode, r), or from OS
               entropy in secure mode; drawn during the previous round (it never depends on the data)
  2. send    — one request per node with sampled users (an empty cohort sends nothing), with this round's
               C when it adapts
  3. collect — replies; errors and timeouts count as failures (meanwhile the ledger works out its next ε)
  4. check   — each node's sum: shape/dtype/finite, norm ≤ requested count × C (else scaled to it); the
               sums are added in int64 grid units (exact in any order: `fl_userdp.mechanism.fixed_point`)
  5. release — Σ + N(0, σ²C²·I), divided by the expected count (q·N or q·n_k); the noise is drawn for
               this release only (`fl_userdp.mechanism.noise`); with adaptive clipping the noised centred count of
               unclipped records too, and the next C (`fl_userdp.mechanism.adaptive_clip`); with
               privacy.private-loss the noised mean training loss and clipped fraction
               (`fl_userdp.mechanism.private_loss`), all accounted as one release
  6. account — compose the round's event in the ledger (also for empty cohorts)
  7. log     — hand the release to `self.journal` (the write-ahead release log), before anything uses it
  8. step    — server optimizer with the noisy mean as the gradient estimate
  9. eval    — held-out loss every train.eval-every rounds (and at the last round)
 10. health  — more than sim.max-failed-fraction of the nodes failed (or were rejected) in
               sim.max-failed-rounds rounds in a row: stop after this (released) round. The decision
               reads failure counts only, never the release.
 11. record  — one flat dict per round (`fl_userdp.records.report` labels what the DP guarantee covers)

`replay(entry, update)` applies a logged release again (resume): steps 6 and 8 only.
"""
from __future__ import annotations

import dataclasses
import math
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from fl_userdp.accounting import event_from_dict, event_to_dict, make_accountant, make_event
from fl_userdp.accounting.plugins import check_supports
from fl_userdp.mechanism.adaptive_clip import (default_count_noise, effective_noise_multiplier, next_clip_norm,
                                     unclipped_fraction)
from fl_userdp.mechanism.aggregate import expected_count, release, split_flat
from fl_userdp.config import RunConfig, loss_bound, parse_config, publish_diagnostics, secure_mode, to_flat
from fl_userdp.errors import ConfigError
from fl_userdp.mechanism.fixed_point import (GRID_LOSS_WARN, ROUND_RECORDS, from_units, grid_loss_warning,
                                             to_units)
from fl_userdp.mechanism.noise import SecureGenerator, release_rng
from fl_userdp.mechanism.private_loss import default_loss_noise, mean_loss, node_loss, with_loss
from fl_userdp.rng import rng_for
from fl_userdp.mechanism.bandmf import NoiseStream, coefficients
from fl_userdp.mechanism.sampling import (MODE_KEYS, cap_examples, cyclic_groups, group_examples, group_of_round,
                                          group_positions, group_users, poisson_examples, poisson_users)
from fl_userdp.mechanism.validation import check_contribution

from .optimizer import make_optimizer


@dataclass(frozen=True)
class NodeRequest:
    """What one node must compute this round. ULS: `users`. ELS: CSR over `users`."""

    mode: str
    round: int
    users: np.ndarray                     # global user ids hosted by the node, sorted
    offsets: np.ndarray | None = None     # ELS: example_ids[offsets[i]:offsets[i+1]] belong to users[i]
    example_ids: np.ndarray | None = None  # ELS: user-local ids of the sampled kept examples
    clip_norm: float | None = None        # this round's C when it adapts (None: the config's)

    @property
    def count(self) -> int:
        """Clipped records requested: users (ULS) or examples (ELS)."""
        return int(self.users.size) if self.mode == "uls" else int(self.offsets[-1])


@dataclass(frozen=True)
class NodeReply:
    """A node's answer: the sum of its clipped records, as arrays shaped like the trainables."""

    arrays: list[np.ndarray]
    users: int = 0
    examples: int = 0
    clipped: int = 0
    loss_sum: float | None = None  # Σ of per-record training losses (optional)
    grid_loss: float | None = None  # what the exact-sum grid dropped of the node's sum, where measured (a diagnostic)


@dataclass(frozen=True)
class NodeFailure:
    reason: str


class GridLossWarning(UserWarning):
    """The exact-sum grid dropped a measurable part of a node's sum: C is far above the records' norms."""


Transport = Callable[[Mapping[int, NodeRequest], list[np.ndarray]], Mapping[int, Any]]
Evaluator = Callable[[list[np.ndarray]], "float | None"]
Journal = Callable[[dict[str, Any], np.ndarray], None]  # (ledger entry, released update): durable on return


# Keys that may differ between a checkpoint and the run that resumes it.
RESUMABLE_KEYS = ("train.rounds", "out", "checkpoint-every", "keep-releases", "train.eval-every",
                  "privacy.max-epsilon")


def identity(cfg: RunConfig) -> dict[str, Any]:
    """The config keys a checkpoint must agree on (everything that changes the math or the budget).

    σ itself is checked separately (it is stored with the run). A calibrated run's target ε is its budget,
    so it is part of the identity; with a fixed σ the target is unused and may differ.
    """
    skip = {"privacy.noise-multiplier", "privacy.publish-diagnostics"}
    if not cfg.privacy.private_loss:  # off: the loss release's own keys change nothing
        skip |= {"privacy.private-loss", "privacy.loss-bound", "privacy.loss-noise-multiplier"}
    if cfg.privacy.mechanism == "independent":  # the banded strategy's keys change nothing (bands is 1)
        skip |= {"privacy.mechanism", "privacy.bands", "privacy.bandmf-coefficients"}
    if cfg.privacy.participation == "poisson":  # the default: as every run before the key existed
        skip.add("privacy.participation")
    if cfg.privacy.noise_multiplier is not None:
        skip.add("privacy.target-epsilon")
    return {k: v for k, v in to_flat(cfg).items()
            if k not in RESUMABLE_KEYS and not k.startswith("sim.") and k not in skip}


def check_identity(meta: dict[str, Any], cfg: RunConfig) -> None:
    """Refuse a checkpoint written for another mode or another config (ConfigError naming the key)."""
    if meta.get("mode") != cfg.privacy.mode:
        raise ConfigError("--resume", meta.get("mode"), f"checkpoint is for another mode than {cfg.privacy.mode!r}")
    saved, now = meta.get("identity", {}), identity(cfg)
    for key in sorted(set(saved) | set(now)):
        if saved.get(key) != now.get(key):
            if key == "privacy.target-epsilon" and key not in saved and "noise_multiplier" in meta:
                raise ConfigError("privacy.noise-multiplier", "auto", f"must be the run's fixed σ to resume it: "
                                  f"--set privacy.noise-multiplier={meta['noise_multiplier']!r}")
            raise ConfigError(key, now.get(key), f"differs from the checkpoint ({saved.get(key)!r}); refusing to resume")


class UserDPStrategy:
    """Server state and round logic for one mode (cfg.privacy.mode) of one run."""

    def __init__(self, cfg: RunConfig, counts: np.ndarray, init_weights: list[np.ndarray],
                 noise_multiplier: float) -> None:
        p = cfg.privacy
        self.cfg, self.mode = cfg, p.mode
        self.secure = secure_mode(cfg)  # sampling and noise from OS entropy (fl_userdp.config.secure_mode)
        self.counts = np.asarray(counts, dtype=np.int64)
        self.num_users = int(self.counts.size)
        if self.num_users < 1:
            raise ConfigError("data.num-users", self.num_users, "must be >= 1 (the dataset has no training users)")
        self.users_per_node = cfg.sim.users_per_node
        self.shapes = [tuple(a.shape) for a in init_weights]
        self.dtypes = [a.dtype for a in init_weights]
        self.sizes = [int(np.prod(s)) for s in self.shapes]
        self.weights = np.concatenate([np.asarray(a, np.float64).ravel() for a in init_weights])
        self.capped = cap_examples(rng_for(cfg.seed, "cap"), self.counts, p.max_examples_per_user) \
            if self.mode == "els" else None
        self.expected = expected_count(self.mode, p.sampling_rate, self.num_users,
                                       self.capped.total if self.capped is not None else None)
        if self.expected <= 0:
            raise ConfigError("data.source", cfg.data.source, "has no training examples")
        most = self.num_users if self.mode == "uls" else int(self.capped.total)  # records one round can hold
        if most > ROUND_RECORDS:
            raise ConfigError("data.num-users", self.num_users, f"puts up to {most} records into one round; the "
                              f"exact sum holds {ROUND_RECORDS} (fl_userdp.mechanism.fixed_point)")
        self.noise_multiplier = float(noise_multiplier)  # σ of the sum
        self.clip_norm = float(p.clip_norm)               # C: fixed, or adapted every round (Andrew et al.)
        self.adaptive = p.adaptive_clip_quantile is not None
        self.count_noise = (p.count_noise_multiplier or default_count_noise(self.expected)) if self.adaptive else 0.0
        # the ledger's σ: the sum's, or the joint (sum, unclipped count, private loss) release's effective multiplier
        self.accounted_multiplier = effective_noise_multiplier(self.noise_multiplier, self.count_noise) \
            if self.adaptive else self.noise_multiplier
        self.private_loss = p.private_loss  # the noised training loss and clipped fraction (mechanism.private_loss)
        self.loss_bound = loss_bound(cfg) if self.private_loss else 0.0
        self.loss_noise = (p.loss_noise_multiplier or default_loss_noise(self.expected)) if self.private_loss else 0.0
        if self.private_loss:
            self.accounted_multiplier = with_loss(self.accounted_multiplier, self.loss_noise, self.adaptive)
        self.event = make_event(self.mode, p.sampling_rate, self.accounted_multiplier, p.max_examples_per_user,
                                p.bands)
        self._cyclic_groups(p.bands)  # b > 1: each round draws within one group (`fl_userdp.mechanism.sampling`)
        # banded correlated noise: w_t = (C⁻¹z)_t from a stream whose buffer is secret state (checkpointed)
        self.stream = NoiseStream(coefficients(p.bandmf_coefficients, p.bands, cfg.train.rounds), self.weights.size) \
            if p.mechanism == "bandmf" else None
        self.noise_record: Callable[[int, np.ndarray], None] | None = None  # set by the runner (b > 1)
        self.accountant = make_accountant(p.accountant, p.delta)  # built-in, or a plug-in ledger
        check_supports(self.accountant, self.event, p.accountant)
        self.optimizer = make_optimizer(cfg.train.server_optimizer, cfg.train.server_lr, self.weights.size)
        self.round = 0
        self.stop_reason: str | None = None
        self.journal: Journal | None = None  # set by the runner: the write-ahead release log
        self._ahead: tuple[int, dict] | None = None  # (round, requests) drawn ahead, used only by that round
        self.failed_streak = 0               # consecutive rounds over sim.max-failed-fraction
        self.grid_warned = False             # the exact-sum grid's loss is warned about once
        self.failure_stop = False

    def _cyclic_groups(self, bands: int) -> None:
        """The one-time split into `bands` groups (seed only) and each group's members and expected count."""
        self.groups = None
        if bands == 1:
            return
        if bands > self.num_users:
            raise ConfigError("privacy.bands", bands, f"must be <= the number of training users ({self.num_users})")
        p = self.cfg.privacy
        self.groups = cyclic_groups(rng_for(self.cfg.seed, "groups"), self.num_users, bands)
        self.group_members = [np.flatnonzero(self.groups == g) for g in range(bands)]
        self.group_positions = [group_positions(self.capped, self.groups, g) for g in range(bands)] \
            if self.mode == "els" else None
        self.group_expected = [expected_count(self.mode, p.sampling_rate, m.size, None if self.mode == "uls"
                                              else int(self.group_positions[g].size))
                               for g, m in enumerate(self.group_members)]
        empty = next((g for g, e in enumerate(self.group_expected) if e <= 0), None)
        if empty is not None:
            raise ConfigError("privacy.bands", bands, f"leaves group {empty} without training examples")

    def expected_of(self, rnd: int) -> float:
        """Round `rnd`'s expected count: the mode's (q·N or q·n_k), or its group's with cyclic groups."""
        if self.groups is None:
            return self.expected
        return self.group_expected[group_of_round(rnd, len(self.group_expected))]

    @property
    def budget(self) -> tuple[float, str] | None:
        """The ε no release may pass, and its key: max-epsilon, and the target when σ was calibrated for it."""
        p = self.cfg.privacy
        limits = [(p.max_epsilon, "max-epsilon")] if p.max_epsilon is not None else []
        if p.noise_multiplier is None:
            limits.append((p.target_epsilon, "target-epsilon"))
        return min(limits) if limits else None

    # -- helpers -------------------------------------------------------------
    @property
    def num_nodes(self) -> int:
        return math.ceil(self.num_users / self.users_per_node)

    def weights_list(self) -> list[np.ndarray]:
        return [w.astype(d) for w, d in zip(split_flat(self.weights, self.shapes), self.dtypes)]

    def epsilon(self) -> float:
        return self.accountant.epsilon()

    # -- 1. sample -------------------------------------------------------------
    def sample(self, rnd: int) -> dict[int, NodeRequest]:
        """This round's requests, keyed by node (partition) id: a function of (seed, round), or fresh OS
        entropy in secure mode; never of the data."""
        p, U = self.cfg.privacy, self.users_per_node
        # each mode draws its own cohorts: the releases of ULS and ELS in one compare are independent mechanisms
        rng = SecureGenerator() if self.secure else rng_for(self.cfg.seed, "sampling", rnd, key=MODE_KEYS[self.mode])
        q = p.sampling_rate
        g = group_of_round(rnd, p.bands)
        if self.mode == "uls":
            users = poisson_users(rng, self.num_users, q) if self.groups is None else \
                group_users(rng, self.group_members[g], q)
            return {int(g[0] // U): NodeRequest("uls", rnd, g)
                    for g in np.split(users, np.flatnonzero(np.diff(users // U)) + 1) if g.size}
        s = poisson_examples(rng, self.capped, q) if self.groups is None else \
            group_examples(rng, self.capped, self.group_positions[g], q)
        requests: dict[int, NodeRequest] = {}
        node_of = s.users // U
        for node in np.unique(node_of):
            i0, i1 = np.searchsorted(node_of, [node, node + 1])
            offs = s.offsets[i0:i1 + 1]
            requests[int(node)] = NodeRequest("els", rnd, s.users[i0:i1], offs - offs[0],
                                              s.example_ids[offs[0]:offs[-1]])
        return requests

    # -- 3./4. collect and check ---------------------------------------------------
    def collect(self, requests: Mapping[int, NodeRequest], replies: Mapping[int, Any]) -> tuple[np.ndarray, dict]:
        """Sum the validated contributions; count failures, rejections, re-clips, and the centred count of
        unclipped records (Σ (b_i − ½), for adaptive clipping)."""
        C = self.clip_norm
        units = np.zeros(self.weights.size, np.int64)  # exact in any order (fl_userdp.mechanism.fixed_point)
        rest = np.zeros(self.weights.size)             # off the grid: only sums the check rescaled
        st = dict(nodes_replied=0, failures=0, rejected=0, reclipped=0, users_replied=0,
                  examples_processed=0, clipped=0, records=0, loss_sum=0.0, loss_records=0, unclipped_centred=0.0,
                  loss_centred=0.0, grid_loss=None)
        for node, req in requests.items():
            rep = replies.get(node)
            if not isinstance(rep, NodeReply):  # timeout (missing), NodeFailure or garbage
                st["failures"] += 1
                continue
            checked = check_contribution(list(rep.arrays), self.shapes, req.count * C)
            if checked.value is None:
                st["rejected"] += 1
                continue
            st["reclipped"] += checked.status == "reclipped"
            whole, off = to_units(checked.value, C)
            units += whole
            rest += off
            st["nodes_replied"] += 1
            users = min(max(int(rep.users), 0), int(req.users.size))
            examples = max(int(rep.examples), 0)
            st["users_replied"] += users
            st["examples_processed"] += examples
            st["records"] += req.count
            clipped = min(max(int(rep.clipped), 0), req.count)  # a node's count is bounded by its records too
            st["clipped"] += clipped
            st["unclipped_centred"] += (req.count - clipped) - req.count / 2
            if self.private_loss:  # Σ (ℓ_i − L/2) over the node's records, its sum bounded to [0, records × L]
                st["loss_centred"] += node_loss(rep.loss_sum, req.count, self.loss_bound)
            if rep.grid_loss is not None and math.isfinite(rep.grid_loss):
                st["grid_loss"] = max(st["grid_loss"] or 0.0, float(rep.grid_loss))
            if rep.loss_sum is not None and math.isfinite(rep.loss_sum):
                st["loss_sum"] += float(rep.loss_sum)
                st["loss_records"] += req.count
        return from_units(units, C) + rest, st

    # -- the round ---------------------------------------------------------------
    def run_round(self, transport: Transport, evaluate: Evaluator | None = None) -> dict[str, Any] | None:
        """Run the next round; return its record, or None when the budget stops the run."""
        p, rnd, t0 = self.cfg.privacy, self.round + 1, time.perf_counter()
        # 0. budget: never release a round that would pass it
        budget = self.budget
        if budget is not None and self.accountant.epsilon_after(self.event) > budget[0]:
            self.stop_reason = (f"privacy budget: round {rnd} would take epsilon from {self.epsilon():.4g} to "
                                f"{self.accountant.epsilon_after(self.event):.4g} > {budget[1]} {budget[0]:g}; "
                                f"stopped after round {self.round}")
            return None
        # 1. sample (drawn ahead during the previous round when it could be: it never depends on the data)
        ahead_rnd, ahead_requests = self._ahead if self._ahead is not None else (None, None)
        requests = ahead_requests if ahead_rnd == rnd else self.sample(rnd)
        self._ahead = None
        if self.adaptive:  # this round's C travels with the requests
            requests = {n: dataclasses.replace(r, clip_norm=self.clip_norm) for n, r in requests.items()}
        # 2./3. send to the nodes with sampled users and collect; meanwhile the ledger works out its next ε
        # and the next round's sample is drawn (both independent of the data), so neither waits for the nodes
        with ThreadPoolExecutor(2) as ahead:
            next_eps = ahead.submit(self.accountant.epsilon_after, self.event)
            next_sample = ahead.submit(self.sample, rnd + 1) if rnd < self.cfg.train.rounds else None
            replies = transport(requests, self.weights_list()) if requests else {}
            next_eps.result()
            if next_sample is not None:
                self._ahead = (rnd + 1, next_sample.result())
        # 4. validate / clip and sum
        total, st = self.collect(requests, replies)
        if st["grid_loss"] is not None and st["grid_loss"] > GRID_LOSS_WARN and not self.grid_warned \
                and publish_diagnostics(self.cfg):  # a measured figure: only where diagnostics are published
            self.grid_warned = True
            warnings.warn(grid_loss_warning(st["grid_loss"], self.clip_norm), GridLossWarning, stacklevel=2)
        # 5. noise once (drawn for this release only), divide by the expected count; with adaptive clipping
        #    the centred unclipped count is released with it (its own noise, from the same generator, which
        #    is keyed by the count and the count's noise std as well)
        #    (privacy.mechanism "bandmf": the draw becomes this round's (C⁻¹z)_t, `fl_userdp.mechanism.bandmf`)
        C, E = self.clip_norm, self.expected_of(rnd)
        std = C * self.noise_multiplier
        extra = (self.count_noise, st["unclipped_centred"]) if self.adaptive else ()
        if self.private_loss:  # the loss part (and the clipped count, without adaptive clipping) key the noise too
            extra += (self.loss_noise, self.loss_bound, st["loss_centred"],
                      *(() if self.adaptive else (st["unclipped_centred"],)))
        rng = SecureGenerator() if self.secure else \
            release_rng(self.cfg.seed, self.mode, rnd, std, E, total, extra)
        rel = release(total, C, self.noise_multiplier, E, rng, self.stream)
        adapt = {}
        if self.adaptive:
            noisy = st["unclipped_centred"] + self.count_noise * float(rng.standard_normal(1)[0])
            fraction = unclipped_fraction(noisy, E)
            adapt = {"unclipped_fraction": fraction,
                     "next_clip_norm": next_clip_norm(C, fraction, p.adaptive_clip_quantile, p.adaptive_clip_lr)}
        if self.private_loss:  # after the count, from the same generator: each part its own draw
            L, z = self.loss_bound, rng.standard_normal(1 if self.adaptive else 2)
            adapt["private_train_loss"] = mean_loss(st["loss_centred"] + self.loss_noise * L / 2 * float(z[0]),
                                                    E, L)
            unclipped = adapt["unclipped_fraction"] if self.adaptive else \
                unclipped_fraction(st["unclipped_centred"] + self.loss_noise / 2 * float(z[1]), E)
            adapt["private_clipped_fraction"] = 1.0 - unclipped
        # 6. account, 7. log (durable before anything applies or writes it), 8. step
        self.accountant.compose(self.event)
        eps = float(self.accountant.epsilon())
        if self.noise_record is not None and self.stream is not None and self.stream.bands > 1:
            self.noise_record(rnd, self.stream.newest())  # secret, durable before the release is logged
        if self.journal is not None:
            self.journal({**self.ledger_entry(rnd, eps), **adapt}, rel.update)
        self.weights = self.optimizer.step(self.weights, rel.update)
        self.round = rnd
        self.clip_norm = adapt.get("next_clip_norm", C)
        # 9. evaluate
        every = self.cfg.train.eval_every
        due = evaluate is not None and every > 0 and (rnd % every == 0 or rnd == self.cfg.train.rounds)
        eval_loss = evaluate(self.weights_list()) if due else None
        # 10. health: stop after a streak of rounds where most nodes failed (counts only)
        self.check_health(rnd, st["failures"] + st["rejected"], len(requests))
        # 11. record
        return {
            **self.release_record(rnd, eps, C), **adapt, "eval_loss": eval_loss,
            "train_loss": st["loss_sum"] / st["loss_records"] if st["loss_records"] else None,
            "users_sampled": int(sum(r.users.size for r in requests.values())),
            "users_replied": st["users_replied"],
            "examples_sampled": int(sum(r.count for r in requests.values())) if self.mode == "els" else None,
            "examples_processed": st["examples_processed"],
            "nodes_requested": len(requests), "nodes_replied": st["nodes_replied"],
            "clipped_fraction": st["clipped"] / st["records"] if st["records"] else None,
            "failures": st["failures"], "rejected": st["rejected"], "reclipped": st["reclipped"],
            "wall_time": time.perf_counter() - t0,
        }

    def check_health(self, rnd: int, failed: int, requested: int) -> None:
        """Count a round in which more than max-failed-fraction of the requested nodes failed; after
        max-failed-rounds such rounds in a row, set the stop reason (the run stops after this round)."""
        s = self.cfg.sim
        self.failed_streak = self.failed_streak + 1 if requested and failed > s.max_failed_fraction * requested else 0
        if s.max_failed_rounds and self.failed_streak >= s.max_failed_rounds:
            self.failure_stop = True
            self.stop_reason = (f"node failures: more than {s.max_failed_fraction:g} of the nodes failed in "
                                f"{self.failed_streak} rounds in a row; stopped after round {rnd}")

    def release_record(self, rnd: int, eps: float, clip_norm: float | None = None) -> dict[str, Any]:
        """The part of a round's record that the DP guarantee covers (no user data beyond the release)."""
        p = self.cfg.privacy
        return {"round": rnd, "mode": self.mode, "epsilon": eps if math.isfinite(eps) else None, "delta": p.delta,
                "noise_multiplier": self.noise_multiplier,
                "clip_norm": self.clip_norm if clip_norm is None else clip_norm, "expected_count": self.expected_of(rnd)}

    def ledger_entry(self, rnd: int, eps: float) -> dict[str, Any]:
        """What the release log stores about round `rnd` besides the update: its event and its ε."""
        return {**self.release_record(rnd, eps), "event": event_to_dict(self.event)}

    def replay(self, entry: dict[str, Any], update: np.ndarray | None, noise: np.ndarray | None = None) -> None:
        """Apply logged release `entry` again (resume): compose its event; step with its update if given; with
        banded noise (b > 1) push the round's recorded w into the stream (refused without it: the stream's
        state would be lost)."""
        if int(entry["round"]) != self.round + 1:
            raise ConfigError("--resume", entry.get("round"), f"release log skips from round {self.round}")
        event = event_from_dict(entry["event"])
        if event != self.event:
            raise ConfigError("--resume", entry["event"], f"logged event differs from this run's {self.event}")
        if self.stream is not None:
            if noise is None and self.stream.bands > 1:
                raise ConfigError("--resume", entry["round"], "has no recorded noise for the banded noise stream "
                                  "(its secret state is lost); refusing to resume")
            self.stream.push(noise if noise is not None else np.zeros(self.stream.size))
        self.accountant.compose(event)
        if update is not None:
            self.weights = self.optimizer.step(self.weights, np.asarray(update, np.float64))
        self.clip_norm = float(entry.get("next_clip_norm", self.clip_norm))
        self.round += 1

    # -- checkpoint state ------------------------------------------------------------
    def state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        opt = self.optimizer.state_dict()
        arrays = {"weights": self.weights, **{f"opt_{k}": v for k, v in opt.items() if isinstance(v, np.ndarray)}}
        meta = {"round": self.round, "mode": self.mode, "noise_multiplier": self.noise_multiplier,
                "clip_norm": self.clip_norm,
                "ledger": self.accountant.state_dict(), "identity": identity(self.cfg),
                "optimizer": {k: v for k, v in opt.items() if not isinstance(v, np.ndarray)}}
        if self.stream is not None:  # secret: past noise (checkpoints only, never a published file)
            noise = self.stream.state_dict()
            meta["noise_stream_rounds"] = noise["rounds"]
            arrays.update(noise_coefficients=noise["coefficients"], noise_buffer=noise["buffer"])
        return meta, arrays

    def use_coefficients(self, coeffs) -> None:
        """The noise stream of the run being resumed (its logged coefficients: 'optimized' ones depend on the
        train.rounds the run started with)."""
        self.stream = NoiseStream(np.asarray(coeffs, np.float64), self.weights.size)

    def restore(self, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        """Load a checked checkpoint (see server.checkpoint.load_checkpoint)."""
        check_identity(meta, self.cfg)
        if float(meta["noise_multiplier"]) != self.noise_multiplier:
            raise ConfigError("privacy.noise-multiplier", self.noise_multiplier,
                              f"differs from the checkpoint ({meta['noise_multiplier']!r})")
        weights = np.asarray(arrays["weights"], np.float64)
        if weights.shape != self.weights.shape:
            raise ConfigError("--resume", list(weights.shape), f"weights must have shape {list(self.weights.shape)}")
        self.accountant.load_state_dict(meta["ledger"])
        self.optimizer.load_state_dict({**meta["optimizer"],
                                        **{k[4:]: v for k, v in arrays.items() if k.startswith("opt_")}})
        self.weights, self.round = weights, int(meta["round"])
        self.clip_norm = float(meta.get("clip_norm", self.clip_norm))
        if self.stream is not None:
            if "noise_buffer" not in arrays or int(meta.get("noise_stream_rounds", -1)) != self.round:
                raise ConfigError("--resume", self.round, "is a checkpoint without the banded noise stream's state "
                                  "(privacy.mechanism 'bandmf'); refusing to resume")
            try:
                self.stream.load_state_dict({"coefficients": arrays["noise_coefficients"], "rounds": self.round,
                                             "buffer": arrays["noise_buffer"]})
            except ValueError as err:
                raise ConfigError("--resume", self.round, f"has a noise stream that does not fit this run ({err}); "
                                  "refusing to resume") from None


def with_clip_norm(cfg: RunConfig, clip_norm: float) -> RunConfig:
    """The same config with this round's C (adaptive clipping); no re-validation needed (C > 0 by construction)."""
    return dataclasses.replace(cfg, privacy=dataclasses.replace(cfg.privacy, clip_norm=float(clip_norm)))


def with_mode(cfg: RunConfig, mode: str) -> RunConfig:
    """The same config in another mode (used by compare), validated again."""
    return parse_config({"privacy.mode": mode}, base=cfg)
