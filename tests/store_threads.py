"""Which threads the sync's heavy work runs on: each :class:`StateStore` method (or any chosen
function) wrapped to note the thread that called it, its work unchanged. A test runs tether's
coroutines with ``asyncio.run`` on its own thread, so a call noted on that thread ran on the
event loop."""

from __future__ import annotations

import functools
import inspect
import threading
from typing import Any

import pytest
from tether.sync.state import StateStore

Calls = list[tuple[str, int]]


def record_threads(
    monkeypatch: pytest.MonkeyPatch, owner: Any, names: list[str], calls: Calls
) -> Calls:
    """Note ``(name, thread id)`` in ``calls`` whenever ``owner.<name>`` is called."""
    for name in names:
        function = getattr(owner, name)

        @functools.wraps(function)
        def noted(*args: Any, _function: Any = function, _name: str = name, **kw: Any) -> Any:
            calls.append((_name, threading.get_ident()))
            return _function(*args, **kw)

        monkeypatch.setattr(owner, name, noted)
    return calls


def record_store_threads(monkeypatch: pytest.MonkeyPatch) -> Calls:
    """Note every StateStore call (opening one included)."""
    methods = [
        name
        for name, method in vars(StateStore).items()
        if inspect.isfunction(method) and (not name.startswith("__") or name == "__init__")
    ]
    return record_threads(monkeypatch, StateStore, methods, [])


def on_this_thread(calls: Calls) -> list[str]:
    """The functions noted on the calling thread (the test's event loop)."""
    here = threading.get_ident()
    return sorted({name for name, thread in calls if thread == here})
