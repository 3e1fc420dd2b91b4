"""The user-partitioned corpus interface every data source implements (pure numpy).

A corpus holds `num_users` training users; user u has `counts[u]` examples,
each a row of `seq_len` token ids (int64, < `vocab_size`). `examples(u)` is
deterministic, so any process can regenerate (or reload) any user's data.
`heldout()` returns examples of users that are never trained on (evaluation).
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np


class UserCorpus(ABC):
    num_users: int
    counts: np.ndarray   # (num_users,) int64: n_u of each training user
    seq_len: int
    vocab_size: int

    @abstractmethod
    def examples(self, user: int) -> np.ndarray:
        """User `user`'s examples: (n_u, seq_len) int64 token ids, deterministic."""

    @abstractmethod
    def heldout(self) -> np.ndarray:
        """Examples of held-out users (not training users): (m, seq_len) int64."""

    @property
    def num_examples(self) -> int:
        """Σ_u n_u over training users."""
        return int(np.sum(self.counts))

    def examples_of(self, user: int, ids: np.ndarray) -> np.ndarray:
        """Rows `ids` (local example indices) of user `user`'s examples."""
        return self.examples(user)[np.asarray(ids, dtype=np.int64)]
