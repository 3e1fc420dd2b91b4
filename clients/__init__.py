"""The Flower ClientApp: one app, a ULS and an ELS training action, evaluation.

`clients.compute` does the work (no Flower); `clients.app` translates
messages. A node hosts a shard of users (sim.users-per-node).
"""
