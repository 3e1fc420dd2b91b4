"""A plug-in ledger: the PRV accountant (Gopi, Lee & Wutschitz 2021, `prv-accountant` on PyPI), ULS only.

    --set privacy.accountant=fl_userdp.accounting.prv:PrvAccountant

It composes Poisson-subsampled Gaussian releases (`UlsRound`) with the
privacy-random-variable method and reports the *upper* end of its error band
(estimate + eps_error), so the ε it gives is an upper bound like the
built-in ones. The ELS mixture event has no PRV in that package: it is
refused (`NotImplementedError`), and the run says so before it starts.
Needs `pip install prv-accountant` (or the extra, `pip install 'fl-userdp[prv]'`):
without it the run is refused before it starts, with that advice in one line.
"""
from __future__ import annotations

from .events import Event, UlsRound
from .plugins import EventLedger

EPS_ERROR = 0.01
DELTA_ERROR = 1e-10
INSTALL = ("needs the prv-accountant package, which is not installed: pip install prv-accountant "
           "(or pip install 'fl-userdp[prv]')")


class PrvAccountant(EventLedger):
    """The ledger protocol (`fl_userdp.accounting.plugins.Ledger`) over `prv_accountant.PRVAccountant`."""

    NAME = "prv"

    def __init__(self, delta: float, eps_error: float = EPS_ERROR) -> None:
        try:
            import prv_accountant  # noqa: F401 - fail at construction when the package is missing
        except ImportError:
            raise ImportError(f"the PRV accountant {INSTALL}") from None

        super().__init__(delta)
        self.eps_error = float(eps_error)

    def _check(self, event: Event) -> UlsRound:
        if not isinstance(event, UlsRound):
            raise NotImplementedError("the PRV accountant composes ULS (Poisson-subsampled Gaussian) events only; "
                                      "use 'pld' for ELS")
        return event

    def _epsilon(self, runs: list[tuple[UlsRound, int]]) -> float:
        from prv_accountant import PoissonSubsampledGaussianMechanism, PRVAccountant

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
