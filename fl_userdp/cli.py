"""The `fl-userdp` command line.

Subcommands register themselves in `COMMANDS`; heavy ones (simulation,
mean estimation) import their modules lazily so `epsilon` stays fast and
pure. Every bad input exits with status 2 and one line naming the option
and the value. Infinite epsilon prints as `inf`; in JSON it is `null` with
`"epsilon_infinite": true` (`Infinity` is not valid JSON).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any, Callable, Sequence

from .errors import ConfigError

COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int], str]] = {}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        self.exit(2, f"{self.prog}: error: {message}\n")


def command(name: str, help: str, configure: Callable[[argparse.ArgumentParser], None]):
    """Register `fn(args) -> exit status` as subcommand `name`, with `configure(parser)` for its options."""
    def wrap(fn):
        COMMANDS[name] = (configure, fn, help)
        return fn
    return wrap


def json_number(value: float) -> float | None:
    return None if math.isinf(value) or math.isnan(value) else value


def fmt_eps(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:.6g}"


def emit(payload: dict[str, Any], as_json: bool, text: str) -> None:
    if as_json:
        print(json.dumps(payload, sort_keys=True))
    else:
        print(text)


def _privacy_options(p: argparse.ArgumentParser, steps_help: str = "number of releases T") -> None:
    p.add_argument("--mode", required=True, help="uls or els")
    p.add_argument("--sampling-rate", type=float, required=True, metavar="Q")
    p.add_argument("--steps", type=int, required=True, metavar="T", help=steps_help)
    p.add_argument("--delta", type=float, required=True, metavar="D")
    p.add_argument("--max-examples-per-user", type=int, metavar="K",
                   help="per-user cap k (required for els)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


# -- epsilon ----------------------------------------------------------------
def _epsilon_configure(p: argparse.ArgumentParser) -> None:
    _privacy_options(p)
    p.add_argument("--noise-multiplier", type=float, required=True, metavar="S")
    p.add_argument("--accountant", default="pld", help="pld (default), rdp (uls only) or group (els only)")


@command("epsilon", "user-level epsilon of a configuration", _epsilon_configure)
def epsilon_cmd(a: argparse.Namespace) -> int:
    from .accounting import check_backend, check_delta, epsilon_for, make_event

    if a.steps < 0:
        raise ConfigError("--steps", a.steps, "must be >= 0")
    check_delta(a.delta, "--delta")
    event = make_event(a.mode, a.sampling_rate, a.noise_multiplier, a.max_examples_per_user)
    check_backend(a.accountant, a.mode)
    eps = epsilon_for([(event, a.steps)], a.delta, a.accountant)
    payload = {
        "epsilon": json_number(eps), "epsilon_infinite": math.isinf(eps), "delta": a.delta,
        "mode": a.mode, "accountant": a.accountant, "sampling_rate": a.sampling_rate,
        "noise_multiplier": a.noise_multiplier, "steps": a.steps,
        "max_examples_per_user": a.max_examples_per_user,
    }
    emit(payload, a.json, fmt_eps(eps))
    return 0



# -- calibrate ----------------------------------------------------------------
def _calibrate_configure(p: argparse.ArgumentParser) -> None:
    _privacy_options(p)
    p.add_argument("--target-epsilon", type=float, required=True, metavar="E")
    p.add_argument("--accountant", default="pld", help="pld (default), rdp (uls only) or group (els only)")


@command("calibrate", "noise multiplier for a target user-level epsilon", _calibrate_configure)
def calibrate_cmd(a: argparse.Namespace) -> int:
    from .accounting import calibrate_noise, check_backend, check_delta, make_event

    if a.steps < 0:
        raise ConfigError("--steps", a.steps, "must be >= 0")
    check_delta(a.delta, "--delta")
    make_event(a.mode, a.sampling_rate, 1.0, a.max_examples_per_user)
    check_backend(a.accountant, a.mode)
    sigma, eps = calibrate_noise(a.mode, a.target_epsilon, a.delta, a.sampling_rate, a.steps,
                                 a.max_examples_per_user, a.accountant)
    payload = {
        "noise_multiplier": sigma, "epsilon": json_number(eps), "epsilon_infinite": math.isinf(eps),
        "target_epsilon": a.target_epsilon, "delta": a.delta, "mode": a.mode,
        "accountant": a.accountant, "sampling_rate": a.sampling_rate, "steps": a.steps,
        "max_examples_per_user": a.max_examples_per_user,
    }
    emit(payload, a.json, f"{sigma:.6g}")
    return 0



# -- entry point --------------------------------------------------------------
def _load_plugins() -> None:
    """Import modules that register further subcommands (kept lazy where heavy)."""
    from . import commands  # noqa: F401


def build_parser() -> argparse.ArgumentParser:
    _load_plugins()
    parser = _Parser(prog="fl-userdp", description="User-level DP fine-tuning: ULS and ELS on Flower.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, (configure, _, help_) in COMMANDS.items():
        configure(sub.add_parser(name, help=help_, description=help_))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _, run, _ = COMMANDS[args.command]
    try:
        return int(run(args) or 0)
    except ConfigError as err:
        key = err.key if err.key.startswith("--") or "." in err.key else f"--{err.key}"
        print(f"fl-userdp {args.command}: error: {key} {err.requirement}, got {err.value!r}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fl-userdp: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `fl-userdp ... | head`: the reader left; not an error of ours
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
