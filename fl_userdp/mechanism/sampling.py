"""Who contributes to a round: Poisson sampling of users (ULS) or examples (ELS).

Users' examples are described as counts: `counts[u]` = n_u. The ELS cap keeps,
once per run, a seeded subset of min(n_u, k) examples of each user and is
stored in CSR form (`CappedExamples`): user u's kept example ids are
`example_ids[offsets[u]:offsets[u+1]]`. Sampling rates are declared by the
caller and read by the accountant from the same config field; they are never
inferred from data.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

MODE_KEYS = {"uls": 1, "els": 2}  # each mode's own sampling stream: rng_for(seed, "sampling", t, key=MODE_KEYS[mode])


def poisson_users(rng: np.random.Generator, num_users: int, rate: float) -> np.ndarray:
    """Sorted ids of users in the cohort: each independently with probability `rate`."""
    return np.flatnonzero(rng.random(num_users) < rate)


@dataclass(frozen=True)
class CappedExamples:
    """Each user's kept example ids (local indices 0..n_u-1), in CSR form."""

    offsets: np.ndarray      # shape (num_users + 1,)
    example_ids: np.ndarray  # shape (n_k,)

    @property
    def num_users(self) -> int:
        return self.offsets.size - 1

    @property
    def kept_counts(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def total(self) -> int:
        """n_k = Σ_u min(n_u, k)."""
        return int(self.offsets[-1])

    def of_user(self, user: int) -> np.ndarray:
        return self.example_ids[self.offsets[user]:self.offsets[user + 1]]

    @cached_property
    def owners(self) -> np.ndarray:
        """Owner (user id) of every kept example, shape (n_k,); computed once, read-only."""
        owners = np.repeat(np.arange(self.num_users), self.kept_counts)
        owners.flags.writeable = False
        return owners


def cap_examples(rng: np.random.Generator, counts: np.ndarray, k: int) -> CappedExamples:
    """Keep a uniformly random subset of min(n_u, k) examples of every user."""
    counts = np.asarray(counts, dtype=np.int64)
    owner = np.repeat(np.arange(counts.size), counts)
    local = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    order = np.lexsort((rng.random(owner.size), owner))
    rank = np.empty_like(order)
    rank[order] = local  # rank of each example within its user's shuffled order
    keep = rank < k
    kept_counts = np.minimum(counts, k)
    offsets = np.concatenate([[0], np.cumsum(kept_counts)])
    kept_owner, kept_local, kept_rank = owner[keep], local[keep], rank[keep]
    arrange = np.lexsort((kept_rank, kept_owner))
    return CappedExamples(offsets=offsets, example_ids=kept_local[arrange])


@dataclass(frozen=True)
class ExampleSample:
    """The examples sampled in one ELS step, grouped by user (CSR over sampled users)."""

    users: np.ndarray        # sorted ids of users with >= 1 sampled example
    offsets: np.ndarray      # shape (len(users) + 1,)
    example_ids: np.ndarray  # local example ids, grouped by user

    def of_index(self, i: int) -> np.ndarray:
        return self.example_ids[self.offsets[i]:self.offsets[i + 1]]

    @property
    def num_examples(self) -> int:
        return int(self.offsets[-1])


def poisson_examples(rng: np.random.Generator, capped: CappedExamples, rate: float) -> ExampleSample:
    """Sample every kept example independently with probability `rate`."""
    hit = np.flatnonzero(rng.random(capped.total) < rate)
    owner = capped.owners[hit]  # sorted: kept examples are stored grouped by user
    starts = np.flatnonzero(np.concatenate([[True], owner[1:] != owner[:-1]])) if owner.size else owner
    users = owner[starts]
    offsets = np.concatenate([starts, [owner.size]]).astype(np.int64)
    return ExampleSample(users=users, offsets=offsets, example_ids=capped.example_ids[hit])
