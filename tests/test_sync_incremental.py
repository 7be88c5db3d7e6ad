"""Incremental syncs (only the dirty subtrees scanned) against a real sshd: the same result as a
full sync, the rest of the base untouched, and a full scan whenever a partial one could be wrong."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from tether.config import load_config
from tether.sync.engine import SyncReport, dirty_roots, sync_pair
from tether.sync.safety import PairStatus
from tether.sync.state import StateStore, pair_key
from tether.transport.endpoints import SSH

from tests.helpers import tree, write


@pytest.fixture
def pair(sync_project):  # type: ignore[no-untyped-def]
    """The shared two-way pair, and ``run(local_paths, remote_paths)``: one (incremental)
    sync of it in this process, returning the engine's report."""
    tmp_path, local, remote, configure = sync_project

    def run(local_paths=None, remote_paths=None, **kw) -> SyncReport:
        config = load_config(tmp_path / "tether.toml")
        return asyncio.run(
            sync_pair(
                config,
                config.pair("code"),
                SSH,
                local_paths=local_paths,
                remote_paths=remote_paths,
                **kw,
            )
        )

    return tmp_path, local, remote, run, configure


def base_of(tmp: Path) -> dict:
    with StateStore(tmp / "state" / "sync.sqlite3") as store:
        return store.load_base(pair_key(tmp / "tether.toml", "code"))


def test_dirty_roots() -> None:
    assert dirty_roots(["a/b", "a", "c/d", "c/d/e", "cd"]) == ["a", "c/d", "cd"]
    assert dirty_roots(["a/b/"]) == ["a/b"]
    assert dirty_roots([]) == []
    assert dirty_roots(["a", ""]) is None  # the root itself
    assert dirty_roots(["src/.gitignore"]) is None  # the rules change


def test_incremental_matches_full_and_keeps_the_rest_of_the_base(pair) -> None:
    tmp, local, remote, run, _ = pair
    for i in range(30):
        write(local / f"d{i % 3}" / f"f{i}.txt", f"v{i}")
    write(local / "top.txt", "top")
    assert run().status is PairStatus.OK
    before = base_of(tmp)
    assert len(before) == 34
    # local edit, local new file in a new folder, a remote edit, and a remote deletion
    write(local / "d0" / "f0.txt", "edited here")
    write(local / "new" / "deep" / "n.txt", "new")
    write(remote / "d1" / "f1.txt", "edited there")
    os.remove(remote / "d2" / "f2.txt")
    # a change nobody reported is left for a later full sync (proves the scan was partial)
    write(local / "d2" / "f5.txt", "unreported")
    report = run(["d0/f0.txt", "new"], ["d1/f1.txt", "d2/f2.txt"])
    assert report.status is PairStatus.OK, report
    assert report.scope == ["d0/f0.txt", "d1/f1.txt", "d2/f2.txt", "new"]
    assert report.copied == 3 and report.deleted == 1
    assert (remote / "d0" / "f0.txt").read_text() == "edited here"
    assert (remote / "new" / "deep" / "n.txt").read_text() == "new"
    assert (local / "d1" / "f1.txt").read_text() == "edited there"
    assert not (local / "d2" / "f2.txt").exists()
    assert (remote / "d2" / "f5.txt").read_text() == "v5"
    after = base_of(tmp)
    moved = {p for p in before.keys() | after.keys() if before.get(p) != after.get(p)}
    assert moved == {"d0/f0.txt", "d1/f1.txt", "d2/f2.txt", "new", "new/deep", "new/deep/n.txt"}
    assert set(report.base_moved) == moved
    # a full sync then finds only the unreported change, and both trees agree
    report = run()
    assert report.scope is None and report.copied == 1
    assert tree(local) == tree(remote)


def test_incremental_respects_gitignore_of_ancestors(pair) -> None:
    _tmp, local, remote, run, _ = pair
    write(local / ".gitignore", "*.o\n")
    write(local / "sub" / ".gitignore", "secret/\n")
    write(local / "sub" / "a.c", "a")
    assert run().status is PairStatus.OK
    write(local / "sub" / "b.o", "object")
    write(local / "sub" / "secret" / "k", "key")
    write(local / "sub" / "b.c", "b")
    report = run(["sub/b.o", "sub/secret", "sub/b.c"], [])
    assert report.scope is not None and report.copied == 1
    assert not (remote / "sub" / "b.o").exists()
    assert not (remote / "sub" / "secret").exists()
    # a new .gitignore inside a dirty folder is a rule the host was not sent: full scan
    write(local / "other" / ".gitignore", "x\n")
    write(local / "other" / "x", "ignored")
    write(local / "other" / "y", "kept")
    report = run(["other"], [])
    assert report.scope is None
    assert not (remote / "other" / "x").exists() and (remote / "other" / "y").exists()


def test_emptied_root_still_halts_when_every_path_is_dirty(pair) -> None:
    _tmp, local, remote, run, _ = pair
    write(local / "a" / "x", "1")
    write(local / "b", "2")
    assert run().status is PairStatus.OK
    for p in ("a/x", "b"):
        os.remove(local / p)
    os.rmdir(local / "a")
    report = run(["a", "b"], [])
    assert report.scope is None  # fell back to the full scan ...
    assert report.status is PairStatus.HALTED_ROOT_EMPTIED  # ... whose safety check halts
    assert (remote / "a" / "x").exists() and (remote / "b").exists()


def test_deleted_root_and_deleted_parent_fall_back_to_full(pair) -> None:
    _tmp, local, remote, run, _ = pair
    write(local / "p" / "q" / "r.txt", "1")
    write(local / "keep.txt", "k")
    assert run().status is PairStatus.OK
    # a parent deleted but only a child reported: the full scan propagates the whole deletion
    import shutil

    shutil.rmtree(local / "p")
    report = run(["p/q/r.txt"], [])
    assert report.scope is None and report.status is PairStatus.OK
    assert not (remote / "p").exists() and (remote / "keep.txt").exists()
    shutil.rmtree(remote)
    report = run([], ["keep.txt"])
    assert report.status is PairStatus.HALTED_ROOT_DELETED
    assert (local / "keep.txt").exists()


def test_first_sync_is_full_and_nothing_dirty_is_nothing(pair) -> None:
    _tmp, local, _remote, run, _ = pair
    write(local / "a.txt", "1")
    report = run(["a.txt"], [])
    assert report.scope is None and report.copied == 1  # no base yet: full
    report = run([], [])
    assert report.scope == [] and report.copied == 0 and report.rounds == 0


def test_incremental_dry_run_writes_nothing(pair) -> None:
    tmp, local, remote, run, _ = pair
    write(local / "a.txt", "1")
    assert run().status is PairStatus.OK
    write(local / "a.txt", "2")
    before = base_of(tmp)
    report = run(["a.txt"], [], dry_run=True)
    assert report.scope == ["a.txt"] and len(report.plan) == 1
    assert (remote / "a.txt").read_text() == "1" and base_of(tmp) == before
