"""Where the link state announces stored messages: shared by the engine's dispatch loop
(`fl_userdp.server.simulate.wake_on_stores`) and the server's reply collection (`fl_userdp.server.app`)."""

STORE_EVENTS = "_fl_userdp_store_events"   # the attribute on Flower's link state holding the store events
WAKE_FALLBACK_S = 0.1                       # where stores are announced: a pass at least this often anyway (Flower's own interval)
