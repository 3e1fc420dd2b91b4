"""`fl-userdp audit --run DIR`: what a finished (or interrupted) run's own release logs say about its noise.

Reads `releases-<mode>.log` in the run's folder (`fl_userdp.records.release_log`) and nothing else: each
round's σ, clip norm C_t, expected count E_t and event from its ledger entry, and the released update u_t
where the log still holds it (a checkpoint drops the updates it covers unless the run had
`keep-releases = true`). In units of the claimed noise, v_t = u_t·E_t/(σC_t) = a_t + z_t, a_t the round's
clipped sum (unknown here, fixed before z_t is drawn) and z_t ~ N(0, I) for a correct run. With banded
noise (b > 1) the log's coefficients whiten it first: Σ_j c_j v_{t−j} = (signal) + z_t, for the rounds
whose b − 1 predecessors the log holds.

The tests are `fl_userdp.study.audit.noise_tests` on the released form: one-sided, valid whatever the
signal (a signal can only hide a fault, never fake one), each at its stated α — noise scale (χ² over T·d
values), per-coordinate floor, two coordinates or two rounds carrying one draw. Their power depends on
how large the signal is next to the noise, so each comes with it: the noise factor the scale test finds
whatever the signal within its bound (records ≤ the (1 − 10⁻⁶) quantile of the claimed count, each
≤ C_t), and the probability that one reused pair of coordinates, or one repeated round, would be flagged
at the signal level the updates show. A run whose noise dominates its updates (small cohorts, large d)
is tested sharply; one whose signal dominates is not, and the output says so.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import stats

from ..errors import ConfigError
from ..records.release_log import read_log
from .audit import (ALPHA_FLOOR, ALPHA_PAIRS, ALPHA_ROUND_SCALE, ALPHA_ROUNDS, ALPHA_SCALE, NoiseTests,
                    noise_tests)

BOUND_QUANTILE = 1 - 1e-6   # records per round ≤ this quantile of the claimed count (for the power figure only)


@dataclass(frozen=True)
class RunAudit:
    mode: str
    released: int               # rounds the log records as released
    with_update: int            # ... of which the log still holds the update
    tested: int                 # rounds tested (banded noise: those whose predecessors are held too)
    coords: int
    noise_multiplier: float
    bands: int
    tests: NoiseTests | None    # None: fewer than 2 rounds to test

    @property
    def flagged(self) -> bool:
        return self.tests is not None and self.tests.flagged

    def to_dict(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k != "tests"}
        return {**d, "tests": self.tests.to_dict() if self.tests is not None else None, "flagged": self.flagged}


def _record_bound(entry: dict) -> float:
    """An upper bound on the round's clipped records (in records): the BOUND_QUANTILE quantile of
    Binomial(E/q, q), E the expected count and q the sampling rate of the round's event."""
    q = float(entry.get("event", {}).get("sampling_rate", 1.0))
    expected = float(entry["expected_count"])
    if q >= 1:
        return expected
    return float(stats.binom.ppf(BOUND_QUANTILE, int(round(expected / q)), q))


def audit_log(path: str | Path) -> RunAudit:
    """Test one release log (see the module docstring)."""
    contents = read_log(path)
    if contents.run is None:
        raise ConfigError("--run", str(path), "holds no run entry")
    if contents.corrupt:
        raise ConfigError("--run", str(path), f"is damaged ({contents.damage}); nothing was tested")
    run = contents.run
    sigma = float(run["noise_multiplier"])
    coeffs = np.asarray(run.get("noise_coefficients", [1.0]), np.float64)
    scaled, bounds = {}, {}
    for entry in contents.releases:
        rnd = int(entry["round"])
        update = contents.updates.get(rnd)
        if update is None:
            continue
        std = float(entry.get("noise_multiplier", sigma)) * float(entry["clip_norm"])
        if not std > 0:
            raise ConfigError("--run", str(path), f"round {rnd} was released without noise (σC = {std}); "
                              "there is no noise to test")
        scaled[rnd] = np.asarray(update, np.float64) * float(entry["expected_count"]) / std
        bounds[rnd] = _record_bound(entry) * float(entry["clip_norm"]) / std
    rounds = sorted(scaled)
    if coeffs.size > 1:  # banded noise: z_t = Σ_j c_j w_{t−j} (w_t = 0 before round 1)
        keep = [t for t in rounds if all(t - j < 1 or t - j in scaled for j in range(coeffs.size))]
        v = [sum(c * scaled[t - j] for j, c in enumerate(coeffs) if t - j >= 1) for t in keep]
        b = [sum(abs(c) * bounds[t - j] for j, c in enumerate(coeffs) if t - j >= 1) for t in keep]
    else:
        keep, v, b = rounds, [scaled[t] for t in rounds], [bounds[t] for t in rounds]
    tests = noise_tests(np.array(v), exact=False, bounds=np.array(b)) if len(keep) >= 2 else None
    return RunAudit(str(run.get("mode", "")), len(contents.releases), len(rounds), len(keep),
                    int(run.get("size", 0)), sigma, int(coeffs.size), tests)


def audit_run(out: str | Path) -> list[RunAudit]:
    """Every mode's release log in the run folder `out` (ConfigError naming --run when there is none)."""
    folder = Path(out)
    if not folder.is_dir():
        raise ConfigError("--run", str(out), "is not a folder")
    logs = sorted(folder.glob("releases-*.log"))
    if not logs:
        raise ConfigError("--run", str(out), "holds no release log (releases-<mode>.log)")
    return [audit_log(p) for p in logs]


def describe(res: RunAudit) -> str:
    """The audit of one mode as text: what was tested, each test's verdict with its α, and its power."""
    head = (f"{res.mode}: {res.released} rounds released, {res.with_update} with their update in the log"
            f"{'' if res.bands == 1 else f', banded noise (b = {res.bands}): {res.tested} rounds whitened'}"
            f", d = {res.coords}, sigma {res.noise_multiplier:.4g}")
    t = res.tests
    if t is None:
        return (head + "\n  nothing to test: fewer than 2 rounds hold their update (a checkpoint drops them; run "
                "with --set keep-releases=true to keep them for this audit)")
    lines = [
        head,
        f"  noise scale: {t.scale_ratio:.4f} of the claimed sigma*C/E (the signal adds to it); one-sided chi2 "
        f"over {t.rounds * t.coords} values p {t.scale_p:.3g} (flag below alpha {ALPHA_SCALE:g}); power: noise "
        f"below {t.scale_detects:.3g}x the claimed is flagged with probability >= 0.9 whatever the signal; "
        f"0.95x with probability {t.scale_power_95:.3g} if there were no signal",
        f"  noise scale per round: smallest {t.round_scale_min:.4f} of the claimed; Bonferroni p "
        f"{t.round_scale_p:.3g} (flag below alpha {ALPHA_ROUND_SCALE:g})",
        f"  per-coordinate floor: {t.floor_low} of {t.coords} coordinates below it (a correct run: <= "
        f"{t.floor_allowed} at alpha {ALPHA_FLOOR:g})",
        f"  two coordinates with one noise draw: smallest pair statistic {t.pairs_min:.4g} over "
        f"{t.pairs_coords} coordinates (flag below {t.pairs_threshold:.3g}; Bonferroni p {t.pairs_p:.3g}, alpha "
        f"{ALPHA_PAIRS:g}); power for one such pair at this signal (energy {t.signal_energy:.3g} of the noise's "
        f"per coordinate): {t.pairs_power:.3g}; for half the coordinates reusing the other half's draws: "
        f"{t.pairs_power_half:.3g}",
        f"  two rounds with one noise draw: smallest round statistic {t.rounds_min:.5g} (Bonferroni p "
        f"{t.rounds_p:.3g}, alpha {ALPHA_ROUNDS:g}); power for one repeated round at this signal: "
        f"{t.rounds_power:.3g}",
    ]
    return "\n".join(lines)


__all__ = ["RunAudit", "audit_log", "audit_run", "describe"]
