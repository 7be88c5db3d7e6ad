"""The numbers both ends of the agent's stream must agree on, defined once.

This process (:mod:`tether.transport.agent_client`, the sync engine's transfers) and the agent
on the host (the modules in `daemon/agent/`) read them from here: the agent's verified bundle ships
this module beside it, so a change here reaches both ends together instead of two copies drifting
apart. So are the rules every host-side scanner applies the same way (ignore rules as sent,
names no side can hold). Shipped to the host: Python >= 3.8, standard library only.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

PROTOCOL_VERSION = 1
"""The hello's version: an agent that answers with another one is refused."""
CHUNK = 1 << 20
"""Files larger than this are written in several pipelined chunks, and read in ranges."""
WINDOW = 8
"""Chunks of one file in flight at once, either way: a transfer holds about WINDOW * CHUNK."""
MAX_FRAME = 256 << 20
"""The largest frame either end accepts (a header or a blob)."""

FOREIGN_REASON = "a backslash in its name (a separator on Windows and to tether's path rules)"
"""Why a name is listed but never synced (:func:`foreign_name`)."""


def foreign_name(name: str) -> str | None:
    """Why one side of a pair could not hold a file of this name, or None when both can.

    A backslash is a separator on Windows and to tether's path rules, so every scanner (this
    machine's, the agent's, the SFTP fallback's) reports such a name (an untracked entry)
    instead of syncing it."""
    return FOREIGN_REASON if "\\" in name else None


class WireRules:
    """Ignore rules as they travel to the host, ``[(regex, ignored), ...]``, matched the way
    every host-side scanner (the agent's, the SFTP fallback's) must match them: a folder is
    tested as ``path/``, and the last rule that matches wins. ``ValueError`` on a malformed
    rule, so each scanner reports it in its own terms."""

    def __init__(self, rules: Iterable[object] | None) -> None:
        self.rules: list[tuple[re.Pattern[str], bool]] = []
        for rule in rules or ():
            if (
                not isinstance(rule, (list, tuple))
                or len(rule) != 2
                or not isinstance(rule[0], str)
            ):
                raise ValueError("ignore rules are [regex, bool] pairs")
            try:
                self.rules.append((re.compile(rule[0]), bool(rule[1])))
            except re.error as exc:
                raise ValueError("bad ignore regex %r: %s" % (rule[0], exc)) from None
        self.rules.reverse()

    def __call__(self, rel: str, is_dir: bool) -> bool:
        if not self.rules:
            return False
        text = rel + "/" if is_dir else rel
        for regex, ignored in self.rules:
            if regex.match(text):
                return ignored
        return False
