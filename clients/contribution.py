"""What a node returns for one round: the sum of its users' clipped records (`Contribution`) with the sum of
their training losses (`user_loss_sum`, `example_loss_sum`: clipped per record under privacy.private-loss), and
the examples a ULS user trains on in a round (`uls_example_ids`, a keyed choice the server can recompute),
and whether to measure what the exact-sum grid dropped (`grid_check`)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fl_userdp.config import RunConfig, loss_bound, publish_diagnostics
from fl_userdp.mechanism.private_loss import clipped_loss_sum
from fl_userdp.rng import rng_for


@dataclass(frozen=True)
class Contribution:
    total: np.ndarray      # flat float64 Σ of clipped records
    users: int
    examples: int
    clipped: int
    loss_sum: float | None  # Σ over records (users for ULS, examples for ELS) of the training loss
    grid_loss: float | None = None  # what the exact-sum grid dropped of `total` (measured: `grid_check`)


def uls_example_ids(seed: int, rnd: int, user: int, n_u: int, k: int) -> np.ndarray:
    """The ≤ k examples (local ids, sorted) user `user` trains on in round `rnd` (ULS)."""
    if n_u <= k:
        return np.arange(n_u)
    return np.sort(rng_for(seed, "cap", rnd, user).choice(n_u, size=k, replace=False))


def user_loss_sum(cfg: RunConfig, losses: np.ndarray, sizes: list[int]) -> float:
    """Σ over users of each user's mean loss (`losses` per example, users' examples consecutive, `sizes` per
    user); under privacy.private-loss each user's mean clipped to [0, L] first."""
    if cfg.privacy.private_loss:
        return clipped_loss_sum(losses, loss_bound(cfg), np.asarray(sizes))
    return float(np.asarray(losses, np.float64) @ np.concatenate([np.full(n, 1.0 / max(n, 1)) for n in sizes]))


def example_loss_sum(cfg: RunConfig, losses: np.ndarray) -> float:
    """Σ of the examples' losses; under privacy.private-loss each clipped to [0, L] first."""
    if cfg.privacy.private_loss:
        return clipped_loss_sum(losses, loss_bound(cfg))
    return float(np.asarray(losses, np.float64).sum())


GRID_CHECKS = 64  # clip norms a worker measures at (adaptive clipping moves C every round)


def grid_check(worker, cfg: RunConfig) -> list | None:
    """An empty list to measure the grid's loss into (`fl_userdp.mechanism.fixed_point.grid_loss`) the first
    time `worker` sums at this C, where diagnostics are published (the figure comes from users' data without
    noise); None otherwise (no measuring: it costs one more pass over the records)."""
    seen = worker.__dict__.setdefault("_grid_checked", set())
    C = cfg.privacy.clip_norm
    if C in seen or len(seen) >= GRID_CHECKS or not publish_diagnostics(cfg):
        return None
    seen.add(C)
    return []


def measured(check: list | None) -> float | None:
    """The loss a `grid_check` list holds (None: not measured)."""
    return max(check) if check else None
