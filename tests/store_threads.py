"""Which threads the sync state database is used on: each :class:`StateStore` method wrapped to
note the thread that called it, its work unchanged. A test runs tether's coroutines with
``asyncio.run`` on its own thread, so a call noted on that thread ran on the event loop."""

from __future__ import annotations

import functools
import inspect
import threading
from typing import Any

import pytest
from tether.sync.state import StateStore


def record_store_threads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Start noting ``(method, thread id)`` for every StateStore call (opening one included)."""
    calls: list[tuple[str, int]] = []
    for name, method in list(vars(StateStore).items()):
        if not inspect.isfunction(method) or (name.startswith("__") and name != "__init__"):
            continue

        @functools.wraps(method)
        def noted(*args: Any, _method: Any = method, _name: str = name, **kwargs: Any) -> Any:
            calls.append((_name, threading.get_ident()))
            return _method(*args, **kwargs)

        monkeypatch.setattr(StateStore, name, noted)
    return calls


def on_this_thread(calls: list[tuple[str, int]]) -> list[str]:
    """The StateStore methods that ran on the calling thread (the test's event loop)."""
    here = threading.get_ident()
    return sorted({name for name, thread in calls if thread == here})
