"""Rényi-DP backend (ULS only), via dp_accounting's RdpAccountant.

dp_accounting has no RDP analysis of the ELS mixture-of-Gaussians event, and a
loose substitute would silently change what "rdp" means; we refuse it.
"""
from __future__ import annotations

import math
from typing import Sequence

from dp_accounting.rdp import rdp_privacy_accountant as rdp_lib

from ..errors import ConfigError
from .events import ElsStep
from .pld import Run, is_infinite


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
    runs = [(e, int(c)) for e, c in runs if int(c) > 0]
    check_supported(runs)
    if not runs:
        return 0.0
    if is_infinite(runs):
        return math.inf
    acc = rdp_lib.RdpAccountant()
    for event, count in runs:
        acc.compose(event.dp_event(), count)
    return float(acc.get_epsilon(delta))
