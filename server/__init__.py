"""The Flower ServerApp and the user-level DP strategy.

`server.strategy` holds the round logic and runs without the Flower engine
(it talks to nodes through a `Transport` callable); `server.app` wires it to
Flower's Grid; `server.simulate` is the `run_simulation` driver the CLI uses.
"""
