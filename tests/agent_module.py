"""The remote agent as modules, for tests that call its functions directly.

The agent is never imported by tether itself: the host's bootstrap runs its verified source and
registers each module of its bundle under its bare name (``wire``, ``agent_base``), in load
order, before the next one runs. This does the same, from :data:`BUNDLE` itself.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import PurePosixPath
from types import ModuleType

from tether.transport.agent_boot import BUNDLE


def load_agent(name: str = "agent") -> ModuleType:
    """The agent's module ``name`` (a bundle file's basename), with the whole bundle loaded."""
    modules = {}
    for rel in BUNDLE:
        path = PurePosixPath(rel)
        module = importlib.import_module(".".join(("tether", *path.parent.parts, path.stem)))
        modules[path.stem] = sys.modules.setdefault(path.stem, module)
    return modules[name]
