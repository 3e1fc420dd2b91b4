"""One seeded generator tree for all randomness.

`rng_for(seed, stream, round, user)` derives an independent numpy Generator
from a fixed path; the same path always gives the same stream, so a resumed
run (or a different sharding of users over nodes) draws exactly the same
numbers. Nothing in the framework uses the global `random` or numpy state.
"""
from __future__ import annotations

import numpy as np

STREAMS = {
    "sampling": 1,   # which users / examples are in a round
    "cap": 2,        # one-time choice of each user's k kept examples (ELS)
    "noise": 3,      # the DP noise added at the server
    "data": 4,       # synthetic data generation
    "init": 5,       # model initialisation
    "local": 6,      # client-side randomness (local-step order, dropout)
    "eval": 7,       # evaluation subsets
    "audit": 8,      # canaries and audit draws
}


def rng_for(seed: int, stream: str, round: int = 0, user: int = 0) -> np.random.Generator:
    """A Generator for (seed, stream, round, user); independent across paths."""
    if stream not in STREAMS:
        raise KeyError(f"unknown random stream {stream!r}; known: {sorted(STREAMS)}")
    seq = np.random.SeedSequence(entropy=int(seed), spawn_key=(STREAMS[stream], int(round), int(user)))
    return np.random.Generator(np.random.PCG64(seq))
