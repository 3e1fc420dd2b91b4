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

Both also report the mean training loss of the records at the round's start
weights (one no-grad forward over the same examples) so the server can log
a training loss. The flat sums are float64 in `trainable_names` order.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from fl_userdp.config import RunConfig, parse_config
from fl_userdp.rng import rng_for

_WORKERS: dict[tuple, "Worker"] = {}
_CONFIGS: dict[tuple, RunConfig] = {}


@dataclass(frozen=True)
class Contribution:
    total: np.ndarray      # flat float64 Σ of clipped records
    users: int
    examples: int
    clipped: int
    loss_sum: float | None  # Σ over records (users for ULS, examples for ELS) of the training loss


def uls_example_ids(seed: int, rnd: int, user: int, n_u: int, k: int) -> np.ndarray:
    """The ≤ k examples (local ids, sorted) user `user` trains on in round `rnd` (ULS)."""
    if n_u <= k:
        return np.arange(n_u)
    return np.sort(rng_for(seed, "cap", rnd, user).choice(n_u, size=k, replace=False))


def config_from_flat(flat: Mapping[str, Any]) -> RunConfig:
    """Parse (once per process) the flat config a message carries."""
    key = tuple(sorted(flat.items()))
    if key not in _CONFIGS:
        _CONFIGS[key] = parse_config(dict(flat))
    return _CONFIGS[key]


def worker_for(cfg: RunConfig) -> "Worker":
    key = (cfg.model, cfg.data, cfg.seed)
    if key not in _WORKERS:
        _WORKERS[key] = Worker(cfg)
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

    def _loss_sum(self, examples: np.ndarray, weights_per_record: np.ndarray | None = None) -> float:
        from fl_userdp.local.updates import per_example_loss, _tokens
        import torch

        with torch.no_grad():
            losses = torch.cat([per_example_loss(self.model, _tokens(self.model, examples[lo:lo + 64]), self.pad_id)
                                for lo in range(0, len(examples), 64)]).double().numpy()
        if weights_per_record is None:
            return float(losses.sum())
        return float(losses @ weights_per_record)

    def uls(self, cfg: RunConfig, weights: list[np.ndarray], rnd: int, users: np.ndarray,
            with_loss: bool = True) -> Contribution:
        from fl_userdp.local.updates import uls_clipped_sum

        k, t = cfg.privacy.max_examples_per_user, cfg.train
        data = [self.corpus.examples_of(int(u), uls_example_ids(self.seed, rnd, int(u), int(self.corpus.counts[u]), k))
                for u in users]
        total, clipped, _ = uls_clipped_sum(self.model, data, cfg.privacy.clip_norm, t.update, t.local_steps,
                                            t.local_lr, t.local_batch_size, weights, pad_id=self.pad_id)
        loss = None
        if with_loss and data:  # mean loss of each user's examples, summed over users
            per = np.concatenate([np.full(len(d), 1.0 / max(len(d), 1)) for d in data])
            loss = self._loss_sum(np.concatenate(data), per)
        return Contribution(total, len(data), int(sum(len(d) for d in data)), clipped, loss)

    def els(self, cfg: RunConfig, weights: list[np.ndarray], users: np.ndarray, offsets: np.ndarray,
            example_ids: np.ndarray, with_loss: bool = True) -> Contribution:
        from fl_userdp.local.model import set_trainable
        from fl_userdp.local.updates import els_clipped_sum

        set_trainable(self.model, weights)
        parts = [self.corpus.examples_of(int(u), example_ids[offsets[i]:offsets[i + 1]]) for i, u in enumerate(users)]
        examples = np.concatenate(parts) if parts else np.zeros((0, self.corpus.seq_len), np.int64)
        total, clipped = els_clipped_sum(self.model, examples, cfg.privacy.clip_norm, pad_id=self.pad_id)
        loss = self._loss_sum(examples) if with_loss and len(examples) else None
        return Contribution(total, len(parts), int(len(examples)), clipped, loss)

    def evaluate(self, cfg: RunConfig, weights: list[np.ndarray]) -> float:
        from fl_userdp.local.model import set_trainable
        from fl_userdp.local.updates import eval_loss

        n = cfg.train.eval_examples
        if n not in self._heldout:
            self._heldout[n] = self.corpus.heldout()[:n]
        set_trainable(self.model, weights)
        return eval_loss(self.model, self._heldout[n], pad_id=self.pad_id)
