"""Who contributes to a round: Poisson sampling of users (ULS) or examples (ELS), over everyone or
within one cyclic group.

Users' examples are described as counts: `counts[u]` = n_u. The ELS cap keeps,
once per run, a seeded subset of min(n_u, k) examples of each user and is
stored in CSR form (`CappedExamples`): user u's kept example ids are
`example_ids[offsets[u]:offsets[u+1]]`. Sampling rates are declared by the
caller and read by the accountant from the same config field; they are never
inferred from data.

Cyclic participation (`privacy.bands` = b > 1, for banded correlated noise): before round 1 the users
are split into b groups by a keyed permutation dealt round robin (`cyclic_groups`: sizes differ by at most
one; it depends on the seed only, never on the data, and need not be secret — the accounting holds for
any data-independent split, taking the worst user). Round t draws only within group (t − 1) mod b: its
users with probability q (ULS, `group_users`), or the kept examples of its users with probability q (ELS,
`group_examples`; a user's examples all belong to the user's group), or, without sampling
(privacy.participation = "fixed"), all of them. So a user's participations are exactly b rounds apart.
With b = 1 the one group is everyone and the draws are exactly `poisson_users` / `poisson_examples`.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

PARTICIPATIONS = ("poisson", "fixed")  # within the round's group: Poisson at rate q, or everyone
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
    return examples_at(capped, np.flatnonzero(rng.random(capped.total) < rate))


def examples_at(capped: CappedExamples, hit: np.ndarray) -> ExampleSample:
    """The kept examples at sorted positions `hit` (indices into the CSR arrays), grouped by user."""
    owner = capped.owners[hit]  # sorted: kept examples are stored grouped by user
    starts = np.flatnonzero(np.concatenate([[True], owner[1:] != owner[:-1]])) if owner.size else owner
    users = owner[starts]
    offsets = np.concatenate([starts, [owner.size]]).astype(np.int64)
    return ExampleSample(users=users, offsets=offsets, example_ids=capped.example_ids[hit])


def cyclic_groups(rng: np.random.Generator, num_users: int, groups: int) -> np.ndarray:
    """Group (0 … groups − 1) of every user: a permutation from `rng` dealt round robin, so group sizes differ by
    at most one. Drawn once per run, before round 1, from the seed alone."""
    if groups < 1 or groups > num_users:
        raise ValueError(f"groups must be in [1, {num_users}] (one user at least in each), got {groups}")
    group = np.empty(num_users, dtype=np.int64)
    group[rng.permutation(num_users)] = np.arange(num_users) % groups
    return group


def group_of_round(rnd: int, groups: int) -> int:
    """The group that round `rnd` (1-based) draws from: (rnd − 1) mod groups."""
    return (int(rnd) - 1) % int(groups)


def group_users(rng, members: np.ndarray, rate: float) -> np.ndarray:
    """Sorted ids of the group's users in the cohort: each of `members` (sorted) with probability `rate`; all of
    them without a draw when `rate` is 1 (the deterministic variant)."""
    if rate >= 1.0:
        return members.copy()
    return members[rng.random(members.size) < rate]


def group_examples(rng, capped: CappedExamples, positions: np.ndarray, rate: float) -> ExampleSample:
    """The group's kept examples in the step: each of `positions` (sorted indices of the kept examples of the
    group's users) with probability `rate`; all of them without a draw when `rate` is 1."""
    if rate >= 1.0:
        return examples_at(capped, positions)
    return examples_at(capped, positions[rng.random(positions.size) < rate])


def group_positions(capped: CappedExamples, group: np.ndarray, g: int) -> np.ndarray:
    """Sorted indices of the kept examples whose owners are in group `g`."""
    return np.flatnonzero(group[capped.owners] == g)
