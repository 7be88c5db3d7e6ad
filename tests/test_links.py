"""Symlink chains: the pure resolver against the real filesystem, and the plan check end to end."""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from tether.sync.entry import Entry, EntryKind
from tether.sync.links import resolve

from tests.helpers import sync

NAMES = st.sampled_from(["a", "b", "c", "..", "."])
TARGETS = st.one_of(
    st.lists(NAMES, min_size=1, max_size=5).map("/".join), st.sampled_from(["/", "/etc", ""])
)
TREES = st.dictionaries(
    st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=3).map("/".join),
    st.one_of(st.just("dir"), st.just("file"), TARGETS.filter(bool)),
    max_size=8,
)


def build(root: Path, spec: dict[str, str]) -> dict[str, Entry]:
    """Make ``spec`` on disk (parents first; a path under a non-folder is skipped) and return
    the snapshot a scan would give."""
    tree: dict[str, Entry] = {}
    for path in sorted(spec, key=lambda p: p.count("/")):
        parent = path.rpartition("/")[0]
        if parent and (parent not in tree or tree[parent].kind is not EntryKind.DIRECTORY):
            continue
        kind, full = spec[path], root / path
        if kind == "dir":
            full.mkdir()
            tree[path] = Entry(EntryKind.DIRECTORY)
        elif kind == "file":
            full.write_text("x")
            tree[path] = Entry(EntryKind.FILE, 1, 1, 0o644, "0" * 64)
        else:
            os.symlink(kind, full)
            tree[path] = Entry(EntryKind.SYMLINK, target=kind)
    return tree


@settings(max_examples=300, deadline=None)
@given(TREES, st.lists(NAMES, min_size=1, max_size=4).map("/".join))
def test_resolve_agrees_with_realpath(spec: dict[str, str], probe: str) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(os.path.realpath(scratch)) / "root"
        root.mkdir()
        tree = build(root, spec)
        for path in [*tree, probe]:
            got = resolve(tree, path)
            full = os.path.join(root, path)
            if got.loop:
                try:
                    os.stat(full)
                except OSError as exc:
                    assert exc.errno in (errno.ELOOP, errno.ENOENT, errno.ENOTDIR)
                    continue
                raise AssertionError(f"{path} resolves on disk but loops here")
            real = os.path.realpath(full)
            inside = real == str(root) or real.startswith(f"{root}/")
            assert inside == got.inside, (path, real, got)
            if inside:
                assert got.path == ("" if real == str(root) else os.path.relpath(real, root))


def test_the_issues_chain_escapes() -> None:
    tree = {
        "x": Entry(EntryKind.DIRECTORY),
        "x/y": Entry(EntryKind.DIRECTORY),
        "x/y/u": Entry(EntryKind.SYMLINK, target="../.."),
        "ssh_esc": Entry(EntryKind.SYMLINK, target="x/y/u/../../.ssh"),
        "ok": Entry(EntryKind.SYMLINK, target="x/y/u/x"),
        "loop": Entry(EntryKind.SYMLINK, target="loop/a"),
    }
    assert resolve(tree, "x/y/u").inside and resolve(tree, "x/y/u").path == ""
    assert resolve(tree, "ssh_esc").escapes and resolve(tree, "ssh_esc").links == (
        "ssh_esc",
        "x/y/u",
    )
    assert resolve(tree, "ok").path == "x"
    assert resolve(tree, "loop").loop


def test_a_chain_out_of_the_root_is_refused_both_ways(sync_project) -> None:
    """The issue's chain, made on the host (pull) and locally (push): the escaping link is not
    made on the other side and is reported; the in-tree chain beside it syncs."""
    tmp, local, remote, configure = sync_project
    for mode, src, dst in (("push", local, remote), ("pull", remote, local)):
        configure(mode)
        source, dest = src / mode, dst / mode  # each case in its own folder
        (source / "x" / "y").mkdir(parents=True)
        os.symlink("../..", source / "x" / "y" / "u")
        os.symlink("x/y/u/../../.ssh", source / "ssh_esc")
        os.symlink("x/y/u/x/y", source / "inside")
        code, report = sync(tmp)
        assert code == 0, report
        assert not os.path.lexists(dest / "ssh_esc"), (mode, report["plan"])
        assert os.readlink(dest / "inside") == "x/y/u/x/y"
        assert os.readlink(dest / "x" / "y" / "u") == "../.."
        assert any(p["path"] == f"{mode}/ssh_esc" and "outside the root" in p["message"]
                   for p in report["problems"]), report  # fmt: skip


def test_different_escaping_links_at_one_path_are_reported_not_called_agreed(sync_project) -> None:
    """Each side has its own link at one path, each leading out of its root: neither is synced,
    so the sync reports the path; it used to call the two "the same" (both untracked) and say
    nothing. The same link on both sides agrees: nothing to report."""
    tmp, local, remote, _ = sync_project
    remote.mkdir()
    os.symlink("/etc", local / "out")
    os.symlink("/usr", remote / "out")
    code, report = sync(tmp)
    assert code == 0, report
    assert os.readlink(local / "out") == "/etc" and os.readlink(remote / "out") == "/usr"
    assert [p["path"] for p in report["problems"]] == ["out"], report
    os.unlink(remote / "out")
    os.symlink("/etc", remote / "out")
    code, report = sync(tmp)
    assert code == 0 and report["problems"] == [], report


def test_a_link_through_the_other_sides_escaping_link_is_not_made(sync_project) -> None:
    """``l -> esc`` stays inside here, where ``esc`` leads to a folder of the tree; on the host
    ``esc`` is the user's link out of the root (never synced). Made there, ``l`` would lead out
    too: it is refused and reported. The chain used to stop at the host's ``esc`` as if it
    were a plain name, and the sync made a link that escapes."""
    tmp, local, remote, _ = sync_project
    remote.mkdir()
    (local / "x").mkdir()
    os.symlink("x", local / "esc")
    os.symlink("/etc", remote / "esc")
    os.symlink("esc", local / "l")
    code, report = sync(tmp)
    assert code == 0, report
    assert not os.path.lexists(remote / "l"), report["plan"]
    assert any(p["path"] == "l" and "outside the root" in p["message"]
               for p in report["problems"]), report  # fmt: skip
