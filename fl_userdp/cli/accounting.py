"""`fl-userdp epsilon` and `fl-userdp calibrate`: the accountant on the command line (pure, fast)."""
from __future__ import annotations

import argparse
import math

from ..errors import ConfigError
from .common import emit, fmt_eps, json_number


def _privacy_options(p: argparse.ArgumentParser, steps_help: str = "number of releases T") -> None:
    p.add_argument("--mode", required=True, help="uls or els")
    p.add_argument("--sampling-rate", type=float, required=True, metavar="Q")
    p.add_argument("--steps", type=int, required=True, metavar="T", help=steps_help)
    p.add_argument("--delta", type=float, required=True, metavar="D")
    p.add_argument("--max-examples-per-user", type=int, metavar="K",
                   help="per-user cap k (required for els)")
    p.add_argument("--bands", type=int, default=1, metavar="B",
                   help="banded correlated noise (privacy.mechanism bandmf) over B cyclic groups: T releases are "
                        "ceil(T/B) participations of the round's event (default 1: independent noise); with "
                        "--sampling-rate 1, the deterministic variant (every user of the group)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _bands(a: argparse.Namespace) -> dict:
    """Validates --bands; the payload's "bands" entry (only when > 1, so the independent payload is unchanged)."""
    if a.bands < 1:
        raise ConfigError("--bands", a.bands, "must be >= 1")
    return {"bands": a.bands} if a.bands > 1 else {}


# -- epsilon ----------------------------------------------------------------
def configure_epsilon(p: argparse.ArgumentParser) -> None:
    _privacy_options(p)
    p.add_argument("--noise-multiplier", type=float, required=True, metavar="S")
    p.add_argument("--accountant", default="pld", help="pld (default), rdp (uls only) or group (els only)")


def epsilon_cmd(a: argparse.Namespace) -> int:
    from ..accounting import check_backend, check_delta, check_steps, epsilon_for, make_event

    check_steps(a.steps, "--steps")
    check_delta(a.delta, "--delta")
    bands = _bands(a)
    event = make_event(a.mode, a.sampling_rate, a.noise_multiplier, a.max_examples_per_user, a.bands)
    check_backend(a.accountant, a.mode)
    eps = epsilon_for([(event, a.steps)], a.delta, a.accountant)
    payload = {
        "epsilon": json_number(eps), "epsilon_infinite": math.isinf(eps), "delta": a.delta,
        "mode": a.mode, "accountant": a.accountant, "sampling_rate": a.sampling_rate,
        "noise_multiplier": a.noise_multiplier, "steps": a.steps,
        "max_examples_per_user": a.max_examples_per_user, **bands,
    }
    emit(payload, a.json, fmt_eps(eps))
    return 0


# -- calibrate ----------------------------------------------------------------
def configure_calibrate(p: argparse.ArgumentParser) -> None:
    _privacy_options(p)
    p.add_argument("--target-epsilon", type=float, required=True, metavar="E")
    p.add_argument("--accountant", default="pld", help="pld (default), rdp (uls only) or group (els only)")


def calibrate_cmd(a: argparse.Namespace) -> int:
    from ..accounting import calibrate_noise, check_backend, check_delta, check_steps, make_event

    check_steps(a.steps, "--steps")
    check_delta(a.delta, "--delta")
    bands = _bands(a)
    make_event(a.mode, a.sampling_rate, 1.0, a.max_examples_per_user, a.bands)
    check_backend(a.accountant, a.mode)
    sigma, eps = calibrate_noise(a.mode, a.target_epsilon, a.delta, a.sampling_rate, a.steps,
                                 a.max_examples_per_user, a.accountant, bands=a.bands)
    payload = {
        "noise_multiplier": sigma, "epsilon": json_number(eps), "epsilon_infinite": math.isinf(eps),
        "target_epsilon": a.target_epsilon, "delta": a.delta, "mode": a.mode,
        "accountant": a.accountant, "sampling_rate": a.sampling_rate, "steps": a.steps,
        "max_examples_per_user": a.max_examples_per_user, **bands,
    }
    emit(payload, a.json, f"{sigma:.6g}")
    return 0
