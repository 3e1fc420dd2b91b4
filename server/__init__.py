"""The Flower ServerApp and the user-level DP strategy.

`fl_userdp.server.strategy` holds the round logic and runs without the Flower engine
(it talks to nodes through a `Transport` callable); `fl_userdp.server.app` wires it to
Flower's Grid; `fl_userdp.server.simulate` is the `run_simulation` driver the CLI uses.
"""
import os as _os

# Ray's future default: leave accelerator env vars alone for actors without GPUs (our ClientApp actors).
# Set here too because `flwr run .` starts Ray in a process that imports this package, not our CLI.
_os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
