"""How the CLI talks to people and scripts: rich on a terminal, plain lines otherwise, or JSON."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

STATUS_STYLES = {"OK": "green", "WARN": "yellow", "FAIL": "bold red"}


def console(stderr: bool = False) -> Console:
    """A console that colours only a real terminal, so piped output stays plain.

    rich is imported here, not at the top: ``--json`` output (:func:`print_json`) never needs
    it, and a script calling `tether sync --json` should not pay ~50 ms for it on every call."""
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=True)


def print_json(doc: Any) -> None:
    json.dump(doc, sys.stdout, indent=2, sort_keys=False, default=str)
    sys.stdout.write("\n")
    sys.stdout.flush()
