"""Flower's own accountant as a plug-in ledger (ULS only).

    --set privacy.accountant=server.flower_accountant:FlowerRdpAccountant

Flower 1.42's `flwr.supercore.privacy_accounting.RdpAccountant` composes
`GaussianPrivacyEvent(noise_multiplier, sample_size, population_size)` with
Poisson sampling at rate sample_size / population_size. A ULS round at rate
q is expressed exactly enough by population_size = 10⁹ and
sample_size = ⌈q·10⁹⌉ (the rate is rounded *up*, so the ε is never smaller
than at q). ELS's mixture event has no Flower counterpart and is refused.
RDP is looser than our PLD default: the adapter is for comparison with the ε
a stock Flower setup would report.
"""
from __future__ import annotations

import math
from typing import Any

from fl_userdp.accounting.events import Event, UlsRound, event_from_dict, event_to_dict

POPULATION = 10**9


class FlowerRdpAccountant:
    """The ledger protocol (`fl_userdp.accounting.plugins.Ledger`) over Flower's `RdpAccountant`."""

    def __init__(self, delta: float) -> None:
        self.delta = float(delta)
        self._runs: list[tuple[UlsRound, int]] = []

    @staticmethod
    def _check(event: Event) -> UlsRound:
        if not isinstance(event, UlsRound):
            raise NotImplementedError("Flower's accountant has no event for ELS's mixture of Gaussians; use 'pld'")
        return event

    def _epsilon(self, runs: list[tuple[UlsRound, int]]) -> float:
        from flwr.supercore.privacy_accounting import (GaussianPrivacyEvent, NeighboringRelation, PrivacyConfig,
                                                       SamplingMethod)
        from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant

        runs = [(e, c) for e, c in runs if c > 0]
        if not runs:
            return 0.0
        if any(e.noise_multiplier == 0 for e, _ in runs):
            return math.inf
        acc = RdpAccountant(PrivacyConfig(target_delta=self.delta, population_size=POPULATION,
                                          neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
                                          sampling_method=SamplingMethod.POISSON))
        for e, c in runs:
            size = min(POPULATION, max(1, math.ceil(e.sampling_rate * POPULATION)))
            acc.compose(GaussianPrivacyEvent(e.noise_multiplier, size, POPULATION), c)
        return float(acc.get_epsilon(self.delta))

    def _merged(self, event: UlsRound, count: int) -> list[tuple[UlsRound, int]]:
        runs = list(self._runs)
        if runs and runs[-1][0] == event:
            runs[-1] = (event, runs[-1][1] + count)
        else:
            runs.append((event, count))
        return runs

    def compose(self, event: Event, count: int = 1) -> None:
        self._runs = self._merged(self._check(event), int(count))

    def epsilon(self) -> float:
        return self._epsilon(self._runs)

    def epsilon_after(self, event: Event, count: int = 1) -> float:
        return self._epsilon(self._merged(self._check(event), int(count)))

    def state_dict(self) -> dict[str, Any]:
        return {"accountant": "flower-rdp", "delta": self.delta,
                "runs": [{**event_to_dict(e), "count": c} for e, c in self._runs]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("accountant") != "flower-rdp" or state.get("delta") != self.delta:
            raise ValueError("not a Flower RDP ledger state for this delta")
        self._runs = [(self._check(event_from_dict(r)), int(r["count"])) for r in state["runs"]]
