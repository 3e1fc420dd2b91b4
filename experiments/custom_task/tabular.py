"""Your own task, a worked example: a small classifier on synthetic user-partitioned tabular data.

    fl-userdp compare --backend inprocess --set model.name=experiments.custom_task.tabular:make_task ...
    python -m experiments.custom_task.tabular runs/tabular    # held-out loss and accuracy per mode

(from the repository root). `make_task(cfg)` returns a `fl_userdp.local.task.Task`:

* **Data** (`TabularCorpus`, a pure function of `seed`; nothing downloaded): `data.num-users`
  training users and `data.heldout-users` held-out users; user u has
  n_u = max(1, round(LogNormal(log median, sigma))) examples (`data.examples-per-user-median`,
  `data.examples-per-user-sigma`). An example is one float32 row: FEATURES numeric features, a
  categorical feature (one of CATEGORIES, e.g. a device type) and a label (one of CLASSES).
  The label y is drawn from the user's own class prior (label shift); the features are
  m_y + μ_u + N(0, I), with population class means m_y and a user offset μ_u (feature shift);
  the categorical is 2y or 2y + 1 with probability CAT_SIGNAL, else the user's home category.
  `data.user-diversity` ρ in [0, 1] sets the heterogeneity: the prior is (1 − ρ)·uniform +
  ρ·Dirichlet(1/2), and μ_u ~ N(0, (1.5ρ)²·I).
* **Model** (`TabularNet`): an embedding of the categorical (nn.Embedding), concatenated with
  the features, Linear → LayerNorm → ReLU → Linear: opacus' per-example gradients for
  embedding, linear and normalisation layers.
* **Loss**: the cross entropy of each row (`loss(module, batch)`, shape (b,)).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fl_userdp.config import RunConfig
from fl_userdp.local.task import Task

FEATURES, CATEGORIES, CLASSES = 12, 8, 4
CLASS_SCALE = 0.35   # spread of the population class means (sets how hard the task is)
CAT_SIGNAL = 0.5     # probability that the categorical carries the label
MAX_EXAMPLES = 1000


class TabularCorpus:
    """User-partitioned tabular rows [features..., category, label] (float32), regenerated per user."""

    def __init__(self, num_users: int, heldout_users: int, median: float, sigma: float, diversity: float,
                 seed: int) -> None:
        self.num_users, self.heldout_users, self.seed = int(num_users), int(heldout_users), int(seed)
        self.diversity = float(diversity)
        pop = np.random.default_rng([self.seed, 1])
        self.class_means = CLASS_SCALE * pop.standard_normal((CLASSES, FEATURES))
        n = np.random.default_rng([self.seed, 2]).lognormal(np.log(median), sigma, self.num_users + self.heldout_users)
        self._all_counts = np.clip(np.round(n), 1, MAX_EXAMPLES).astype(np.int64)
        self.counts = self._all_counts[: self.num_users]

    def _user(self, uid: int) -> np.ndarray:
        """All rows of user `uid` (training users 0..N-1, held-out users N..N+H-1)."""
        rng = np.random.default_rng([self.seed, 3, uid])
        rho, n = self.diversity, int(self._all_counts[uid])
        prior = (1 - rho) / CLASSES + rho * rng.dirichlet(np.full(CLASSES, 0.5))
        offset = 1.5 * rho * rng.standard_normal(FEATURES)
        home = rng.integers(CATEGORIES)
        y = rng.choice(CLASSES, size=n, p=prior / prior.sum())
        x = self.class_means[y] + offset + rng.standard_normal((n, FEATURES))
        cat = np.where(rng.random(n) < CAT_SIGNAL, 2 * y + rng.integers(0, 2, n), home)
        return np.column_stack([x, cat, y]).astype(np.float32)

    def examples(self, user: int) -> np.ndarray:
        return self._user(int(user))

    def examples_of(self, user: int, ids: np.ndarray) -> np.ndarray:
        return self._user(int(user))[np.asarray(ids, dtype=np.int64)]

    def heldout(self) -> np.ndarray:
        rows = [self._user(self.num_users + j) for j in range(self.heldout_users)]
        return np.concatenate(rows) if rows else np.zeros((0, FEATURES + 2), np.float32)


class TabularNet(nn.Module):
    def __init__(self, hidden: int = 32, embed: int = 4) -> None:
        super().__init__()
        self.embed = nn.Embedding(CATEGORIES, embed)
        self.hidden = nn.Linear(FEATURES + embed, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.out = nn.Linear(hidden, CLASSES)

    def forward(self, x: torch.Tensor, cat: torch.Tensor) -> torch.Tensor:
        h = torch.cat([x, self.embed(cat)], dim=1)
        return self.out(torch.relu(self.norm(self.hidden(h))))


def logits(module: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    return module(batch[:, :FEATURES], batch[:, FEATURES].long())


def loss(module: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """Cross entropy of each row: shape (b,)."""
    return F.cross_entropy(logits(module, batch), batch[:, FEATURES + 1].long(), reduction="none")


def make_task(cfg: RunConfig) -> Task:
    """The factory (`model.name = "experiments.custom_task.tabular:make_task"`); torch is seeded by the caller."""
    d = cfg.data
    corpus = TabularCorpus(d.num_users, d.heldout_users, d.examples_per_user_median, d.examples_per_user_sigma,
                           d.user_diversity, cfg.seed)
    return Task(module=TabularNet(hidden=cfg.model.hidden_size), loss=loss, corpus=corpus)


@torch.no_grad()
def heldout_metrics(module: nn.Module, rows: np.ndarray) -> dict[str, float]:
    """Mean loss and accuracy over `rows`."""
    batch = torch.as_tensor(rows)
    out = logits(module, batch)
    y = batch[:, FEATURES + 1].long()
    return {"loss": float(F.cross_entropy(out, y)), "accuracy": float((out.argmax(dim=1) == y).float().mean())}


def report(out: str | Path) -> dict[str, dict[str, float]]:
    """Held-out loss and accuracy (all held-out rows) of each mode's final weights in a compare folder."""
    from fl_userdp.config import parse_config
    from fl_userdp.local.model import set_trainable, trainable_shapes, unflatten
    from fl_userdp.local.task import cached_task
    from fl_userdp.server.checkpoint import checkpoint_path, load_checkpoint

    out = Path(out)
    summary = json.loads((out / "summary.json").read_text())
    cfg = parse_config(summary["config"])
    task = cached_task(cfg)
    rows = np.asarray(task.corpus.heldout())
    set_trainable(task.module, task.init_weights)
    results = {"initial": heldout_metrics(task.module, rows)}
    for mode in summary["modes"]:
        meta, arrays = load_checkpoint(checkpoint_path(out, mode))
        set_trainable(task.module, unflatten(arrays["weights"], trainable_shapes(task.module)))
        results[mode] = {**heldout_metrics(task.module, rows), "epsilon": summary["modes"][mode].get("epsilon"),
                         "round": meta["round"]}
    return results


if __name__ == "__main__":
    for name, row in report(sys.argv[1] if len(sys.argv) > 1 else "runs/tabular").items():
        print(name, json.dumps(row))
