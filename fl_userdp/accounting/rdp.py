"""Rényi-DP backend (ULS only), via dp_accounting's RdpAccountant.

dp_accounting has no RDP analysis of the ELS mixture-of-Gaussians event, and a
loose substitute would silently change what "rdp" means; we refuse it.

dp_accounting logs an absl warning for every RDP order whose series does not
converge (it leaves that order out, and the ε stays an upper bound): eight per
call at q = 0.5. They are silenced around our calls (`quiet_absl`: the "absl"
logger raised to ERROR for the block), nowhere else.
"""
from __future__ import annotations

import logging
import math
from contextlib import contextmanager
from typing import Iterator, Sequence

from dp_accounting.rdp import rdp_privacy_accountant as rdp_lib

from ..errors import ConfigError
from .events import ElsStep
from .pld import Run, accounted, is_infinite


@contextmanager
def quiet_absl() -> Iterator[None]:
    """The "absl" logger at ERROR for the block (its level restored after)."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def check_supported(runs_or_mode) -> None:
    """Raise ConfigError when asked for RDP on the ELS event."""
    mode = runs_or_mode if isinstance(runs_or_mode, str) else (
        "els" if any(isinstance(e, ElsStep) for e, _ in runs_or_mode) else "uls"
    )
    if mode == "els":
        raise ConfigError(
            "accountant", "rdp",
            "is not available for mode 'els' (no RDP analysis of the tight mixture "
            "event); use 'pld' (tight) or 'group' (loose baseline)",
        )


def rdp_epsilon(runs: Sequence[Run], delta: float) -> float:
    runs = accounted([(e, int(c)) for e, c in runs if int(c) > 0])
    check_supported(runs)
    if not runs:
        return 0.0
    if is_infinite(runs):
        return math.inf
    acc = rdp_lib.RdpAccountant()
    with quiet_absl():
        for event, count in runs:
            acc.compose(event.dp_event(), count)
        return float(acc.get_epsilon(delta))
