"""One module per CLI verb. Each exposes ``add_parser(subparsers)`` which registers the verb and
sets ``handler`` (a function ``(args) -> int``) with ``set_defaults``. Modules are discovered, so a
new verb is a new file; keep each handler a thin call into the modules below the CLI.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil


def register_all(subparsers: argparse._SubParsersAction) -> None:
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        module.add_parser(subparsers)
