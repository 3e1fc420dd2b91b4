"""What a node returns for one round: the sum of its users' clipped records (`Contribution`), and the
examples a ULS user trains on in a round (`uls_example_ids`, a keyed choice the server can recompute)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fl_userdp.rng import rng_for


@dataclass(frozen=True)
class Contribution:
    total: np.ndarray      # flat float64 Σ of clipped records
    users: int
    examples: int
    clipped: int
    loss_sum: float | None  # Σ over records (users for ULS, examples for ELS) of the training loss


def uls_example_ids(seed: int, rnd: int, user: int, n_u: int, k: int) -> np.ndarray:
    """The ≤ k examples (local ids, sorted) user `user` trains on in round `rnd` (ULS)."""
    if n_u <= k:
        return np.arange(n_u)
    return np.sort(rng_for(seed, "cap", rnd, user).choice(n_u, size=k, replace=False))
