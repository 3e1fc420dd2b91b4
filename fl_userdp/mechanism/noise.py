"""Gaussian noise for releases, and the generators that draw it.

Two sources, one interface (`.random(n)`, `.standard_normal(n)`):

* **Seeded, per release** (`release_rng`): a numpy Generator keyed by the
  run's seed *and* a digest of everything the release is made of — the mode,
  the round, the noise std σC, the expected count, the exact bytes of the
  clipped sum and, with adaptive clipping, the count's noise std and the
  centred count it is added to. Two releases draw the same noise only when they are bitwise the
  same release (then publishing both says nothing new); any two that can
  differ — ULS and ELS of one `compare`, two runs whose config or data
  differ, a round whose replies differ — get independent noise, so no linear
  combination of published updates cancels it. One run with one config and
  one dataset stays reproducible. The guarantee of a seeded run holds against
  anyone who does not know the seed.
* **OS entropy** (`SecureGenerator`): uniforms from `os.urandom`, each normal
  the halved sum of four Box–Muller draws (`secure_standard_normal`: resistant
  to floating-point attacks on a single draw). Used for noise *and* sampling in secure mode
  (`privacy.secure-mode`): knowing the seed predicts neither.

Float64 throughout; the result is cast by the caller.
"""
from __future__ import annotations

import hashlib
import json
import math
import os

import numpy as np

from ..rng import rng_for


def _os_uniform(n: int) -> np.ndarray:
    bits = np.frombuffer(os.urandom(8 * n), dtype=np.uint64) >> np.uint64(11)
    return (bits.astype(np.float64) + 1.0) / float(1 << 53)  # in (0, 1]


SECURE_DRAWS = 4  # normals summed per secure output (opacus' secure mode: 4 draws, halved)


def box_muller(n: int) -> np.ndarray:
    """n standard normals from OS entropy by Box–Muller (one pair (r cos θ, r sin θ) per two uniforms)."""
    m = (n + 1) // 2
    u1, u2 = _os_uniform(m), _os_uniform(m)
    r = np.sqrt(-2.0 * np.log(u1))
    z = np.concatenate([r * np.cos(2 * np.pi * u2), r * np.sin(2 * np.pi * u2)])
    return z[:n]


def secure_standard_normal(n: int) -> np.ndarray:
    """n standard normals from OS entropy, resistant to floating-point attacks: each is the sum of
    `SECURE_DRAWS` = 4 independent Box–Muller draws divided by 2 (variance 4 / 4 = 1).

    Why not one draw: a float64 sample of a textbook sampler (Box–Muller, polar, Ziggurat) cannot take
    every float value, and which low-order bit patterns it can take depends on the value it was added to,
    so a released x + noise can reveal x (Mironov 2012 for the Laplace mechanism; Jin, McMurtry,
    Rubinstein & Ohrimenko 2022 for Gaussian samplers, Box–Muller included). Summing several
    independent draws spreads each output over many (draw, draw, ...) combinations, which removes the
    gaps those attacks read (Holohan & Braghin 2021, the construction opacus' `secure_mode` uses:
    `_generate_noise` sums 4 normals of std σ and halves them). The sum of 4 independent N(0, 1) halved is
    exactly N(0, 1), so the accountant's analysis is unchanged.
    """
    z = box_muller(int(n))
    for _ in range(SECURE_DRAWS - 1):
        z += box_muller(int(n))
    return z / math.sqrt(SECURE_DRAWS)


class SecureGenerator:
    """The part of numpy's Generator interface the framework draws from, fed by `os.urandom` (a CSPRNG)."""

    def random(self, n: int) -> np.ndarray:
        """n uniforms in [0, 1) (53 bits each)."""
        return _os_uniform(int(n)) - float(2.0 ** -53)

    def standard_normal(self, n: int) -> np.ndarray:
        return secure_standard_normal(int(n))

    def binomial(self, trials: int, p: float, size: int) -> np.ndarray:
        return (self.random(int(size) * int(trials)).reshape(int(size), int(trials)) < p).sum(axis=1)


def release_key(mode: str, rnd: int, noise_std: float, expected: float, total: np.ndarray,
                extra: tuple[float, ...] = ()) -> int:
    """A 256-bit digest of one release's inputs: mode, round, σC, expected count and the clipped sum's bytes,
    and `extra`: every other released quantity's inputs (adaptive clipping: the count's noise std and the
    centred count itself), so each quantity drawn from this generator is keyed by what it is released with."""
    h = hashlib.sha256()
    head = [str(mode), int(rnd), float(noise_std).hex(), float(expected).hex()]
    if extra:
        head.append([float(x).hex() for x in extra])
    h.update(json.dumps(head).encode())
    h.update(np.ascontiguousarray(total, dtype=np.float64).tobytes())
    return int.from_bytes(h.digest(), "little")


def release_rng(seed: int, mode: str, rnd: int, noise_std: float, expected: float,
                total: np.ndarray, extra: tuple[float, ...] = ()) -> np.random.Generator:
    """The seeded noise generator of one release (see the module docstring)."""
    return rng_for(seed, "noise", rnd, key=release_key(mode, rnd, noise_std, expected, total, extra))


def gaussian_noise(size: int, std: float, rng) -> np.ndarray:
    """`size` i.i.d. N(0, std²) values from `rng` (a numpy Generator or a SecureGenerator)."""
    if std < 0:
        raise ValueError(f"noise std must be >= 0, got {std}")
    if rng is None:
        raise ValueError("a generator is required (seeded, or SecureGenerator for OS entropy)")
    return std * rng.standard_normal(size)
