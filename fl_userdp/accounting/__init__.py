"""User-level privacy accounting for ULS and ELS (pure: numpy, scipy, dp_accounting).

Public API: the events (`UlsRound`, `ElsStep`, `make_event`), the ledger
(`UserLevelAccountant`), `epsilon_for` and `calibrate_noise`.
"""
from .accountant import (BACKENDS, UserLevelAccountant, check_backend, check_delta, check_delta_for_users,
                         epsilon_for, event_from_dict,
                         make_accountant,
                         event_to_dict)
from .calibration import calibrate_noise
from .plugins import Ledger
from .events import MAX_EXAMPLES_PER_USER, MAX_STEPS, MODES, ElsStep, Event, UlsRound, check_steps, make_event

__all__ = [
    "BACKENDS", "MAX_EXAMPLES_PER_USER", "MAX_STEPS", "MODES", "ElsStep", "Event", "Ledger", "UlsRound",
    "UserLevelAccountant", "make_accountant",
    "calibrate_noise", "check_backend", "check_delta", "check_delta_for_users", "check_steps", "epsilon_for",
    "event_from_dict", "event_to_dict", "make_event",
]
