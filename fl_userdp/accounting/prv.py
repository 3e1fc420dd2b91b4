"""A plug-in ledger: the PRV accountant (Gopi, Lee & Wutschitz 2021, `prv-accountant` on PyPI), ULS only.

    --set privacy.accountant=fl_userdp.accounting.prv:PrvAccountant

It composes Poisson-subsampled Gaussian releases (`UlsRound`) with the
privacy-random-variable method and reports the *upper* end of its error band
(estimate + eps_error), so the ε it gives is an upper bound like the
built-in ones. The ELS mixture event has no PRV in that package: it is
refused (`NotImplementedError`), and the run says so before it starts.
Needs `pip install prv-accountant` (the `prv` extra).
"""
from __future__ import annotations

from typing import Any

from .events import Event, UlsRound, event_from_dict, event_to_dict

EPS_ERROR = 0.01
DELTA_ERROR = 1e-10


class PrvAccountant:
    """The ledger protocol (`fl_userdp.accounting.plugins.Ledger`) over `prv_accountant.PRVAccountant`."""

    def __init__(self, delta: float, eps_error: float = EPS_ERROR) -> None:
        import prv_accountant  # noqa: F401 - fail at construction when the package is missing

        self.delta, self.eps_error = float(delta), float(eps_error)
        self._runs: list[tuple[UlsRound, int]] = []

    @staticmethod
    def _check(event: Event) -> UlsRound:
        if not isinstance(event, UlsRound):
            raise NotImplementedError("the PRV accountant composes ULS (Poisson-subsampled Gaussian) events only; "
                                      "use 'pld' for ELS")
        return event

    def _epsilon(self, runs: list[tuple[UlsRound, int]]) -> float:
        from prv_accountant import PoissonSubsampledGaussianMechanism, PRVAccountant

        runs = [(e, c) for e, c in runs if c > 0]
        if not runs:
            return 0.0
        if any(e.noise_multiplier == 0 for e, _ in runs):
            return float("inf")
        prvs = [PoissonSubsampledGaussianMechanism(sampling_probability=e.sampling_rate,
                                                   noise_multiplier=e.noise_multiplier) for e, _ in runs]
        counts = [c for _, c in runs]
        acc = PRVAccountant(prvs=prvs, max_self_compositions=counts, eps_error=self.eps_error,
                            delta_error=DELTA_ERROR)
        return float(acc.compute_epsilon(delta=self.delta, num_self_compositions=counts)[2])

    def _merged(self, event: UlsRound, count: int) -> list[tuple[UlsRound, int]]:
        runs = list(self._runs)
        if runs and runs[-1][0] == event:
            runs[-1] = (event, runs[-1][1] + count)
        else:
            runs.append((event, count))
        return runs

    # -- the ledger protocol ----------------------------------------------------
    def compose(self, event: Event, count: int = 1) -> None:
        self._runs = self._merged(self._check(event), int(count))

    def epsilon(self) -> float:
        return self._epsilon(self._runs)

    def epsilon_after(self, event: Event, count: int = 1) -> float:
        return self._epsilon(self._merged(self._check(event), int(count)))

    def state_dict(self) -> dict[str, Any]:
        return {"accountant": "prv", "delta": self.delta, "eps_error": self.eps_error,
                "runs": [{**event_to_dict(e), "count": c} for e, c in self._runs]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("accountant") != "prv" or state.get("delta") != self.delta:
            raise ValueError("not a PRV ledger state for this delta")
        self._runs = [(self._check(event_from_dict(r)), int(r["count"])) for r in state["runs"]]
