"""An apply's outcome is put together from each action's own result (pure: no sides, no I/O).

Each action's work returns what it came to (landed with its content's digest, or failed and
why); :func:`outcome_of` combines them in plan order, whatever order they finished in, so one
plan's outcome is one value however the transfers interleaved."""

from __future__ import annotations

import hashlib

from tether.sync.apply import Result, outcome_of
from tether.sync.entry import Entry, EntryKind
from tether.sync.reconcile import Action, ActionKind, Side
from tether.sync.sides import OpFailed


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def file(size: int, digest: str = "") -> Entry:
    return Entry(EntryKind.FILE, size, 1, 0o644, digest)


NEW = Action("new.txt", Side.REMOTE, ActionKind.COPY, new=file(3))
"""A file the scan left unhashed: its digest is learned as it is sent."""
KNOWN = Action("known.txt", Side.REMOTE, ActionKind.COPY, new=file(5, sha("known")))
GONE = Action("gone.txt", Side.LOCAL, ActionKind.DELETE, old=file(1, sha("g")))
EDITED = Action("edited.txt", Side.LOCAL, ActionKind.COPY, new=file(7, sha("edited")))
FULL = Action("big.bin", Side.LOCAL, ActionKind.COPY, new=file(9, sha("big")))
LATER_FULL = Action("z.bin", Side.LOCAL, ActionKind.COPY, new=file(4, sha("z")))
SKIPPED = Action("d/under.txt", Side.LOCAL, ActionKind.COPY, new=file(2, sha("u")))
PLAN = [NEW, KNOWN, GONE, EDITED, FULL, LATER_FULL, SKIPPED]


def test_the_outcome_follows_the_plan_whatever_order_the_results_came_in() -> None:
    finished = [
        Result(LATER_FULL, OpFailed("no_space", "no space left", LATER_FULL.path)),
        Result(KNOWN, digest=sha("known")),
        Result(FULL, OpFailed("no_space", "no space left", FULL.path)),
        Result(EDITED, OpFailed("changed", "edited.txt changed since it was scanned")),
        Result(GONE),
        Result(NEW, digest=sha("new")),
    ]
    for results in (finished, list(reversed(finished))):
        out = outcome_of(PLAN, results)
        assert out.done == [NEW, KNOWN, GONE]
        assert out.learned == {"new.txt": sha("new")}  # only the file the scan left unhashed
        assert (out.files, out.bytes, out.deleted) == (2, 3 + 5, 1)
        assert [p.path for p in out.problems] == ["edited.txt", "big.bin", "z.bin"]
        assert out.problems[0].message == "local: edited.txt changed since it was scanned"
        assert out.changed == ["edited.txt"]  # rescanned; a full disk is not
        assert out.fatal is not None and "big.bin" in str(out.fatal)  # the first in the plan


def test_a_learned_digest_is_keyed_by_the_path_it_was_read_from() -> None:
    """A conflict copy sent to the other side is read under its new name: next_base and the
    digest cache map it back to the name the scan knew."""
    copy = Action("a.conflict-local-1.txt", Side.REMOTE, ActionKind.COPY, new=file(3), source="")
    moved = Action("b.txt", Side.REMOTE, ActionKind.COPY, new=file(3), source="b-src.txt")
    out = outcome_of([copy, moved], [Result(moved, digest=sha("b")), Result(copy, digest=sha("a"))])
    assert out.learned == {"a.conflict-local-1.txt": sha("a"), "b-src.txt": sha("b")}
    assert out.done == [copy, moved] and out.problems == [] and out.fatal is None


def test_what_the_engine_learns_about_this_side_is_named_as_the_scan_named_it() -> None:
    """Only files sent from this side complete the local scan's digests; one read from a folder
    moved aside as a conflict copy is known by the name the folder had when it was scanned."""
    from tether.sync.engine import learned_here

    aside = Action("d", Side.LOCAL, ActionKind.MOVE_ASIDE, old=Entry(EntryKind.DIRECTORY),
                   source="d.conflict-local-1")  # fmt: skip
    sent = Action("d.conflict-local-1/x.txt", Side.REMOTE, ActionKind.COPY, new=file(3))
    fetched = Action("y.txt", Side.LOCAL, ActionKind.COPY, new=file(4))
    plan = [aside, sent, fetched]
    out = outcome_of(
        plan, [Result(aside), Result(sent, digest=sha("x")), Result(fetched, digest=sha("y"))]
    )
    assert out.learned == {"d.conflict-local-1/x.txt": sha("x"), "y.txt": sha("y")}
    assert learned_here(plan, out) == {"d/x.txt": sha("x")}
