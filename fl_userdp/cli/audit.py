"""`fl-userdp audit`: empirical privacy from canary users, next to the accountant's ε.

Default: the mechanism-level audit (`fl_userdp.study.audit`: its own sampling and
release; checks noise and accountant). `--pipeline`: canary users through
the real round loop (`fl_userdp.server.audit`: strategy, node code, validation, noise,
ledger), which also catches bugs in sampling, clipping and validation. `--run DIR`: the noise of an
existing run, from its own release logs (`fl_userdp.study.run_audit`).
Exit status 3 when the audit flags the run.
"""
from __future__ import annotations

import argparse

from .common import emit, fmt_eps

MECHANISM_DEFAULTS = dict(canaries=2000, dim=4000, rounds=50, sampling_rate=0.5, target_epsilon=1.5)


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pipeline", action="store_true",
                   help="audit the real pipeline (strategy + linear-task nodes) instead of the mechanism alone")
    p.add_argument("--run", metavar="DIR",
                   help="test the noise of an existing run from its release logs (scale, floor, reuse; each "
                        "test's alpha and power printed); keep the updates with --set keep-releases=true")
    p.add_argument("--mode", default="uls", help="uls or els")
    p.add_argument("--canaries", type=int, help="number of canary users (2000; --pipeline: 1000)")
    p.add_argument("--dim", type=int, help="dimension of the canary directions (4000; --pipeline: 2000)")
    p.add_argument("--rounds", type=int, help="releases (50; --pipeline: 30)")
    p.add_argument("--sampling-rate", type=float, help="q (0.5; --pipeline: 0.25)")
    p.add_argument("--noise-multiplier", type=float, help="σ (default: calibrated to --target-epsilon)")
    p.add_argument("--target-epsilon", type=float, help="(1.5; --pipeline: 2)")
    p.add_argument("--max-examples-per-user", type=int, default=4)
    p.add_argument("--delta", type=float, default=1e-6)
    p.add_argument("--confidence", type=float, help="of the lower bound (and of the estimate's ratio) "
                   "(0.95; --pipeline: 0.999, see fl_userdp.server.audit)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--base-users", type=int, default=100, help="--pipeline: ordinary users next to the canaries")
    p.add_argument("--noise-scale", type=float, default=1.0,
                   help="fault injection (mechanism audit): multiply the noise actually added (not the accounted σ)")
    p.add_argument("--inject-fault", default="none",
                   choices=["none", "noise", "noise-95", "noise-90", "clip", "sampling", "partial-noise",
                            "partial-noise-25", "count-division", "reused-noise"],
                   help="fault injection (--pipeline), to test the auditor: noise σ/4, 0.95σ, 0.9σ, nodes clip at "
                        "4C, sampling at 2q, noise withheld from 5%% / 25%% of the coordinates, the release divided "
                        "by the realised count, one noise draw added to two coordinates — each while the ledger "
                        "is told the correct value")
    p.add_argument("--json", action="store_true")


def _given(a: argparse.Namespace, names: tuple[str, ...]) -> dict:
    return {n: getattr(a, n) for n in names if getattr(a, n) is not None}


def audit_cmd(a: argparse.Namespace) -> int:
    if a.run is not None:
        return _run(a)
    if a.pipeline:
        return _pipeline(a)
    from ..study.audit import AuditConfig, run_audit

    opts = {**MECHANISM_DEFAULTS, **_given(a, ("canaries", "dim", "rounds", "sampling_rate", "target_epsilon"))}
    cfg = AuditConfig(mode=a.mode, noise_multiplier=a.noise_multiplier, max_examples_per_user=a.max_examples_per_user,
                      delta=a.delta, confidence=0.95 if a.confidence is None else a.confidence, seed=a.seed,
                      noise_scale=a.noise_scale, **opts)
    res = run_audit(cfg)
    verdict = ("FLAGGED: the empirical lower bound exceeds the reported epsilon" if res.flagged
               else "consistent: the lower bound does not exceed the reported epsilon")
    text = (f"reported epsilon {fmt_eps(res.epsilon_reported)} (delta {res.delta:g}, sigma {res.noise_multiplier:.4g})\n"
            f"empirical lower bound {res.epsilon_lower_bound:.4g} at {100 * res.confidence:g}% confidence "
            f"({res.correct}/{res.guesses} guesses correct, {res.canaries} canaries)\n{verdict}")
    emit(res.to_dict(), a.json, text)
    return 3 if res.flagged else 0


def _pipeline(a: argparse.Namespace) -> int:
    from fl_userdp.server.audit import PipelineAuditConfig, run_pipeline_audit

    from ..errors import ConfigError

    if a.noise_multiplier is not None:
        raise ConfigError("--noise-multiplier", a.noise_multiplier, "is calibrated from --target-epsilon with "
                          "--pipeline (as a run does)")
    cfg = PipelineAuditConfig(mode=a.mode, max_examples_per_user=a.max_examples_per_user, delta=a.delta,
                              seed=a.seed, base_users=a.base_users, fault=a.inject_fault,
                              **_given(a, ("canaries", "dim", "rounds", "sampling_rate", "target_epsilon",
                                           "confidence")))
    res = run_pipeline_audit(cfg)
    nc, nt = res.noise_check, res.noise_tests
    verdict = ("FLAGGED: the run leaks more than its ledger says" if res.flagged
               else "consistent: neither the lower bound nor the estimate exceeds the reported epsilon, and the "
               "released noise matches the claimed (scale, floor, no draw used twice)")
    text = (f"pipeline audit ({res.mode}{', injected fault: ' + res.fault if res.fault != 'none' else ''}): "
            f"reported epsilon {fmt_eps(res.epsilon_reported)} (delta {res.delta:g}, sigma {res.noise_multiplier:.4g})\n"
            f"empirical lower bound {res.epsilon_lower_bound:.4g} at {100 * res.confidence:g}% confidence "
            f"({res.correct}/{res.guesses} guesses correct, {res.canaries} canaries, {res.included} included)\n"
            f"estimate {res.epsilon_estimate:.4g} (canary SNR {res.snr_ratio:.3g}x the claimed, "
            f"lower bound {res.snr_ratio_lower:.3g}x)\n"
            f"noise check: {nc['coords_low']} coordinates below the noise floor (a correct run: <= {nc['coords_allowed']}), "
            f"round scales chi2 {nc['scale_chi2']:.1f} (p {nc['scale_p']:.2g}), mean scale {nc['mean_scale']:.3f} "
            f"of the claimed\n"
            f"noise itself (release x E - the exact sum, {nt['rounds']} x {nt['coords']} values): scale "
            f"{nt['scale_ratio']:.4f} of the claimed (one-sided chi2 p {nt['scale_p']:.2g}, alpha "
            f"{nt['alpha']['scale']:g}; power at 0.95x: {nt['scale_power_95']:.3g}), smallest coordinate-pair "
            f"statistic {nt['pairs_min']:.3g} (flag below {nt['pairs_threshold']:.3g}, alpha {nt['alpha']['pairs']:g}),"
            f" round-pair p {nt['rounds_p']:.2g} (alpha {nt['alpha']['rounds']:g})"
            f"{''.join(chr(10) + '  ' + f for f in nt['failures'])}\n{verdict}")
    emit(res.to_dict(), a.json, text)
    return 3 if res.flagged else 0


def _run(a: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from ..study.run_audit import audit_run, describe

    if a.pipeline:
        raise ConfigError("--run", a.run, "audits an existing run; it does not go with --pipeline")
    results = audit_run(a.run)
    flagged = [r for r in results if r.flagged]
    failures = [f"{r.mode}: {f}" for r in flagged for f in r.tests.failures]
    verdict = ("FLAGGED: " + "; ".join(failures)) if failures else \
        "consistent: no test finds less noise than claimed or a noise draw used twice (see each test's power)"
    text = "\n".join([f"audit of run {a.run} (its release logs only)", *map(describe, results), verdict])
    emit({"run": str(a.run), "modes": [r.to_dict() for r in results], "flagged": bool(flagged)}, a.json, text)
    return 3 if flagged else 0
