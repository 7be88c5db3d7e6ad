"""What both ends of the control API agree on: how answers are written as JSON and how a
daemon-side :class:`~tether.errors.TetherError` travels to the client and is raised there again
as the same class (the routes are listed in :mod:`.control`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any

from ..errors import (
    EX_CONFIG,
    EX_DATAERR,
    EX_NOPERM,
    EX_UNAVAILABLE,
    EX_USAGE,
    NotFound,
    TetherError,
)

EX_SOFTWARE = 70
HEARTBEAT_S = 5.0
"""How often an idle event stream sends a heartbeat line; clients give up after three missed."""
BASE_URL = "http://tether"
"""The URL the client sends to the socket (the host part is never resolved)."""


def to_json(value: Any) -> Any:
    """``json.dumps(default=...)``: enums, paths, dataclasses, datetimes, sets and tuples."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, PurePath):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def dumps(value: Any) -> str:
    return json.dumps(value, default=to_json)


_HTTP_STATUS = {
    EX_USAGE: 400,
    EX_NOPERM: 403,
    EX_CONFIG: 422,
    EX_DATAERR: 502,
    EX_UNAVAILABLE: 503,
}


def http_status(exc: TetherError) -> int:
    """The HTTP status a TetherError is answered with: 404 for a name not known here, else by its
    exit code (500 when that has no mapping)."""
    if isinstance(exc, NotFound):
        return 404
    return _HTTP_STATUS.get(exc.exit_code, 500)


def error_body(exc: TetherError) -> dict[str, Any]:
    types = [
        f"{cls.__module__}.{cls.__qualname__}"
        for cls in type(exc).__mro__
        if isinstance(cls, type) and issubclass(cls, TetherError)
    ]
    return {
        "error": {
            "message": exc.message,
            "hint": exc.hint,
            "exit_code": exc.exit_code,
            "types": types,
        }
    }


def _known_error_classes() -> dict[str, type[TetherError]]:
    found: dict[str, type[TetherError]] = {}
    todo: list[type[TetherError]] = [TetherError]
    while todo:
        cls = todo.pop()
        found[f"{cls.__module__}.{cls.__qualname__}"] = cls
        todo.extend(cls.__subclasses__())
    return found


def error_from_body(body: Any, status: int) -> TetherError:
    """The TetherError an error answer describes, as the most specific class this process knows."""
    error = body.get("error") if isinstance(body, Mapping) else None
    if not isinstance(error, Mapping):
        return TetherError(
            f"the daemon answered HTTP {status} without an error description",
            "see the daemon's log (`tether logs`)",
            exit_code=EX_SOFTWARE,
        )
    message = str(error.get("message") or f"the daemon answered HTTP {status}")
    hint = str(error.get("hint") or "")
    code = error.get("exit_code")
    exit_code = code if isinstance(code, int) and not isinstance(code, bool) else EX_SOFTWARE
    known = _known_error_classes()
    cls: type[TetherError] = TetherError
    for name in error.get("types") or ():
        if isinstance(name, str) and name in known:
            cls = known[name]
            break
    exc = cls.__new__(cls)  # its own __init__ may take other arguments; the base's fills it
    TetherError.__init__(exc, message, hint, exit_code=exit_code)
    return exc
