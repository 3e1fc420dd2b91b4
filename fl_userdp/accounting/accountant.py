"""The privacy ledger: user-level epsilon, round by round.

`UserLevelAccountant` has the shape of Flower's accountant protocol (compose,
epsilon, would-exceed, state_dict/load_state_dict) but composes our frozen
events (`UlsRound`, `ElsStep`) and keeps a per-round epsilon history. It
changes only when a release is composed; a checkpoint stores `state_dict()`
and a resumed run restores it, so budget is never reset.

Backends: 'pld' (default, tight for both modes), 'rdp' (ULS only), 'group'
(ELS only: example-level accounting lifted by group privacy, the loose
baseline). Reported epsilons are upper bounds; the history is kept
non-decreasing by taking the running maximum of the computed bounds.
"""
from __future__ import annotations

import importlib
import math
from typing import Any, Callable, Sequence

from ..errors import ConfigError
from .events import (DELTA_FLOOR_WHY, MIN_DELTA, ElsStep, Event, UlsRound, event_from_dict, event_to_dict, make_event,
                     participations)
from .group import group_epsilon
from .pld import Run
from .pld import epsilon as pld_epsilon
from .plugins import BUILTIN, LEDGER_METHODS, is_plugin
from .rdp import check_supported, rdp_epsilon

BACKENDS = ("pld", "rdp", "group")
STATE_VERSION = 1


def check_delta(delta: float, key: str = "delta") -> float:
    if not isinstance(delta, (int, float)) or isinstance(delta, bool) or not (MIN_DELTA <= delta < 1.0):
        raise ConfigError(key, delta, f"must be in [{MIN_DELTA:g}, 1) ({DELTA_FLOOR_WHY})")
    return float(delta)


def check_delta_for_users(delta: float, users: int, key: str = "delta") -> float:
    """δ < 1/N for N users: δ is the probability that the guarantee may fail outright, and at δ >= 1/N a
    mechanism that publishes one user's data whole, that user drawn at random, is (0, δ)-DP."""
    if users >= 1 and delta >= 1.0 / users:
        raise ConfigError(key, delta, f"must be < 1/N = {1.0 / users:.6g} for N = {users:,} training users (δ is "
                                      "the chance that the guarantee fails outright)")
    return float(delta)


def check_backend(backend: str, mode: str | None = None) -> str:
    if is_plugin(backend):
        return backend  # checked when it is built (`make_accountant`, `plugins.check_supports`)
    if backend not in BACKENDS:
        raise ConfigError("accountant", backend, f"must be one of {list(BACKENDS)} or 'package.module:Factory'")
    if backend == "rdp" and mode is not None:
        check_supported(mode)
    if backend == "group" and mode == "uls":
        raise ConfigError(
            "accountant", backend,
            "applies to mode 'els' only (ULS is accounted at user level directly)",
        )
    return backend


def epsilon_for(runs: Sequence[Run], delta: float, backend: str = "pld") -> float:
    """User-level epsilon of `runs` at `delta` with the named backend (or a plug-in, 'package.module:Factory').

    A built-in backend composes a b-banded event's releases as ⌈count/b⌉ participations (`participations`); a
    plug-in ledger gets the events themselves (the runner refuses banded noise with a plug-in)."""
    if is_plugin(backend):
        return plugin_epsilon(backend, runs, check_delta(delta))
    fn: Callable[[Sequence[Run], float], float] = {
        "pld": pld_epsilon, "rdp": rdp_epsilon, "group": group_epsilon
    }[check_backend(backend)]
    return fn(participations(runs), check_delta(delta))


def _merge(runs: list[Run], event: Event, count: int) -> list[Run]:
    runs = list(runs)
    if runs and runs[-1][0] == event:
        runs[-1] = (event, runs[-1][1] + count)
    else:
        runs.append((event, count))
    return runs


class UserLevelAccountant:
    """Composes user-level privacy events and reports epsilon at a fixed delta."""

    def __init__(self, delta: float, backend: str = "pld") -> None:
        self.delta = check_delta(delta)
        self.backend = check_backend(backend)
        self._runs: list[Run] = []
        self.history: list[float] = []
        self._cache: dict[tuple, float] = {}

    # -- queries ------------------------------------------------------------
    @property
    def steps(self) -> int:
        return sum(c for _, c in self._runs)

    @property
    def runs(self) -> list[Run]:
        return list(self._runs)

    def _eps(self, runs: Sequence[Run], delta: float) -> float:
        key = (tuple(runs), delta)
        if key not in self._cache:
            self._cache[key] = epsilon_for(runs, delta, self.backend)
        return self._cache[key]

    def epsilon(self, delta: float | None = None) -> float:
        """Epsilon spent so far at `delta` (default: the run's delta)."""
        if delta is None or delta == self.delta:
            current = self._eps(self._runs, self.delta)
            return max([current, *self.history[-1:]])
        return self._eps(self._runs, check_delta(delta))

    get_epsilon = epsilon

    def epsilon_after(self, event: Event, count: int = 1) -> float:
        """Epsilon the ledger would report after `count` more releases of `event`."""
        self._check_event(event)
        after = self._eps(_merge(self._runs, event, count), self.delta)
        return max([after, *self.history[-1:]])

    def would_exceed(self, event: Event, max_epsilon: float, count: int = 1) -> bool:
        """True when composing `event` `count` more times would pass `max_epsilon`."""
        return self.epsilon_after(event, count) > max_epsilon

    # -- updates ------------------------------------------------------------
    def _check_event(self, event: Event) -> None:
        if not isinstance(event, (UlsRound, ElsStep)):
            raise TypeError(f"expected UlsRound or ElsStep, got {type(event).__name__}")
        check_backend(self.backend, event.mode)

    def compose(self, event: Event, count: int = 1) -> float:
        """Record `count` releases of `event`; return the new epsilon at the run's delta."""
        if count < 0:
            raise ConfigError("count", count, "must be >= 0")
        if count == 0:
            return self.epsilon()
        eps = self.epsilon_after(event, count)
        self._runs = _merge(self._runs, event, count)
        self.history.append(eps)
        return eps

    # -- persistence ----------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "backend": self.backend,
            "delta": self.delta,
            "runs": [{**event_to_dict(e), "count": c} for e, c in self._runs],
            "history": [None if math.isinf(h) else h for h in self.history],
            "history_infinite": [math.isinf(h) for h in self.history],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise ConfigError("ledger.version", (state or {}).get("version") if isinstance(state, dict) else state,
                              f"must be {STATE_VERSION}")
        if state.get("backend") != self.backend:
            raise ConfigError("ledger.backend", state.get("backend"), f"must match the run's accountant {self.backend!r}")
        if state.get("delta") != self.delta:
            raise ConfigError("ledger.delta", state.get("delta"), f"must match the run's delta {self.delta!r}")
        runs = [(event_from_dict(r), int(r["count"])) for r in state["runs"]]
        infinite = state.get("history_infinite") or [False] * len(state["history"])
        history = [math.inf if inf else float(h) for h, inf in zip(state["history"], infinite)]
        self._runs, self.history = runs, history

    def __repr__(self) -> str:
        return (f"UserLevelAccountant(backend={self.backend!r}, delta={self.delta}, "
                f"steps={self.steps}, epsilon={self.epsilon():.4g})")


def make_accountant(spec: str, delta: float, key: str = "privacy.accountant"):
    """A ledger: `UserLevelAccountant(delta, spec)` for a built-in name, else `Factory(delta=delta)`."""
    if spec in BUILTIN:
        return UserLevelAccountant(delta, spec)
    if not is_plugin(spec):
        raise ConfigError(key, spec, f"must be one of {list(BUILTIN)} or 'package.module:Factory'")
    module_name, _, attr = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except ImportError as err:
        raise ConfigError(key, spec, f"cannot be imported ({err})") from None
    except AttributeError:
        raise ConfigError(key, spec, f"names nothing in {module_name}") from None
    try:
        ledger = factory(delta=delta)
    except ImportError as err:  # a package the plug-in needs: its message says what to install
        raise ConfigError(key, spec, f"cannot be created: {' '.join(str(err).split())}") from None
    except Exception as err:  # noqa: BLE001 - a plug-in's own failure, reported in one line
        raise ConfigError(key, spec, f"could not be created with delta={delta} ({err})") from None
    missing = [m for m in LEDGER_METHODS if not callable(getattr(ledger, m, None))]
    if missing:
        raise ConfigError(key, spec, f"is not a ledger: it lacks {', '.join(missing)}")
    return ledger


def plugin_epsilon(spec: str, runs: Sequence[tuple[Event, int]], delta: float) -> float:
    """ε of `runs` at δ by a fresh plug-in ledger (used for calibration)."""
    ledger = make_accountant(spec, delta)
    for event, count in runs:
        if count > 0:
            ledger.compose(event, count)
    return float(ledger.epsilon())
