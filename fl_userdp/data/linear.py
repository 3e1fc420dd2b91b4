"""A synthetic user-partitioned linear-regression corpus (pure numpy, nothing per user stored).

The population-scale task (`model.name = "linear"`, d = `model.dim`):

* **Counts** (`rng_for(seed, "data", 0, 0)`): n_u = round(LogNormal(log median, sigma)), at least 1
  (`data.examples-per-user-median`, `data.examples-per-user-sigma`), for the training users followed by
  the held-out users — the only O(N) state (two int64 vectors: 1.6 MB at 100,000 users).
* **Users**: user u's true weights w_u = w* + τ·z_u/√d, with w* = z_*/√d and τ = `data.user-diversity`
  (0: every user has the same regression, 1: user weights differ as much as w* itself).
* **Examples**: example j of user u is (x, y) with x ~ N(0, I_d) and y = x·w_u + 0.1·ε.

Every z, x and ε is a counter-based (SplitMix64 + Box–Muller) normal, a pure function of a key (drawn once
from `rng_for(seed, "data", 3, 0)`) and the user id or the example's global id (`starts[u] + j`): any process
regenerates any user's examples exactly, in any order, many users at a time (`rows`), with nothing
materialised per user. A node therefore holds no copy of the population's data; it generates only the rows
of the users it was asked for in a round.
"""
from __future__ import annotations

import numpy as np

from ..config import DataConfig, ModelConfig
from ..rng import hashed_normals, rng_for
from .synthetic_text import population_counts

LABEL_NOISE = 0.1


class LinearCorpus:
    """Users of (x, y) pairs for linear regression; see the module docstring.

    Not a `UserCorpus` (examples are feature rows, not token rows); it has the same `num_users`, `counts`,
    `num_examples` and `heldout()` shape of interface, plus `rows(users, local_ids)` for many users at once.
    """

    def __init__(self, data_cfg: DataConfig, model_cfg: ModelConfig, seed: int) -> None:
        all_counts = population_counts(data_cfg, seed)
        self.num_users = int(data_cfg.num_users)
        self.num_heldout = int(data_cfg.heldout_users)
        self.dim = int(model_cfg.dim)
        self.heterogeneity = float(data_cfg.user_diversity)
        self.seed = int(seed)
        self._all_counts = all_counts
        self.starts = np.concatenate([[0], np.cumsum(all_counts)[:-1]]).astype(np.int64)  # global id of (u, 0)
        self.counts = all_counts[: self.num_users]
        self.heldout_counts = all_counts[self.num_users:]
        self._key_star, self._key_user, self._key_x = (int(k) for k in rng_for(seed, "data", 3, 0).integers(
            0, 2**63, size=3))
        self.w_star = hashed_normals(self._key_star, np.zeros(1, np.int64), self.dim)[0].astype(np.float64) \
            / np.sqrt(self.dim)

    @property
    def num_examples(self) -> int:
        return int(np.sum(self.counts))

    def user_weights(self, users: np.ndarray) -> np.ndarray:
        """True regression weights of `users`, shape (len(users), d) float64."""
        z = hashed_normals(self._key_user, np.asarray(users, np.int64), self.dim).astype(np.float64)
        return self.w_star[None, :] + self.heterogeneity * z / np.sqrt(self.dim)

    def rows(self, owners: np.ndarray, local_ids: np.ndarray,
             user_weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Examples `local_ids[i]` of users `owners[i]`: X (E, d) and y (E,), float64.

        `user_weights` (one row per entry, optional) saves recomputing w_u for repeated owners.
        """
        owners = np.asarray(owners, np.int64)
        local_ids = np.asarray(local_ids, np.int64)
        if owners.size and (owners.min() < 0 or owners.max() >= self._all_counts.size):
            raise IndexError(f"user out of range [0, {self._all_counts.size})")
        if local_ids.size and (local_ids.min() < 0 or np.any(local_ids >= self._all_counts[owners])):
            raise IndexError("example id out of range for its user")
        z = hashed_normals(self._key_x, self.starts[owners] + local_ids, self.dim + 1).astype(np.float64)
        x = z[:, : self.dim]
        wu = self.user_weights(owners) if user_weights is None else user_weights
        y = np.einsum("ed,ed->e", x, wu) + LABEL_NOISE * z[:, self.dim]
        return x, y

    def examples(self, user: int) -> tuple[np.ndarray, np.ndarray]:
        """All of user `user`'s examples (X, y); ids >= num_users are held-out users."""
        user = int(user)
        if not 0 <= user < self._all_counts.size:
            raise IndexError(f"user {user} out of range [0, {self._all_counts.size})")
        n = int(self._all_counts[user])
        return self.rows(np.full(n, user), np.arange(n))

    def heldout(self, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The first `limit` examples of the held-out users (all by default), stacked."""
        owners = np.repeat(np.arange(self.num_users, self._all_counts.size), self.heldout_counts)
        local = np.arange(owners.size) - np.repeat(np.cumsum(self.heldout_counts) - self.heldout_counts,
                                                   self.heldout_counts)
        if limit is not None:
            owners, local = owners[:limit], local[:limit]
        return self.rows(owners, local)
