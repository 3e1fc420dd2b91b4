"""The Flower ClientApp: one app, a ULS and an ELS training action, evaluation.

`fl_userdp.clients.compute` does the work (no Flower); `fl_userdp.clients.app` translates
messages. A node hosts a shard of users (sim.users-per-node).
"""
