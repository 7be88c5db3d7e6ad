"""The numbers both ends of the agent's stream must agree on, defined once.

This process (:mod:`tether.transport.agent_client`, the sync engine's transfers) and the agent
on the host (:mod:`tether.agent.agent`) read them from here: the agent's verified bundle ships
this module beside it, so a change here reaches both ends together instead of two copies drifting
apart. Shipped to the host: Python >= 3.8, standard library only (it needs nothing at all).
"""

PROTOCOL_VERSION = 1
"""The hello's version: an agent that answers with another one is refused."""
CHUNK = 1 << 20
"""Files larger than this are written in several pipelined chunks, and read in ranges."""
WINDOW = 8
"""Chunks of one file in flight at once, either way: a transfer holds about WINDOW * CHUNK."""
MAX_FRAME = 256 << 20
"""The largest frame either end accepts (a header or a blob)."""
