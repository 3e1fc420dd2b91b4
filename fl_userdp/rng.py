"""One seeded generator tree for all randomness.

`rng_for(seed, stream, round, user)` derives an independent numpy Generator
from a fixed path; the same path always gives the same stream, so a resumed
run (or a different sharding of users over nodes) draws exactly the same
numbers. Nothing in the framework uses the global `random` or numpy state.

`hashed_normals(key, ids, dim)` is the counter-based companion: normals that
are a pure function of (key, id, coordinate), so any process can regenerate
one example of one user without generating the others.
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
    "pilot": 9,      # the advisor's pilot users and rows (fl_userdp.local.pilot)
    "similar": 10,   # synthetic text: each user's template and the copies of it (data.example-similarity)
    "groups": 11,    # the one-time split of users into cyclic participation groups (privacy.bands > 1)
}


def rng_for(seed: int, stream: str, round: int = 0, user: int = 0, key: int | None = None) -> np.random.Generator:
    """A Generator for (seed, stream, round, user[, key]); independent across paths.

    `key` (a non-negative integer of any size, e.g. a digest) extends the seed's entropy: generators with
    different keys are independent (used to give every distinct release its own noise, `noise.release_rng`).
    """
    if stream not in STREAMS:
        raise KeyError(f"unknown random stream {stream!r}; known: {sorted(STREAMS)}")
    entropy = int(seed) if key is None else [int(seed), int(key)]
    seq = np.random.SeedSequence(entropy=entropy, spawn_key=(STREAMS[stream], int(round), int(user)))
    return np.random.Generator(np.random.PCG64(seq))


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 output function on a uint64 array (wrapping arithmetic, in place)."""
    x ^= x >> np.uint64(30)
    x *= _M1
    x ^= x >> np.uint64(27)
    x *= _M2
    x ^= x >> np.uint64(31)
    return x


def hashed_normals(key: int, ids: np.ndarray, dim: int) -> np.ndarray:
    """Standard normals z[i, j] (float32), a pure function of (key, ids[i], j); shape (len(ids), dim).

    Counter-based: coordinate pair p of id i is SplitMix64 at position
    i·⌈dim/2⌉ + p of the stream seeded by `key`; its 64 bits give two 24-bit
    uniforms and Box–Muller turns them into two normals (tails reach 5.9 std).
    Float32 keeps the transcendental functions vectorised (about 10x faster).
    """
    pairs = (dim + 1) // 2
    ids = np.asarray(ids, dtype=np.uint64)
    ctr = ids[:, None] * np.uint64(pairs) + np.arange(pairs, dtype=np.uint64)[None, :]
    ctr *= _GOLDEN
    ctr += np.uint64(key)
    h = _mix64(ctr)
    scale = np.float32(2.0**-24)
    u1 = ((h >> np.uint64(40)).astype(np.uint32).astype(np.float32) + np.float32(0.5)) * scale
    u2 = (((h >> np.uint64(8)) & np.uint64(0xFFFFFF)).astype(np.uint32).astype(np.float32) + np.float32(0.5)) * scale
    r = np.sqrt(np.float32(-2.0) * np.log(u1))
    ang = np.float32(2.0 * np.pi) * u2
    z = np.empty((ids.size, 2 * pairs), dtype=np.float32)
    np.multiply(r, np.cos(ang), out=z[:, 0::2])
    np.multiply(r, np.sin(ang), out=z[:, 1::2])
    return z[:, :dim]
