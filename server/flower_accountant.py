"""Flower's own accountant as a plug-in ledger (ULS only).

    --set privacy.accountant=fl_userdp.server.flower_accountant:FlowerRdpAccountant

Flower 1.42's `flwr.supercore.privacy_accounting.RdpAccountant` composes
`GaussianPrivacyEvent(noise_multiplier, sample_size, population_size)` with
Poisson sampling at rate sample_size / population_size. A ULS round at rate
q is expressed exactly enough by population_size = 10⁹ and
sample_size = ⌈q·10⁹⌉ (the rate is rounded *up*, so the ε is never smaller
than at q). ELS's mixture event has no Flower counterpart and is refused.
RDP is looser than our PLD default: the adapter is for comparison with the ε
a stock Flower setup would report.

The RDP computation underneath (dp_accounting) logs an absl warning for every
order whose series does not converge (it leaves that order out, and the ε
stays an upper bound): dozens per call during calibration. They are silenced
around the call (`fl_userdp.accounting.rdp.quiet_absl`: the "absl" logger raised to ERROR), nowhere else.
"""
from __future__ import annotations

import math

from fl_userdp.accounting.events import Event, UlsRound
from fl_userdp.accounting.plugins import EventLedger
from fl_userdp.accounting.rdp import quiet_absl

POPULATION = 10**9


class FlowerRdpAccountant(EventLedger):
    """The ledger protocol (`fl_userdp.accounting.plugins.Ledger`) over Flower's `RdpAccountant`."""

    NAME = "flower-rdp"

    def _check(self, event: Event) -> UlsRound:
        if not isinstance(event, UlsRound):
            raise NotImplementedError("Flower's accountant has no event for ELS's mixture of Gaussians; use 'pld'")
        return event

    def _epsilon(self, runs: list[tuple[UlsRound, int]]) -> float:
        from flwr.supercore.privacy_accounting import (GaussianPrivacyEvent, NeighboringRelation, PrivacyConfig,
                                                       SamplingMethod)
        from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant

        if not runs:
            return 0.0
        if any(e.noise_multiplier == 0 for e, _ in runs):
            return math.inf
        acc = RdpAccountant(PrivacyConfig(target_delta=self.delta, population_size=POPULATION,
                                          neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
                                          sampling_method=SamplingMethod.POISSON))
        with quiet_absl():
            for e, c in runs:
                size = min(POPULATION, max(1, math.ceil(e.sampling_rate * POPULATION)))
                acc.compose(GaussianPrivacyEvent(e.noise_multiplier, size, POPULATION), c)
            return float(acc.get_epsilon(self.delta))
