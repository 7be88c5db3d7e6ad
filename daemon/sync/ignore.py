"""Which paths a pair does not sync: gitignore syntax from three places, one callable.

Rules come, in order, from :data:`tether.config.DEFAULT_IGNORES`, every ``.gitignore`` under the
local root (a nested one is anchored to its own folder) and the pair's ``ignore = [...]``; the last
rule that matches a path decides (so ``!keep.log`` re-includes). A directory is tested as
``"path/"`` and, when ignored, pruned with everything below it, as git does. Each rule compiles to
one regular expression (pathspec's translation), so the same list goes over the wire to the remote
agent as ``[(regex, ignored), ...]`` and both sides decide identically.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

try:  # pathspec >= 1.0
    from pathspec.patterns.gitignore.spec import GitIgnoreSpecPattern as _Pattern
except ImportError:  # pragma: no cover - older pathspec
    from pathspec.patterns.gitwildmatch import GitWildMatchPattern as _Pattern

from ..config import DEFAULT_IGNORES

GITIGNORE = ".gitignore"


def rule_regex(pattern: str, folder: str = "") -> tuple[str, bool] | None:
    """One gitignore line → ``(regex over root-relative paths, ignored?)``; None for no rule.

    ``folder`` anchors a nested ``.gitignore``'s rules to the folder holding it.
    """
    regex, include = _Pattern.pattern_to_regex(pattern.rstrip("\r"))
    if regex is None or include is None:
        return None
    if folder:
        assert regex.startswith("^")
        regex = "^" + re.escape(folder + "/") + regex[1:]
    return regex, bool(include)


class IgnoreRules:
    """``rules(path, is_dir) -> True`` when ``path`` (root-relative, POSIX) is not synced."""

    __slots__ = ("_compiled", "_origins", "_wire")

    def __init__(
        self,
        *,
        defaults: Iterable[str] = DEFAULT_IGNORES,
        extra: Iterable[str] = (),
        gitignores: Iterable[tuple[str, str]] = (),
    ) -> None:
        """Args:
        defaults: tether's own default patterns.
        extra: the pair's ``ignore`` list (applied last, so it wins).
        gitignores: ``(folder, text)`` of each ``.gitignore`` found ("" for the root's).
        """
        self._wire: list[tuple[str, bool]] = []
        self._origins: list[str] = []
        self._compiled: list[tuple[re.Pattern[str], bool]] = []
        self._extend(defaults, "", "defaults")
        for folder, text in sorted(gitignores, key=lambda g: (g[0].count("/"), g[0])):
            self._extend(text.splitlines(), folder, f"{folder or '.'}/{GITIGNORE}")
        self._extend(extra, "", "pair ignore")

    def _extend(self, lines: Iterable[str], folder: str, origin: str) -> None:
        for line in lines:
            rule = rule_regex(line, folder)
            if rule is not None:
                self._wire.append(rule)
                self._origins.append(f"{origin}: {line.strip()}")
                self._compiled.append((re.compile(rule[0]), rule[1]))

    def with_gitignore(self, folder: str, text: str) -> IgnoreRules:
        """A copy with one more ``.gitignore`` (found while scanning ``folder``)."""
        clone = IgnoreRules.__new__(IgnoreRules)
        clone._wire = list(self._wire)
        clone._origins = list(self._origins)
        clone._compiled = list(self._compiled)
        # Keep the pair's rules last: insert the new ones before the first "pair ignore" rule.
        at = next((i for i, o in enumerate(self._origins) if o.startswith("pair ignore")), None)
        added = IgnoreRules(defaults=(), gitignores=[(folder, text)])
        at = len(clone._wire) if at is None else at
        clone._wire[at:at] = added._wire
        clone._origins[at:at] = added._origins
        clone._compiled[at:at] = added._compiled
        return clone

    def __call__(self, path: str, is_dir: bool = False) -> bool:
        subject = path + "/" if is_dir else path
        ignored = False
        for regex, verdict in self._compiled:
            if verdict != ignored and regex.match(subject):
                ignored = verdict
        return ignored

    def to_wire(self) -> list[tuple[str, bool]]:
        """The rules as the remote agent takes them: ``[(regex, ignored)]``, last match wins."""
        return list(self._wire)

    @property
    def rules(self) -> Sequence[str]:
        """Where each rule came from, in order (for ``tether status --json``)."""
        return list(self._origins)

    def __repr__(self) -> str:
        return f"IgnoreRules({len(self._wire)} rules: {'; '.join(self._origins)})"
