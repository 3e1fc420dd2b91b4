"""Your own accountant: `privacy.accountant = "package.module:Factory"`.

The ledger protocol the strategy uses (`Ledger`) is small: `compose(event)`
after a release, `epsilon()` now, `epsilon_after(event)` before a release
(the budget check), and `state_dict()` / `load_state_dict(state)` for
checkpoints. Events are this package's frozen `UlsRound` / `ElsStep`
(mode, sampling rate, σ, k). `Factory(delta=δ)` must return such an object.
An accountant that cannot account an event raises `NotImplementedError` (or
`ValueError`/`TypeError`) from `epsilon_after`/`compose`; the run refuses it
before anything starts, naming `privacy.accountant`.

The built-in backends (`pld`, `rdp`, `group`) are `UserLevelAccountant`s.
Shipped plug-ins: `fl_userdp.accounting.prv:PrvAccountant` (the PRV
accountant, ULS) and `fl_userdp.server.flower_accountant:FlowerRdpAccountant` (Flower's
own `RdpAccountant`, ULS). Pure: nothing here imports torch or flwr; a plug-in
module is imported when a run starts.
"""
from __future__ import annotations

import re
from typing import Any, Protocol, Sequence, runtime_checkable

from ..errors import ConfigError
from .events import Event

BUILTIN = ("pld", "rdp", "group")
SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
LEDGER_METHODS = ("compose", "epsilon", "epsilon_after", "state_dict", "load_state_dict")


@runtime_checkable
class Ledger(Protocol):
    def compose(self, event: Event, count: int = 1) -> Any: ...
    def epsilon(self) -> float: ...
    def epsilon_after(self, event: Event, count: int = 1) -> float: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def is_plugin(spec: str) -> bool:
    return isinstance(spec, str) and bool(SPEC.match(spec))


def check_supports(ledger, event: Event, spec: str, key: str = "privacy.accountant") -> None:
    """Ask the ledger for ε after `event`; a ConfigError naming the key when it cannot account it."""
    try:
        ledger.epsilon_after(event)
    except (NotImplementedError, ValueError, TypeError) as err:
        raise ConfigError(key, spec, f"cannot account {event.mode.upper()} events ({err})") from None


class EventLedger:
    """A ledger that keeps the composed events ((event, count) runs) and asks `_epsilon(runs)` for ε: a plug-in
    wrapping another accountant subclasses it with `NAME`, `_check(event)` and `_epsilon(runs)`."""

    NAME = "events"

    def __init__(self, delta: float) -> None:
        self.delta = float(delta)
        self._runs: list[tuple[Event, int]] = []

    def _check(self, event: Event) -> Event:
        return event

    def _epsilon(self, runs: list[tuple[Event, int]]) -> float:
        raise NotImplementedError

    def _merged(self, event: Event, count: int) -> list[tuple[Event, int]]:
        runs = list(self._runs)
        if runs and runs[-1][0] == event:
            runs[-1] = (event, runs[-1][1] + count)
        else:
            runs.append((event, count))
        return runs

    def compose(self, event: Event, count: int = 1) -> None:
        self._runs = self._merged(self._check(event), int(count))

    def epsilon(self) -> float:
        return self._epsilon([(e, c) for e, c in self._runs if c > 0])

    def epsilon_after(self, event: Event, count: int = 1) -> float:
        return self._epsilon([(e, c) for e, c in self._merged(self._check(event), int(count)) if c > 0])

    def state_dict(self) -> dict[str, Any]:
        from .events import event_to_dict
        return {"accountant": self.NAME, "delta": self.delta,
                "runs": [{**event_to_dict(e), "count": c} for e, c in self._runs]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        from .events import event_from_dict
        if state.get("accountant") != self.NAME or state.get("delta") != self.delta:
            raise ValueError(f"not a {self.NAME} ledger state for delta {self.delta}")
        self._runs = [(self._check(event_from_dict(r)), int(r["count"])) for r in state["runs"]]
