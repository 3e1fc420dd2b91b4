"""Registry of subcommands beyond the accountant ones (imported by the CLI).

Each module imported here registers itself with `cli.command`; modules keep
their heavy imports (torch, flwr) inside the command functions.
"""
from . import cli_audit  # noqa: F401
from . import cli_sim  # noqa: F401
from . import cli_mean_estimation  # noqa: F401
from . import cli_data  # noqa: F401
