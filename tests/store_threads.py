"""Which threads tether's SQLite work runs on: each method of a store (:class:`StateStore`, and
for runs :class:`RunHistory` and :class:`ResultsStore`), or any chosen function, wrapped to note
the thread that called it, its work unchanged. A test runs tether's coroutines with
``asyncio.run`` on its own thread, so a call noted on that thread ran on the event loop."""

from __future__ import annotations

import functools
import inspect
import threading
from typing import Any

import pytest
from tether.results.store import ResultsStore
from tether.runs.history import RunHistory
from tether.sync.state import StateStore

Calls = list[tuple[str, int]]


def record_threads(
    monkeypatch: pytest.MonkeyPatch, owner: Any, names: list[str], calls: Calls, prefix: str = ""
) -> Calls:
    """Note ``(prefix + name, thread id)`` in ``calls`` whenever ``owner.<name>`` is called."""
    for name in names:
        function = getattr(owner, name)

        @functools.wraps(function)
        def noted(
            *args: Any, _function: Any = function, _name: str = prefix + name, **kw: Any
        ) -> Any:
            calls.append((_name, threading.get_ident()))
            return _function(*args, **kw)

        monkeypatch.setattr(owner, name, noted)
    return calls


def _methods(store: type) -> list[str]:
    """A store's own methods, opening it (``__init__``) included."""
    return [
        name
        for name, method in vars(store).items()
        if inspect.isfunction(method) and (not name.startswith("__") or name == "__init__")
    ]


def record_store_threads(monkeypatch: pytest.MonkeyPatch) -> Calls:
    """Note every StateStore call (opening one included), by its method's name."""
    return record_threads(monkeypatch, StateStore, _methods(StateStore), [])


def record_run_store_threads(monkeypatch: pytest.MonkeyPatch) -> Calls:
    """Note every call of the stores a run writes, RunHistory and ResultsStore (opening one
    included), as ``Class.method``."""
    calls: Calls = []
    for store in (RunHistory, ResultsStore):
        record_threads(monkeypatch, store, _methods(store), calls, prefix=f"{store.__name__}.")
    return calls


def on_this_thread(calls: Calls) -> list[str]:
    """The functions noted on the calling thread (the test's event loop)."""
    here = threading.get_ident()
    return sorted({name for name, thread in calls if thread == here})
