"""Errors the framework raises for bad input.

`ConfigError` always names the offending key (or command-line option) and the
value it got, so a user can fix the input from one line of output.
"""
from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """A configuration value is missing, unknown or out of range."""

    def __init__(self, key: str, value: Any, requirement: str) -> None:
        self.key = key
        self.value = value
        self.requirement = requirement
        super().__init__(f"{key} {requirement}, got {value!r}")


class PrivacyBudgetError(RuntimeError):
    """An operation would spend privacy the ledger cannot account for."""
