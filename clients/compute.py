"""What one node computes for its shard of users (no Flower in this module).

A node with partition id p hosts users [p·U, (p+1)·U), U = sim.users-per-node.
`Worker` holds the node process's model and corpus (built once per process,
keyed by the config that determines them) and turns a request into the sum
of its users' clipped contributions:

* ULS: each sampled user's update from at most k of its examples, chosen
  afresh each round from `rng_for(seed, "cap", round, user)` (users with
  n_u ≤ k use all of theirs), clipped to C as a whole (gradient or
  local-steps mode, `fl_userdp.local.updates.uls_clipped_sum`).
* ELS: the sum of per-example clipped gradients of the sampled kept examples
  (the server sends their ids; `els_clipped_sum`).

`model.name = "linear"` (`LinearWorker`, numpy only) is the population-scale
task: linear regression on `fl_userdp.data.LinearCorpus`, where a node computes
all its sampled users' updates in one vectorised pass (segment sums over a
CSR of examples); `LinearWorker.uls_loop` is the same computation one user
at a time (the plain-loop reference of tests and benchmarks).
`model.name = "package.module:factory"` (your own torch task) gets
`fl_userdp.clients.task.TaskWorker`, the same computation with the task's module, loss
and corpus.

Both also report the mean training loss of the records at the round's start
weights (one no-grad forward over the same examples) so the server can log
a training loss. The flat sums are float64 in `trainable_names` order, each record clipped to
`fl_userdp.mechanism.fixed_point.record_clip_norm(C)` and put on its grid before it is added: the sums are exact, so a
seeded run's release (and its keyed noise) is the same bits whatever `sim.users-per-node` or the backend.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from fl_userdp.config import RunConfig, is_task_spec, parse_config
from fl_userdp.rng import rng_for

from .contribution import Contribution, example_loss_sum, grid_check, measured, uls_example_ids, user_loss_sum

_WORKERS: dict[tuple, "Worker"] = {}
ROW_CACHE_BYTES = 256 << 20  # per process: generated (synthetic) users' rows kept after their first use
_CONFIGS: dict[tuple, RunConfig] = {}


def config_from_flat(flat: Mapping[str, Any]) -> RunConfig:
    """Parse (once per process) the flat config a message carries."""
    key = tuple(sorted(flat.items()))
    if key not in _CONFIGS:
        if len(_CONFIGS) > 64:  # adaptive clipping sends a new C every round: keep the cache small
            _CONFIGS.clear()
        _CONFIGS[key] = parse_config(dict(flat))
    return _CONFIGS[key]


def worker_for(cfg: RunConfig) -> "Worker | LinearWorker":
    key = (cfg.model, cfg.data, cfg.seed)
    if key not in _WORKERS:
        if is_task_spec(cfg.model.name):  # your own task: clients.task.TaskWorker
            from .task import TaskWorker
            _WORKERS[key] = TaskWorker(cfg)
        else:
            _WORKERS[key] = LinearWorker(cfg) if cfg.model.name == "linear" else Worker(cfg)
    return _WORKERS[key]


class Worker:
    """A process's model and corpus; computes node contributions."""

    def __init__(self, cfg: RunConfig) -> None:
        import torch

        from fl_userdp.data import load_corpus
        from fl_userdp.local.model import cached_model, trainable_shapes

        torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1") or 1)))
        self.seed = cfg.seed
        self.corpus = load_corpus(cfg.data, cfg.model, cfg.seed)
        self.model = cached_model(cfg.model, cfg.seed)
        self.shapes = trainable_shapes(self.model)
        # Packed text corpora pad each user's last row with EOS: leave those targets out of every loss.
        self.pad_id = getattr(self.corpus, "eos_id", None) if hasattr(self.corpus, "pad_mask") else None
        self._heldout: dict[int, np.ndarray] = {}
        from fl_userdp.data.synthetic_text import SyntheticTextCorpus

        # a synthetic user's rows are generated on every call (~0.5 ms a user): keep them, up to a budget
        self._rows: dict[int, np.ndarray] | None = {} if isinstance(self.corpus, SyntheticTextCorpus) else None
        self._rows_bytes = 0

    def prefetch(self, users: np.ndarray) -> None:
        """Generate the rows of the users not cached yet in one pass (`examples_many`), within the budget."""
        if self._rows is None:
            return
        missing = [int(u) for u in users if int(u) not in self._rows]
        if missing and self._rows_bytes < ROW_CACHE_BYTES:
            for u, rows in zip(missing, self.corpus.examples_many(missing)):
                if self._rows_bytes + rows.nbytes <= ROW_CACHE_BYTES:
                    self._rows[u], self._rows_bytes = rows, self._rows_bytes + rows.nbytes

    def examples_of(self, user: int, ids: np.ndarray) -> np.ndarray:
        """Rows `ids` of user `user` (the corpus' `examples_of`, with generated users' rows cached)."""
        if self._rows is None:
            return self.corpus.examples_of(user, ids)
        rows = self._rows.get(user)
        if rows is None:
            rows = self.corpus.examples(user)
            if self._rows_bytes + rows.nbytes <= ROW_CACHE_BYTES:
                self._rows[user], self._rows_bytes = rows, self._rows_bytes + rows.nbytes
        return rows[np.asarray(ids, dtype=np.int64)]

    def _losses(self, examples: np.ndarray) -> np.ndarray:
        from fl_userdp.local.updates import per_example_loss, as_tokens
        import torch

        with torch.no_grad():
            return torch.cat([per_example_loss(self.model, as_tokens(self.model, examples[lo:lo + 64]), self.pad_id)
                              for lo in range(0, len(examples), 64)]).double().cpu().numpy()

    def uls(self, cfg: RunConfig, weights: list[np.ndarray], rnd: int, users: np.ndarray,
            with_loss: bool = True) -> Contribution:
        from fl_userdp.local.updates import flat_numpy, uls_clipped_sum

        k, t = cfg.privacy.max_examples_per_user, cfg.train
        self.prefetch(users)
        data = [self.examples_of(int(u), uls_example_ids(self.seed, rnd, int(u), int(self.corpus.counts[u]), k))
                for u in users]
        # update="gradient": the losses come from the gradients' own forward (the start weights)
        losses = [] if with_loss and t.update == "gradient" else None
        check = grid_check(self, cfg)
        total, clipped, _ = uls_clipped_sum(self.model, data, cfg.privacy.clip_norm, t.update, t.local_steps,
                                            t.local_lr, t.local_batch_size, weights, pad_id=self.pad_id,
                                            autocast=cfg.model.autocast == "bf16", losses=losses, grid_check=check,
                                            chunk_size=t.physical_batch_size)
        loss = None
        if with_loss and data:  # mean loss of each user's examples, summed over users
            each = flat_numpy(losses) if losses is not None else self._losses(np.concatenate(data))
            loss = user_loss_sum(cfg, each, [len(d) for d in data])
        return Contribution(total, len(data), int(sum(len(d) for d in data)), clipped, loss, measured(check))

    def els(self, cfg: RunConfig, weights: list[np.ndarray], users: np.ndarray, offsets: np.ndarray,
            example_ids: np.ndarray, with_loss: bool = True) -> Contribution:
        from fl_userdp.local.model import set_trainable
        from fl_userdp.local.updates import els_clipped_sum, flat_numpy

        set_trainable(self.model, weights)
        self.prefetch(users)
        parts = [self.examples_of(int(u), example_ids[offsets[i]:offsets[i + 1]]) for i, u in enumerate(users)]
        examples = np.concatenate(parts) if parts else np.zeros((0, self.corpus.seq_len), np.int64)
        losses = [] if with_loss else None  # from the gradients' own forward, no second pass
        check = grid_check(self, cfg)
        total, clipped = els_clipped_sum(self.model, examples, cfg.privacy.clip_norm, pad_id=self.pad_id,
                                         autocast=cfg.model.autocast == "bf16", losses=losses, grid_check=check,
                                         chunk_size=cfg.train.physical_batch_size)
        loss = example_loss_sum(cfg, flat_numpy(losses)) if with_loss and len(examples) else None
        return Contribution(total, len(parts), int(len(examples)), clipped, loss, measured(check))

    def evaluate(self, cfg: RunConfig, weights: list[np.ndarray]) -> float:
        from fl_userdp.local.model import set_trainable
        from fl_userdp.local.updates import eval_loss

        n = cfg.train.eval_examples
        if n not in self._heldout:  # rows spread evenly over all held-out users, not the first user's
            rows = self.corpus.heldout()
            self._heldout[n] = rows[np.unique(np.linspace(0, len(rows) - 1, min(n, len(rows))).astype(int))] \
                if len(rows) else rows
        set_trainable(self.model, weights)
        return eval_loss(self.model, self._heldout[n], pad_id=self.pad_id)


# -- the linear task (numpy only) ---------------------------------------------------------------------------
def linear_example_ids(seed: int, rnd: int, user: int, n_u: int, k: int) -> np.ndarray:
    """The ≤ k examples (local ids, sorted) user `user` trains on in round `rnd` (ULS, linear task).

    A uniformly random k-subset, fresh each round: the k examples with the smallest hash of
    (seed, round, user, example) — a pure function, so many users can be chosen at once
    (`linear_choice`) with the same result as one at a time.
    """
    if n_u <= k:
        return np.arange(n_u)
    h = _choice_hash(seed, rnd, np.full(n_u, user, np.int64), np.arange(n_u))
    return np.sort(np.argsort(h, kind="stable")[:k])


def _choice_hash(seed: int, rnd: int, users: np.ndarray, local: np.ndarray) -> np.ndarray:
    from fl_userdp.rng import _mix64

    key = np.uint64(int(rng_for(seed, "cap", rnd).integers(0, 2**63)))
    ctr = (users.astype(np.uint64) << np.uint64(32)) | local.astype(np.uint64)
    ctr *= np.uint64(0x9E3779B97F4A7C15)
    ctr += key
    return _mix64(ctr)


def linear_choice(seed: int, rnd: int, counts: np.ndarray, users: np.ndarray, k: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(owner index into `users`, local id) of every chosen example, grouped by owner, ids sorted."""
    n = np.asarray(counts, np.int64)[users]
    owner = np.repeat(np.arange(users.size), n)
    local = np.arange(owner.size) - np.repeat(np.cumsum(n) - n, n)
    big = n[owner] > k                      # only users with more than k examples choose
    if np.any(big):
        h = _choice_hash(seed, rnd, users[owner[big]], local[big])
        order = order_by_owner_then_hash(owner[big], h)
        rank = np.empty_like(order)
        rank[order] = local[big]
        keep = np.ones(owner.size, bool)
        keep[big] = rank < k
        owner, local = owner[keep], local[keep]
    return owner, local


def order_by_owner_then_hash(owner: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Positions sorted by (owner, h), ties by position: `np.lexsort((h, owner))`, faster.

    One stable sort of a single 64-bit key (owner in the high bits, the hash's top 64 − b bits below, b ≤ 24
    the owner's bit width); only when two entries of one owner share those hash bits (about n²/2^(65 − b)
    ≤ n²/2^41 per owner of n entries) does the exact two-key sort decide.
    """
    bits = max(1, int(owner.max()).bit_length()) if owner.size else 1
    if bits > 24:
        return np.lexsort((h, owner))
    shift = np.uint64(64 - bits)
    key = (owner.astype(np.uint64) << shift) | (h >> np.uint64(bits))
    order = np.argsort(key, kind="stable")
    sorted_key = key[order]
    if np.any(sorted_key[1:] == sorted_key[:-1]):
        return np.lexsort((h, owner))
    return order


def row_dots(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """x_i · w for each row, each row's dot formed the same way wherever the row sits (numpy's own loop, not
    BLAS, whose kernels may group rows by position): a user's update must not depend on its node."""
    return np.einsum("ed,d->e", x, w)


def segment_sum(values: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Row sums of `values` over the segments [offsets[i], offsets[i+1]) (all non-empty).

    A 2-D sum goes through a sparse 0/1 matrix (segments × rows): `np.add.reduceat` along axis 0 is about
    ten times slower for many short segments."""
    if values.ndim == 1:
        return np.add.reduceat(values, offsets[:-1])
    from scipy.sparse import csr_matrix

    rows = int(offsets[-1])
    ind = csr_matrix((np.ones(rows, values.dtype), np.arange(rows), offsets), shape=(offsets.size - 1, rows))
    return np.asarray(ind @ values)


class LinearWorker:
    """A process's linear-regression corpus; computes node contributions vectorised over the node's users.

    Loss of one example: ½(x·w − y)². A user's update from the broadcast weights w:
    update="gradient": the mean gradient over its (≤ k) examples; update="local-steps": w − w_τ after τ SGD
    steps (lr `train.local-lr`) on batches of min(b, m_u) examples cycling over its m_u examples (the same
    schedule as the LM path) — with τ = 1 and b ≥ k that is lr·(mean gradient). Each update is clipped to C.
    """

    def __init__(self, cfg: RunConfig, corpus=None) -> None:
        """`corpus`: any object with LinearCorpus's `counts`, `rows`, `user_weights` and `heldout` (default:
        the config's LinearCorpus; the pipeline audit passes one with canary users)."""
        from fl_userdp.data import load_corpus

        self.seed = cfg.seed
        self.corpus = corpus if corpus is not None else load_corpus(cfg.data, cfg.model, cfg.seed)
        self.shapes = [(cfg.model.dim,)]
        self._heldout: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    @staticmethod
    def _weights(weights: list[np.ndarray]) -> np.ndarray:
        return np.asarray(weights[0], np.float64).ravel()

    def _updates(self, cfg: RunConfig, w: np.ndarray, x: np.ndarray, y: np.ndarray, offsets: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
        """Per-user updates (M, d) and per-user mean losses at w (M,), examples grouped by user (CSR)."""
        t = cfg.train
        m = np.diff(offsets)
        resid = row_dots(x, w) - y
        loss = segment_sum(0.5 * resid ** 2, offsets) / m
        grad = segment_sum(resid[:, None] * x, offsets) / m[:, None]
        if t.update == "gradient":
            return grad, loss
        b = np.minimum(t.local_batch_size, m)
        if t.local_steps == 1 and np.all(b == m):  # one full-batch step: lr · mean gradient
            return t.local_lr * grad, loss
        wu = np.repeat(w[None, :], m.size, axis=0)
        boff = np.concatenate([[0], np.cumsum(b)])
        owner = np.repeat(np.arange(m.size), b)
        pos = np.arange(boff[-1]) - boff[:-1][owner]
        for step in range(t.local_steps):
            idx = offsets[:-1][owner] + (step * b[owner] + pos) % m[owner]
            r = np.einsum("ed,ed->e", x[idx], wu[owner]) - y[idx]
            wu -= t.local_lr * segment_sum(r[:, None] * x[idx], boff) / b[:, None]
        return w[None, :] - wu, loss

    def uls(self, cfg: RunConfig, weights: list[np.ndarray], rnd: int, users: np.ndarray,
            with_loss: bool = True) -> Contribution:
        """All sampled users at once: choose ≤ k examples each, one CSR, per-user updates, clip, sum."""
        from fl_userdp.mechanism.clipping import clip_factors, finite
        from fl_userdp.mechanism.fixed_point import record_clip_norm, scaled_grid_sum

        w, users = self._weights(weights), np.asarray(users, np.int64)
        if users.size == 0:
            return Contribution(np.zeros_like(w), 0, 0, 0, None)
        owner, local = linear_choice(self.seed, rnd, self.corpus.counts, users, cfg.privacy.max_examples_per_user)
        x, y = self.corpus.rows(users[owner], local, self.corpus.user_weights(users)[owner])
        offsets = np.concatenate([[0], np.cumsum(np.bincount(owner, minlength=users.size))])
        upd, loss = self._updates(cfg, w, x, y, offsets)
        norms = np.sqrt(np.einsum("ud,ud->u", upd, upd))
        C = cfg.privacy.clip_norm
        check = grid_check(self, cfg)
        total = scaled_grid_sum(clip_factors(norms, record_clip_norm(C)), finite(upd), C, check)
        return Contribution(total, int(users.size), int(owner.size), int(np.sum(norms > cfg.privacy.clip_norm)),
                            example_loss_sum(cfg, loss) if with_loss else None, measured(check))  # `loss`: per user

    def uls_loop(self, cfg: RunConfig, weights: list[np.ndarray], rnd: int, users: np.ndarray) -> Contribution:
        """The same contribution as `uls`, one user at a time (the plain-loop reference)."""
        from fl_userdp.mechanism.clipping import clip
        from fl_userdp.mechanism.fixed_point import record_clip_norm, to_grid

        w, k, C = self._weights(weights), cfg.privacy.max_examples_per_user, cfg.privacy.clip_norm
        total, examples, clipped, loss_sum = np.zeros_like(w), 0, 0, 0.0
        for u in np.asarray(users, np.int64):
            ids = linear_example_ids(self.seed, rnd, int(u), int(self.corpus.counts[u]), k)
            x, y = self.corpus.rows(np.full(ids.size, u), ids)
            upd, loss = self._updates(cfg, w, x, y, np.array([0, ids.size]))
            norm = float(np.linalg.norm(upd[0]))
            total += to_grid(clip(upd[0], record_clip_norm(C)), C)
            examples, clipped = examples + ids.size, clipped + (norm > C)
            loss_sum += example_loss_sum(cfg, loss)
        return Contribution(total, len(users), examples, clipped, loss_sum if len(users) else None)

    def els(self, cfg: RunConfig, weights: list[np.ndarray], users: np.ndarray, offsets: np.ndarray,
            example_ids: np.ndarray, with_loss: bool = True) -> Contribution:
        """Σ of per-example clipped gradients (x·w − y)·x of the sampled kept examples."""
        from fl_userdp.mechanism.clipping import clip_factors, finite
        from fl_userdp.mechanism.fixed_point import record_clip_norm, scaled_grid_sum

        w, users = self._weights(weights), np.asarray(users, np.int64)
        owners = np.repeat(users, np.diff(offsets))
        x, y = self.corpus.rows(owners, example_ids)
        resid = row_dots(x, w) - y
        norms = np.abs(resid) * np.sqrt(np.einsum("ed,ed->e", x, x))
        coef = finite(clip_factors(norms, record_clip_norm(cfg.privacy.clip_norm)) * resid)  # 0 for a non-finite record
        loss = example_loss_sum(cfg, 0.5 * resid ** 2) if with_loss and owners.size else None
        check = grid_check(self, cfg)
        return Contribution(scaled_grid_sum(coef, finite(x), cfg.privacy.clip_norm, check), int(users.size),
                            int(owners.size), int(np.sum(norms > cfg.privacy.clip_norm)), loss, measured(check))

    def evaluate(self, cfg: RunConfig, weights: list[np.ndarray]) -> float:
        """Mean ½(x·w − y)² over the first train.eval-examples held-out examples (nan without any)."""
        n = cfg.train.eval_examples
        if n not in self._heldout:
            self._heldout[n] = self.corpus.heldout(n)
        x, y = self._heldout[n]
        return float(np.mean(0.5 * (x @ self._weights(weights) - y) ** 2)) if y.size else float("nan")
