"""The remote agent as a module, for tests that call its functions directly.

The agent is never imported by tether itself: the host's bootstrap runs its verified source and
registers its sibling modules under their bare names (``tempnames``, ``wire``) first. This does
the same.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType


def load_agent() -> ModuleType:
    from tether.sync import blocks, sparse, tempnames, wire

    sys.modules.setdefault("blocks", blocks)
    sys.modules.setdefault("sparse", sparse)
    sys.modules.setdefault("tempnames", tempnames)
    sys.modules.setdefault("wire", wire)
    return importlib.import_module("tether.agent.agent")
