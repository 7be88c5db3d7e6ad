"""Report folders a tool leaves on the host (TT-NN's memory and performance reports, an
autotune cache): listed in one round trip, pulled one folder at a time through the sync engine.

A feature of its own rather than part of ``runs`` or ``sync``: it uses the agent (transport), the
engine (sync), is called after runs (runs) and watched by the daemon (service). :mod:`.model` is
the pure part (status, what changed, when a report has settled); :mod:`.fetch` does the I/O.
"""
