"""Symlinks judged by where their whole chain resolves inside the tree, not by their text.

Each link of ``x/y/u -> ../..`` and ``esc -> x/y/u/../../.ssh`` looks harmless alone; together
they leave the root. :func:`resolve` follows a chain over a snapshot as the kernel (and
``os.path.realpath``) would: a link's target replaces it, ``..`` after a link climbs from where
the link led, a missing component is taken as written. :func:`refuse_escaping_links` applies it
to a plan on the tree each side will hold once the plan has run, and drops (as problems) the
link creations that would leave a chain escaping there. Pure: no filesystem access.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, replace

from .entry import Entry, EntryKind
from .paths import is_escaping_link, is_within
from .reconcile import Action, ActionKind, Plan, Problem, Side

MAX_LINKS = 40
"""Links followed for one path before it counts as a loop (Linux's own limit)."""


@dataclass(frozen=True, slots=True)
class Resolution:
    """Where a path leads: ``path`` inside the root ("" is the root), or ``escapes``/``loop``."""

    path: str = ""
    escapes: bool = False
    loop: bool = False
    links: tuple[str, ...] = ()
    """The links followed on the way, in order."""

    @property
    def inside(self) -> bool:
        return not (self.escapes or self.loop)


def resolve(tree: Mapping[str, Entry], path: str, *, max_links: int = MAX_LINKS) -> Resolution:
    """Follow ``path`` (relative to the root) through the links of ``tree``, to its end."""
    todo = deque(path.split("/"))
    done: list[str] = []
    links: list[str] = []
    while todo:
        part = todo.popleft()
        if part in ("", "."):
            continue
        if part == "..":
            if not done:
                return Resolution(escapes=True, links=tuple(links))
            done.pop()
            continue
        here = "/".join([*done, part])
        entry = tree.get(here)
        if (
            entry is not None
            and entry.kind is EntryKind.UNTRACKED
            and is_escaping_link(entry.problem)
        ):
            return Resolution(escapes=True, links=(*links, here))  # the user's own, not synced
        if entry is None or entry.kind is not EntryKind.SYMLINK:
            done.append(part)
            continue
        links.append(here)
        if len(links) > max_links:
            return Resolution(loop=True, links=tuple(links))
        if not entry.target or entry.target.startswith("/"):
            return Resolution(escapes=True, links=tuple(links))
        todo.extendleft(reversed(entry.target.split("/")))
    return Resolution("/".join(done), links=tuple(links))


def tree_after(tree: Mapping[str, Entry], actions: list[Action], side: Side) -> dict[str, Entry]:
    """``side``'s snapshot once ``actions`` (the plan, in order) have run on it."""
    out = dict(tree)
    for a in actions:
        if a.side is not side:
            continue
        if a.kind is ActionKind.MOVE_ASIDE:
            for p in [p for p in out if is_within(p, a.path)]:
                out[a.source + p[len(a.path) :]] = out.pop(p)
        elif a.kind is ActionKind.DELETE:
            for p in [p for p in out if is_within(p, a.path)]:
                del out[p]
        elif a.new is not None:
            out[a.path] = a.new
    return out


def makes_link(a: Action) -> bool:
    """Whether ``a`` creates a symlink."""
    return a.kind is ActionKind.COPY and a.new is not None and a.new.kind is EntryKind.SYMLINK


def refuse_escaping_links(
    plan: Plan, local: Mapping[str, Entry], remote: Mapping[str, Entry]
) -> Plan:
    """``plan`` without the link creations that would leave a link escaping the root.

    On each side's tree as the plan would leave it, every link is resolved; a planned link that
    escapes or loops, or, for a link already there, the planned links on its chain, are dropped
    and reported (the other
    side keeps its link; nothing is deleted). Repeated until no link escapes through the plan.
    """
    actions, problems = list(plan.actions), list(plan.problems)
    trees = {Side.LOCAL: local, Side.REMOTE: remote}
    while True:
        planned = {(a.side, a.path) for a in actions if makes_link(a)}
        refused: dict[tuple[Side, str], str] = {}
        for side, tree in trees.items():
            after = tree_after(tree, actions, side)
            for path, entry in after.items():
                if entry.kind is not EntryKind.SYMLINK:
                    continue
                found = resolve(after, path)
                if found.inside:
                    continue
                why = "loops" if found.loop else "leads outside the root"
                # The escaping link itself if the plan makes it, else the planned links that
                # turn its chain outward (it was there already: the plan must not complete it).
                culprits = [path] if (side, path) in planned else found.links
                for link in culprits:
                    if (side, link) in planned:
                        refused.setdefault((side, link), f"{path} -> {entry.target} {why}")
        if not refused:
            return replace(plan, actions=actions, problems=problems)
        actions = [a for a in actions if (a.side, a.path) not in refused]
        for (side, link), why in sorted(refused.items()):
            problems.append(
                Problem(
                    link, f"{side.value}: link not made, its chain {why}: fix it on the other side"
                )
            )
