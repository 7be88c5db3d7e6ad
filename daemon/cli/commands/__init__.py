"""One module per CLI verb. Each exposes ``add_parser(subparsers)`` which registers the verb and
sets ``handler`` (a function ``(args) -> int``) with ``set_defaults``. Modules are discovered, so a
new verb is a new file; keep each handler a thin call into the modules below the CLI.

Modules are imported lazily: a verb's module is found by the literal name in its
``subparsers.add_parser("verb", ...)`` call and imported only when that verb is parsed, so
``tether sync`` does not pay for every other verb's imports (aiohttp, asyncssh, numpy...). A verb
no module names literally, ``tether --help`` and a mistyped verb import them all, as before.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import re
from pathlib import Path
from typing import Any

_LITERAL_VERB = re.compile(r"subparsers\.add_parser\(\s*\"([^\"]+)\"")


class _Verbs(dict):  # type: ignore[type-arg]
    """The subparsers' name → parser map; asking whether it holds a verb loads that verb."""

    action: _LazySubParsers

    def __contains__(self, verb: object) -> bool:
        if not dict.__contains__(self, verb) and not self.action._loading:
            self.action._load_verb(verb)
        return dict.__contains__(self, verb)


class _LazySubParsers(argparse._SubParsersAction):  # type: ignore[type-arg]
    """The CLI's subparsers action, loading command modules on demand."""

    _pending: dict[str, set[str]]
    _loading = False
    """True while a module registers its verbs (argparse's own duplicate check asks then)."""

    def _load(self, module: str) -> None:
        if self._pending.pop(module, None) is not None:
            self._loading = True
            try:
                importlib.import_module(f"{__name__}.{module}").add_parser(self)
            finally:
                self._loading = False

    def _load_all(self) -> None:
        for module in sorted(self._pending):
            self._load(module)

    def _load_verb(self, verb: object) -> None:
        for module in [m for m, verbs in self._pending.items() if verb in verbs]:
            self._load(module)
        if not dict.__contains__(self._name_parser_map, verb):
            self._load_all()  # named by no literal (or a typo): load everything

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        if values:
            values[0] in self._name_parser_map  # noqa: B015 - loads the verb's module
        super().__call__(parser, namespace, values, option_string)

    def _get_subactions(self) -> list[argparse.Action]:  # help lists every verb
        self._load_all()
        return super()._get_subactions()


def register_all(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    pending: dict[str, set[str]] = {}
    for info in pkgutil.iter_modules(__path__):
        try:
            source = (Path(__path__[0]) / f"{info.name}.py").read_text(encoding="utf-8")
        except OSError:
            source = ""
        pending[info.name] = set(_LITERAL_VERB.findall(source))
    verbs = _Verbs(subparsers._name_parser_map)
    subparsers.__class__ = _LazySubParsers
    subparsers._pending = pending  # type: ignore[attr-defined]
    verbs.action = subparsers  # type: ignore[assignment]
    subparsers._name_parser_map = subparsers.choices = verbs
