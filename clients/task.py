"""What one node computes for your own task (`model.name = "package.module:factory"`; no Flower here).

`TaskWorker` is `fl_userdp.clients.compute.Worker` with the task's module, per-example
loss and corpus (`fl_userdp.local.task`) in place of the LM's: ULS users train
on at most k of their rows, chosen afresh each round exactly as for the LM
(`uls_example_ids`), each user's update clipped to C as a whole; ELS sums the
clipped per-example gradients of the sampled kept rows. Training losses and
the held-out evaluation are means of the task's per-example loss.
"""
from __future__ import annotations

import os

import numpy as np

from fl_userdp.config import RunConfig

from .contribution import Contribution, example_loss_sum, uls_example_ids, user_loss_sum


class TaskWorker:
    """A process's task (factory called once per process and config); computes node contributions."""

    def __init__(self, cfg: RunConfig) -> None:
        import torch

        from fl_userdp.local.model import trainable_shapes
        from fl_userdp.local.task import cached_task

        torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1") or 1)))
        self.seed = cfg.seed
        self.task = cached_task(cfg)
        self.corpus = self.task.corpus
        self.shapes = trainable_shapes(self.task.module)
        self._heldout: dict[int, np.ndarray] = {}

    def _rows(self, user: int, ids: np.ndarray) -> np.ndarray:
        return np.asarray(self.corpus.examples_of(int(user), np.asarray(ids, np.int64)))

    def uls(self, cfg: RunConfig, weights: list[np.ndarray], rnd: int, users: np.ndarray,
            with_loss: bool = True) -> Contribution:
        from fl_userdp.local.task import per_example_losses, uls_clipped_sum

        k, t = cfg.privacy.max_examples_per_user, cfg.train
        counts = np.asarray(self.corpus.counts)
        data = [self._rows(u, uls_example_ids(self.seed, rnd, int(u), int(counts[u]), k)) for u in users]
        total, clipped, _ = uls_clipped_sum(self.task, data, cfg.privacy.clip_norm, t.update, t.local_steps,
                                            t.local_lr, t.local_batch_size, weights, chunk_size=t.physical_batch_size)
        loss = None
        nonempty = [d for d in data if len(d)]
        if with_loss and nonempty:  # mean loss of each user's rows, summed over users
            loss = user_loss_sum(cfg, per_example_losses(self.task, np.concatenate(nonempty)),
                                 [len(d) for d in nonempty])
        return Contribution(total, len(data), int(sum(len(d) for d in data)), clipped, loss)

    def els(self, cfg: RunConfig, weights: list[np.ndarray], users: np.ndarray, offsets: np.ndarray,
            example_ids: np.ndarray, with_loss: bool = True) -> Contribution:
        from fl_userdp.local.model import set_trainable
        from fl_userdp.local.task import els_clipped_sum, per_example_losses

        set_trainable(self.task.module, weights)
        parts = [self._rows(u, example_ids[offsets[i]:offsets[i + 1]]) for i, u in enumerate(users)]
        parts = [p for p in parts if len(p)]
        if not parts:
            return Contribution(np.zeros(sum(int(np.prod(s)) for s in self.shapes)), len(users), 0, 0, None)
        rows = np.concatenate(parts)
        total, clipped = els_clipped_sum(self.task, rows, cfg.privacy.clip_norm,
                                         chunk_size=cfg.train.physical_batch_size)
        loss = example_loss_sum(cfg, per_example_losses(self.task, rows)) if with_loss else None
        return Contribution(total, len(users), int(len(rows)), clipped, loss)

    def evaluate(self, cfg: RunConfig, weights: list[np.ndarray]) -> float:
        """Mean loss over `train.eval-examples` held-out rows spread evenly over all of them (nan: none)."""
        from fl_userdp.local.model import set_trainable
        from fl_userdp.local.task import eval_loss

        n = cfg.train.eval_examples
        if n not in self._heldout:
            rows = np.asarray(self.corpus.heldout())
            self._heldout[n] = rows[np.unique(np.linspace(0, len(rows) - 1, min(n, len(rows))).astype(int))] \
                if len(rows) else rows
        set_trainable(self.task.module, weights)
        return eval_loss(self.task, self._heldout[n])
