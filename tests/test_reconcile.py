"""reconcile(): one table of cases run in every mode each names, plus a Hypothesis no-loss test."""

from __future__ import annotations

import ast
import hashlib
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tether.config import PairMode
from tether.sync.entry import Entry, EntryKind, Snapshot
from tether.sync.paths import is_within, parent_of
from tether.sync.reconcile import (
    Action,
    ActionKind,
    Side,
    conflict_name,
    next_base,
    reconcile,
    same,
)

STAMP = "20240102-030405"


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def F(text: str, *, mtime: int = 1, exe: bool = False) -> Entry:
    return Entry(EntryKind.FILE, len(text), mtime, 0o755 if exe else 0o644, digest(text))


F1, F2, F3 = F("one"), F("two", mtime=2), F("three", mtime=3)
D1 = Entry(EntryKind.DIRECTORY, mode=0o755)
L1 = Entry(EntryKind.SYMLINK, target="F1")
P1 = Entry(EntryKind.PROBLEM, problem="permission denied")
U = Entry(EntryKind.UNTRACKED, problem="symlink escapes the root")

ALL = tuple(PairMode)
SAFE = (PairMode.PUSH, PairMode.PULL, PairMode.TWO_WAY)
PUSHING = (PairMode.PUSH, PairMode.MIRROR)


@dataclass
class Case:
    description: str
    modes: tuple[PairMode, ...]
    base: Snapshot
    local: Snapshot
    remote: Snapshot
    actions: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def show(a: Action) -> str:
    text = f"{a.side.value} {a.kind.value} {a.path}"
    return f"{text} -> {a.source}" if a.source and a.source != a.path else text


LC = "a.conflict-local-" + STAMP + ".txt"
RC = "a.conflict-remote-" + STAMP + ".txt"

CASES = [
    Case("nothing anywhere", ALL, {}, {}, {}),
    Case("all equal", ALL, {"a.txt": F1}, {"a.txt": F1}, {"a.txt": F1}),
    Case(
        "same content, different mtimes: no action",
        ALL,
        {"a.txt": F1},
        {"a.txt": replace(F1, mtime_ns=5)},
        {"a.txt": F1},
    ),
    Case(
        "new local file", (*PUSHING, PairMode.TWO_WAY), {}, {"a.txt": F1}, {}, ["remote copy a.txt"]
    ),
    Case("new local file, pull ignores it", (PairMode.PULL,), {}, {"a.txt": F1}, {}),
    Case(
        "new remote file",
        (PairMode.PULL, PairMode.TWO_WAY),
        {},
        {},
        {"a.txt": F1},
        ["local copy a.txt"],
    ),
    Case("new remote file, push leaves it", (PairMode.PUSH,), {}, {}, {"a.txt": F1}),
    Case(
        "mirror deletes a remote-only file",
        (PairMode.MIRROR,),
        {},
        {},
        {"a.txt": F1},
        ["remote delete a.txt"],
    ),
    Case(
        "local edit",
        (*PUSHING, PairMode.TWO_WAY),
        {"a.txt": F1},
        {"a.txt": F2},
        {"a.txt": F1},
        ["remote copy a.txt"],
    ),
    Case(
        "executable bit alone is a change",
        (*PUSHING, PairMode.TWO_WAY),
        {"a.txt": F1},
        {"a.txt": replace(F1, mode=0o755)},
        {"a.txt": F1},
        ["remote copy a.txt"],
    ),
    Case(
        "local delete propagates",
        (*PUSHING, PairMode.TWO_WAY),
        {"a.txt": F1},
        {},
        {"a.txt": F1},
        ["remote delete a.txt"],
    ),
    Case(
        "remote delete propagates",
        (PairMode.PULL, PairMode.TWO_WAY),
        {"a.txt": F1},
        {"a.txt": F1},
        {},
        ["local delete a.txt"],
    ),
    Case(
        "mirror restores a file deleted on the remote",
        (PairMode.MIRROR,),
        {"a.txt": F1},
        {"a.txt": F1},
        {},
        ["remote copy a.txt"],
    ),
    Case("deleted on both sides", ALL, {"a.txt": F1}, {}, {}),
    Case("same new content both sides: not a conflict", ALL, {}, {"a.txt": F1}, {"a.txt": F1}),
    Case(
        "both edited the same way",
        ALL,
        {"a.txt": F1},
        {"a.txt": F2},
        {"a.txt": replace(F2, mtime_ns=9)},
    ),
    Case(
        "two-way conflict: newer remote wins, local kept on both sides",
        (PairMode.TWO_WAY,),
        {"a.txt": F1},
        {"a.txt": F2},
        {"a.txt": F3},
        ["local move_aside a.txt -> " + LC, "remote copy " + LC, "local copy a.txt"],
        ["a.txt"],
    ),
    Case(
        "two-way conflict on first sync: newer local wins",
        (PairMode.TWO_WAY,),
        {},
        {"a.txt": F3},
        {"a.txt": F2},
        ["remote move_aside a.txt -> " + RC, "local copy " + RC, "remote copy a.txt"],
        ["a.txt"],
    ),
    Case(
        "push conflict: remote edit kept as a conflict copy on the remote",
        (PairMode.PUSH,),
        {"a.txt": F1},
        {"a.txt": F2},
        {"a.txt": F3},
        ["remote move_aside a.txt -> " + RC, "remote copy a.txt"],
        ["a.txt"],
    ),
    Case(
        "pull conflict: local edit kept as a conflict copy locally",
        (PairMode.PULL,),
        {"a.txt": F1},
        {"a.txt": F2},
        {"a.txt": F3},
        ["local move_aside a.txt -> " + LC, "local copy a.txt"],
        ["a.txt"],
    ),
    Case(
        "mirror overwrites a remote edit",
        (PairMode.MIRROR,),
        {"a.txt": F1},
        {"a.txt": F2},
        {"a.txt": F3},
        ["remote copy a.txt"],
    ),
    Case(
        "push: local deleted, remote edited: remote version kept aside",
        (PairMode.PUSH,),
        {"a.txt": F1},
        {},
        {"a.txt": F2},
        ["remote move_aside a.txt -> " + RC],
        ["a.txt"],
    ),
    Case(
        "two-way: deleted locally, edited remotely: the edit comes back",
        (PairMode.TWO_WAY,),
        {"a.txt": F1},
        {},
        {"a.txt": F2},
        ["local copy a.txt"],
    ),
    Case(
        "two-way: edited locally, deleted remotely: the edit goes out",
        (PairMode.TWO_WAY, PairMode.PUSH),
        {"a.txt": F1},
        {"a.txt": F2},
        {},
        ["remote copy a.txt"],
    ),
    Case(
        "new directory tree, parents first",
        (*PUSHING, PairMode.TWO_WAY),
        {},
        {"d": D1, "d/e": D1, "d/e/f": F1, "d/g": L1},
        {},
        ["remote copy d", "remote copy d/e", "remote copy d/e/f", "remote copy d/g"],
    ),
    Case(
        "empty folder",
        (*PUSHING, PairMode.TWO_WAY),
        {},
        {"d": D1},
        {},
        ["remote copy d"],
    ),
    Case(
        "deleted tree, children first",
        (*PUSHING, PairMode.TWO_WAY),
        {"d": D1, "d/e": D1, "d/e/f": F1, "d/g": F2},
        {},
        {"d": D1, "d/e": D1, "d/e/f": F1, "d/g": F2},
        ["remote delete d/e/f", "remote delete d/e", "remote delete d/g", "remote delete d"],
    ),
    Case(
        "both sides edit different files in one folder: merged",
        (PairMode.TWO_WAY,),
        {"d": D1, "d/x": F1, "d/y": F1},
        {"d": D1, "d/x": F2, "d/y": F1},
        {"d": D1, "d/x": F1, "d/y": F3},
        ["remote copy d/x", "local copy d/y"],
    ),
    Case(
        "folder replaced by a file locally: one rooted action",
        (*PUSHING, PairMode.TWO_WAY),
        {"d": D1, "d/x": F1},
        {"d": F2},
        {"d": D1, "d/x": F1},
        ["remote delete d/x", "remote delete d", "remote copy d"],
    ),
    Case(
        "folder deleted locally while a file inside changed remotely: two-way keeps the edit",
        (PairMode.TWO_WAY,),
        {"d": D1, "d/x": F1, "d/y": F1},
        {},
        {"d": D1, "d/x": F2, "d/y": F1},
        ["local copy d", "local copy d/x", "local copy d/y"],
    ),
    Case(
        "dir vs file conflict is one conflict at the root",
        (PairMode.TWO_WAY,),
        {},
        {"d": replace(D1, mtime_ns=9), "d/x": F1, "d/y": F1},
        {"d": F3},
        [
            "remote move_aside d -> d.conflict-remote-" + STAMP,
            "local copy d.conflict-remote-" + STAMP,
            "remote copy d",
            "remote copy d/x",
            "remote copy d/y",
        ],
        ["d"],
    ),
    Case(
        "symlink retargeted",
        (*PUSHING, PairMode.TWO_WAY),
        {"l": L1},
        {"l": replace(L1, target="other")},
        {"l": L1},
        ["remote copy l"],
    ),
    Case(
        "unreadable local file is a problem, never deleted remotely",
        (*PUSHING, PairMode.TWO_WAY),
        {"a.txt": F1},
        {"a.txt": P1},
        {"a.txt": F1},
        [],
        [],
        ["a.txt"],
    ),
    Case(
        "escaping symlink is skipped with a warning",
        (*PUSHING, PairMode.TWO_WAY),
        {},
        {"l": U},
        {},
        [],
        [],
        ["l"],
    ),
    Case(
        "remote untracked entry inside a deleted folder blocks the folder delete",
        (*PUSHING, PairMode.TWO_WAY),
        {"d": D1, "d/x": F1},
        {},
        {"d": D1, "d/x": F1, "d/u": U},
        [],
        [],
        ["d/u"],
    ),
]


@pytest.mark.parametrize(
    ("case", "mode"),
    [pytest.param(c, m, id=f"{c.description}[{m.value}]") for c in CASES for m in c.modes],
)
def test_reconcile(case: Case, mode: PairMode) -> None:
    plan = reconcile(case.base, case.local, case.remote, mode, now=STAMP)
    assert [show(a) for a in plan.actions] == case.actions
    assert [c.root for c in plan.conflicts] == case.conflicts
    assert [p.path for p in plan.problems] == case.problems
    # A plan applied to the scanned state is consistent and converges where the mode says so.
    local, remote = simulate(plan.actions, case.local, case.remote)
    base = next_base(case.base, case.local, case.remote, plan.actions)
    again = reconcile(base, local, remote, mode, now=STAMP)
    assert again.actions == [] or mode in (PairMode.PUSH, PairMode.PULL)


def test_invalid_mode_is_refused() -> None:
    with pytest.raises(TypeError):
        reconcile({}, {}, {}, "sideways", now=STAMP)  # type: ignore[arg-type]


def test_conflict_names() -> None:
    assert conflict_name("a/b.tar.gz", Side.LOCAL, STAMP, set()) == (
        f"a/b.tar.conflict-local-{STAMP}.gz"
    )
    assert conflict_name(".bashrc", Side.REMOTE, STAMP, set()) == f".bashrc.conflict-remote-{STAMP}"
    taken = {f"x.conflict-local-{STAMP}.py"}
    assert conflict_name("x.py", Side.LOCAL, STAMP, taken) == f"x.conflict-local-{STAMP}-2.py"


def test_reconcile_imports_nothing_that_touches_the_world() -> None:
    source = Path(__file__).parents[1] / "daemon" / "sync" / "reconcile.py"
    modules: set[str] = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            modules.add("." * node.level + (node.module or ""))
    assert modules == {
        "__future__",
        "dataclasses",
        "enum",
        "typing",
        ".entry",
        ".paths",
        "..config",
    }


# -- simulated apply -------------------------------------------------------------------------------


def simulate(actions: list[Action], local: Snapshot, remote: Snapshot) -> tuple[Snapshot, Snapshot]:
    """Apply a plan to in-memory sides, asserting every expectation the real apply checks."""
    sides = {Side.LOCAL: dict(local), Side.REMOTE: dict(remote)}
    for a in actions:
        here, there = sides[a.side], sides[a.side.other]
        if a.kind is ActionKind.MOVE_ASIDE:
            assert same(here.get(a.path), a.old), a
            assert a.source not in here, a
            for p in [p for p in here if is_within(p, a.path)]:
                here[a.source + p[len(a.path) :]] = here.pop(p)
        elif a.kind is ActionKind.DELETE:
            assert same(here.get(a.path), a.old), a
            assert not any(p != a.path and is_within(p, a.path) for p in here), a
            del here[a.path]
        else:
            assert a.new is not None
            current = here.get(a.path)
            assert same(current, a.old) or (current is not None and a.old is not None), a
            parent = parent_of(a.path)
            assert not parent or here.get(parent, F1).kind is EntryKind.DIRECTORY, a
            assert same(there.get(a.source_path), a.new), a
            here[a.path] = a.new
    return sides[Side.LOCAL], sides[Side.REMOTE]


# -- property: random edits on both sides, two-way converges and loses nothing ---------------------

NAMES = ["a", "b", "d/x", "d/y", "d/e/z", "e"]
edit = st.tuples(
    st.sampled_from(["write", "write", "delete", "mkdir"]),
    st.sampled_from([*NAMES, "d", "d/e"]),
    st.sampled_from(["p", "q", "r", "s"]),
)


def do_edit(snap: Snapshot, op: str, path: str, text: str, clock: list[int]) -> None:
    clock[0] += 1
    if op == "delete":
        for p in [p for p in snap if is_within(p, path)]:
            del snap[p]
        return
    # Make the parents folders (replacing files on the way), then the target.
    parts = path.split("/")
    for i in range(1, len(parts)):
        folder = "/".join(parts[:i])
        if folder in snap and snap[folder].kind is not EntryKind.DIRECTORY:
            del snap[folder]
        snap.setdefault(folder, D1)
    if snap.get(path, F1).kind is EntryKind.DIRECTORY:
        for p in [p for p in snap if is_within(p, path)]:
            del snap[p]
    snap[path] = D1 if op == "mkdir" else F(f"{text}{clock[0]}", mtime=clock[0])


def contents(snap: Snapshot) -> set[str]:
    return {e.digest for e in snap.values() if e.kind is EntryKind.FILE}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(st.lists(edit, max_size=4), st.lists(edit, max_size=4)), min_size=1, max_size=5
    )
)
def test_two_way_converges_and_loses_nothing(rounds: list[tuple[list, list]]) -> None:
    base: Snapshot = {}
    local: Snapshot = {}
    remote: Snapshot = {}
    clock = [0]
    for n, (local_edits, remote_edits) in enumerate(rounds):
        for op, path, text in local_edits:
            do_edit(local, op, path, text, clock)
        for op, path, text in remote_edits:
            do_edit(remote, op, path, text, clock)
        written = {e.digest for s in (local, remote) for p, e in s.items()
                   if e.kind is EntryKind.FILE and not same(base.get(p), e)}  # fmt: skip
        plan = reconcile(base, local, remote, PairMode.TWO_WAY, now=f"2024-{n}")
        new_local, new_remote = simulate(plan.actions, local, remote)
        base = next_base(base, local, remote, plan.actions)
        local, remote = new_local, new_remote
        # Every version a user wrote since the last sync survives, on both sides.
        assert written <= contents(local) and written <= contents(remote)
        assert {p: e.digest for p, e in local.items()} == {p: e.digest for p, e in remote.items()}
        assert {p: e.digest for p, e in base.items()} == {p: e.digest for p, e in local.items()}
    assert reconcile(base, local, remote, PairMode.TWO_WAY, now="z").actions == []


@settings(max_examples=200, deadline=None)
@given(st.lists(edit, max_size=6), st.lists(edit, max_size=6), st.sampled_from(PUSHING))
def test_push_and_mirror_make_remote_hold_local(local_edits, remote_edits, mode) -> None:
    local: Snapshot = {}
    remote: Snapshot = {}
    clock = [0]
    for op, path, text in local_edits:
        do_edit(local, op, path, text, clock)
    for op, path, text in remote_edits:
        do_edit(remote, op, path, text, clock)
    before_remote = contents(remote)
    plan = reconcile({}, local, remote, mode, now="t")
    new_local, new_remote = simulate(plan.actions, local, remote)
    assert new_local == local
    for p, e in local.items():
        assert same(new_remote.get(p), e)
    if mode is PairMode.PUSH:  # push never drops a remote version without a conflict copy
        assert before_remote <= contents(new_remote)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(edit, max_size=6), st.lists(edit, max_size=6), st.sampled_from(ALL), st.data()
)  # fmt: skip
def test_next_base_takes_learned_digests_and_changes_no_snapshot(
    local_edits, remote_edits, mode, data
) -> None:
    """A local scan leaves files only this side has unhashed (nothing compares them); the apply
    hashes them as it copies and returns the digests. The base must come out the same as from a
    fully hashed scan, from those arguments alone, with no snapshot changed in place."""
    local: Snapshot = {}
    remote: Snapshot = {}
    clock = [0]
    for op, path, text in local_edits:
        do_edit(local, op, path, text, clock)
    for op, path, text in remote_edits:
        do_edit(remote, op, path, text, clock)
    only_here = sorted(p for p, e in local.items() if e.kind is EntryKind.FILE and p not in remote)
    hidden = data.draw(st.sets(st.sampled_from(only_here))) if only_here else set()
    scanned = {p: replace(e, digest="") if p in hidden else e for p, e in local.items()}
    kept_local, kept_remote = dict(scanned), dict(remote)
    plan = reconcile({}, scanned, remote, mode, now=STAMP)
    learned = {p: local[p].digest for p in hidden}

    got = next_base({}, scanned, remote, plan.actions, learned)

    want = next_base({}, local, remote, reconcile({}, local, remote, mode, now=STAMP).actions)
    assert got == want
    assert all(e.digest for e in got.values() if e.kind is EntryKind.FILE)
    assert scanned == kept_local and remote == kept_remote
