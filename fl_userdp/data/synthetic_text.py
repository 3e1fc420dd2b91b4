"""A synthetic user-partitioned text corpus (pure numpy; no torch).

Generative story (all draws from the seeded generator tree, `rng_for`):

* **Topics** (`rng_for(seed, "data", 2, topic)`): `NUM_TOPICS` sparse bigram
  Markov chains over the vocabulary. Each topic has a "home" set of about V/4
  tokens; every token has `BRANCH` possible successors (mostly from the home
  set) with Dirichlet probabilities. A tiny LM can learn these chains, so the
  loss drops from log V towards the chains' entropy within a few rounds.
* **Counts** (`rng_for(seed, "data", 0, 0)`): n_u ~ round(LogNormal(log median,
  sigma)), at least 1, for the training users followed by the held-out users.
* **Users** (`rng_for(seed, "data", 1, user)`, drawn lazily in `examples`):
  a main topic, a personal Dirichlet mixture over topics, and a few favourite
  tokens. Topic mixture = (1 - d)·onehot(main) + d·Dirichlet(1), with
  d = `data.user-diversity`: at d = 0 all of a user's examples come from one
  topic, at d = 1 they are spread over a personal mix of all topics. Each next
  token is, with probability `P_PERSONAL`, one of the user's favourites
  (a user "style" that makes users distinguishable), otherwise the topic
  chain's successor of the previous token.
* **Near-copies** (`rng_for(seed, "similar", 0, user)`, only when `data.example-similarity` s > 0):
  each token of a user's examples is replaced, with probability s, by the token at the same position
  of the user's first example (its template). At s = 0 (the default) the examples are independent
  draws of the user's process and nothing changes; at s = 1 every example is a copy of the template.
  `data.user-diversity` moves the topic mix, which leaves a user's examples about as varied as the
  population's (within-user share of gradient variance ≈ 0.92 at either end, measured by
  `fl_userdp.local.pilot`); `data.example-similarity` moves that share towards 0.

Nothing per user is materialised at construction (only the counts vector), so
a corpus of 100,000 users builds instantly and any process regenerates any
user's examples exactly.
"""
from __future__ import annotations

import numpy as np

from ..config import DataConfig, ModelConfig
from ..errors import ConfigError
from ..rng import rng_for
from .base import UserCorpus

NUM_TOPICS = 8
BRANCH = 4            # successors per token in a topic's chain
HOME_FRACTION = 0.25  # size of a topic's home token set, relative to the vocabulary
P_HOME = 0.85         # chance a successor is drawn from the topic's home set
P_PERSONAL = 0.15     # chance a token is one of the user's favourites
NUM_FAVOURITES = 4


MAX_USER_EXAMPLES = 1_000_000  # examples one synthetic user may draw


def draw_counts(rng: np.random.Generator, num: int, median: float, sigma: float) -> np.ndarray:
    """n_u ~ round(LogNormal(log median, sigma)), at least 1 (int64); a draw above MAX_USER_EXAMPLES is refused
    (naming data.examples-per-user-sigma), as a user's examples are generated whole."""
    raw = rng.lognormal(mean=np.log(median), sigma=sigma, size=num)
    if raw.size and not raw.max() <= MAX_USER_EXAMPLES:
        raise ConfigError("data.examples-per-user-sigma", sigma, f"draws a user with {raw.max():.3g} examples "
                          f"around the median {median:g} (at most {MAX_USER_EXAMPLES:,}): lower it or the median")
    return np.maximum(1, np.rint(raw)).astype(np.int64)


def population_counts(data_cfg: DataConfig, seed: int) -> np.ndarray:
    """n_u of the training users, then of the held-out users (one seeded draw per population)."""
    if data_cfg.num_users < 1:
        raise ConfigError("data.num-users", data_cfg.num_users, "must be >= 1 (the corpus is empty)")
    return draw_counts(rng_for(seed, "data", 0, 0), data_cfg.num_users + data_cfg.heldout_users,
                       data_cfg.examples_per_user_median, data_cfg.examples_per_user_sigma)


class _Topic:
    """One sparse bigram chain: successors (V, BRANCH) and their CDF (V, BRANCH)."""

    def __init__(self, rng: np.random.Generator, vocab_size: int) -> None:
        home_size = max(BRANCH, int(round(HOME_FRACTION * vocab_size)))
        home_size = min(home_size, vocab_size)
        self.home = rng.choice(vocab_size, size=home_size, replace=False)
        from_home = rng.random((vocab_size, BRANCH)) < P_HOME
        self.successors = np.where(from_home,
                                   self.home[rng.integers(home_size, size=(vocab_size, BRANCH))],
                                   rng.integers(vocab_size, size=(vocab_size, BRANCH)))
        probs = rng.dirichlet(np.ones(BRANCH), size=vocab_size)
        self.cdf = np.cumsum(probs, axis=1)
        self.cdf[:, -1] = 1.0


class SyntheticTextCorpus(UserCorpus):
    """Users of synthetic token sequences; see the module docstring."""

    def __init__(self, data_cfg: DataConfig, model_cfg: ModelConfig, seed: int) -> None:
        self._all_counts = population_counts(data_cfg, seed)
        self.num_users = int(data_cfg.num_users)
        self.num_heldout = int(data_cfg.heldout_users)
        self.seq_len = int(model_cfg.seq_len)
        self.vocab_size = int(model_cfg.vocab_size)
        self.diversity = float(data_cfg.user_diversity)
        self.similarity = float(data_cfg.example_similarity)
        self.seed = int(seed)
        self.counts = self._all_counts[: self.num_users]
        self.heldout_counts = self._all_counts[self.num_users:]
        self._topics = [_Topic(rng_for(seed, "data", 2, t), self.vocab_size) for t in range(NUM_TOPICS)]
        self._succ = np.stack([t.successors for t in self._topics])   # (T, V, B)
        self._cdf = np.stack([t.cdf for t in self._topics])           # (T, V, B)

    def examples(self, user: int) -> np.ndarray:
        """User `user`'s examples, shape (n_u, seq_len) int64; ids >= num_users are held-out users."""
        return self.examples_many([user])[0]

    def examples_many(self, users) -> list[np.ndarray]:
        """`examples(u)` for each of `users`, generated together: each user's random draws come from its own
        stream, in the same order as one at a time, and the bigram chains of all their rows advance in one
        vectorised pass (the same arithmetic per row), so the rows are identical to `examples(u)`'s."""
        users = [int(u) for u in users]
        if not users:
            return []
        for u in users:
            if not 0 <= u < self._all_counts.size:
                raise IndexError(f"user {u} out of range [0, {self._all_counts.size})")
        length, vocab = self.seq_len, self.vocab_size
        parts = []
        for user in users:
            rng = rng_for(self.seed, "data", 1, user)
            n = int(self._all_counts[user])
            main = rng.integers(NUM_TOPICS)
            mix = (1.0 - self.diversity) * np.eye(NUM_TOPICS)[main] + self.diversity * rng.dirichlet(np.ones(NUM_TOPICS))
            favourites = rng.choice(vocab, size=min(NUM_FAVOURITES, vocab), replace=False)
            topic = rng.choice(NUM_TOPICS, size=n, p=mix / mix.sum())
            u_next, u_pers = rng.random((n, length)), rng.random((n, length))
            fav_pick = favourites[rng.integers(favourites.size, size=(n, length))]
            start = rng.integers(1 << 30, size=n)
            parts.append((n, topic, u_next, u_pers, fav_pick, start))
        sizes = [p[0] for p in parts]
        topic, u_next, u_pers, fav_pick, start = (np.concatenate([p[k] for p in parts]) for k in range(1, 6))
        tokens = np.empty((topic.size, length), dtype=np.int64)
        tokens[:, 0] = [self._topics[t].home[s % self._topics[t].home.size] for t, s in zip(topic, start)]
        for pos in range(1, length):
            prev = tokens[:, pos - 1]
            idx = (u_next[:, pos, None] > self._cdf[topic, prev]).sum(axis=1)
            nxt = self._succ[topic, prev, np.minimum(idx, BRANCH - 1)]
            tokens[:, pos] = np.where(u_pers[:, pos] < P_PERSONAL, fav_pick[:, pos], nxt)
        out = np.split(tokens, np.cumsum(sizes)[:-1]) if sizes else []
        if self.similarity > 0:
            for i, user in enumerate(users):
                copy = rng_for(self.seed, "similar", 0, user).random((sizes[i], length)) < self.similarity
                out[i] = np.where(copy, out[i][0][None, :], out[i])
        return out

    def heldout(self) -> np.ndarray:
        """All examples of the held-out users (ids num_users .. num_users+heldout-1), stacked."""
        if self.num_heldout == 0:
            return np.zeros((0, self.seq_len), dtype=np.int64)
        return np.concatenate([self.examples(self.num_users + j) for j in range(self.num_heldout)])
