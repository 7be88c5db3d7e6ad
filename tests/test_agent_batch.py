"""Batched writes (``write_many``) and delta scans (``scan`` with ``since``) of the agent."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from pathlib import Path

import pytest
from tether.errors import BadHostData, HostUnreachable
from tether.sync.endpoint import ExpectationFailed, RemoteOpError, WriteItem
from tether.sync.entry import Entry, EntryKind
from tether.transport.agent_client import AgentClient
from tether.transport.host_data import apply_scan_delta

from tests.local_agent import OLD_NS, arun, leftovers, sha

pytestmark = pytest.mark.usefixtures("agent_home")


def test_write_many_lands_each_file_or_fails_it_alone(root: Path) -> None:
    (root / "taken").write_text("already here")

    async def body(c: AgentClient) -> list[Entry | RemoteOpError]:
        return await c.write_many(
            str(root),
            [
                WriteItem("a.txt", b"one", 0o644, OLD_NS, None),
                WriteItem("taken", b"clobber?", 0o644, OLD_NS, None),  # expected absent
                WriteItem("sub/deep/b.sh", b"#!/bin/sh\n", 0o755, OLD_NS, None),
                WriteItem("empty", b"", 0o600, OLD_NS, None),
            ],
        )

    a, taken, b, empty = arun(body)
    assert isinstance(taken, ExpectationFailed)
    assert (root / "taken").read_text() == "already here"
    assert isinstance(a, Entry) and a.digest == sha(b"one") and a.mtime_ns == OLD_NS
    assert isinstance(b, Entry) and b.executable
    assert isinstance(empty, Entry) and empty.size == 0
    assert (root / "sub" / "deep" / "b.sh").read_bytes() == b"#!/bin/sh\n"
    assert leftovers(root) == []


def test_batches_under_way_land_before_the_agent_exits(root: Path) -> None:
    """write_many batches are written in threads; the client hanging up right after sending
    them (its end of the channel closed, the replies unread) still leaves every file landed and
    no staged file behind: the agent waits for its writers before it exits. (300 files a batch:
    with 1000 the writes outlasted close()'s 5 s grace on a machine loaded 7 to 1, the agent was
    killed as designed, and its staged files were left for the next scan to remove.)"""
    items = [
        [
            WriteItem(f"d{b}/f{i:04}.txt", b"%d-%d " % (b, i) * 100, 0o644, OLD_NS, None)
            for i in range(300)
        ]
        for b in range(3)
    ]

    async def body(c: AgentClient) -> None:
        sent = [asyncio.ensure_future(c.write_many(str(root), batch)) for batch in items]
        await asyncio.sleep(0)  # the frames are written; nobody waits for the answers
        await c.close()
        for task in sent:
            with contextlib.suppress(HostUnreachable):
                await task

    arun(body)
    assert leftovers(root) == []
    for batch in items:
        for item in batch:
            assert (root / item.path).read_bytes() == item.data


def test_write_many_refuses_a_blob_that_does_not_add_up(root: Path) -> None:
    async def body(c: AgentClient) -> None:
        with pytest.raises(RemoteOpError) as err:
            await c.call(
                "write_many",
                b"abc",
                root=str(root),
                files=[{"path": "x", "size": 5, "mode": 420, "mtime_ns": 1, "expect": None}],
            )
        assert err.value.type == "invalid"

    arun(body)
    assert list(root.iterdir()) == []


def test_write_many_never_goes_through_a_symlinked_parent(root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "link").symlink_to(outside)

    async def body(c: AgentClient) -> list[Entry | RemoteOpError]:
        return await c.write_many(
            str(root),
            [WriteItem("link/x", b"x", 0o644, 1, None), WriteItem("ok", b"y", 0o644, 1, None)],
        )

    bad, ok = arun(body)
    assert isinstance(bad, RemoteOpError) and bad.type == "invalid"
    assert isinstance(ok, Entry)
    assert list(outside.iterdir()) == []


def test_delta_scan_sends_only_what_changed(root: Path) -> None:
    for name in ("a", "b", "c"):
        (root / "d").mkdir(exist_ok=True)
        (root / "d" / name).write_text(name)

    async def body(c: AgentClient) -> None:
        full = await c.scan(str(root), delta=True, racy_ms=0)
        assert full.token and full.sent == -1 and len(full.entries) == 4
        same = await c.scan(str(root), delta=True, since=(full.token, full.entries))
        assert same.sent == 0 and same.token == full.token and same.entries == full.entries
        (root / "d" / "a").write_text("changed")
        (root / "d" / "b").unlink()
        (root / "e").mkdir()
        delta = await c.scan(str(root), delta=True, since=(full.token, full.entries))
        assert delta.sent == 4 and delta.token != full.token  # d (its mtime), d/a, d/b, e
        assert set(delta.entries) == {"d", "d/a", "d/c", "e"}
        assert delta.entries["d/a"].digest == sha(b"changed")
        # A stale token (another client scanned meanwhile) gets everything again.
        stale = await c.scan(str(root), delta=True, since=(full.token, full.entries))
        assert stale.sent == -1 and stale.entries == delta.entries
        # Other ignore rules: everything again, too.
        other = await c.scan(
            str(root), [("^e/$", True)], delta=True, since=(stale.token, stale.entries)
        )
        assert other.sent == -1 and "e" not in other.entries

    arun(body)


def test_delta_scan_after_the_agent_restarted(root: Path) -> None:
    (root / "f").write_text("f")
    first = arun(lambda c: c.scan(str(root), delta=True))
    shutil.rmtree(root / ".." / "home" / ".cache" / "tether" / "scans")
    again = arun(lambda c: c.scan(str(root), delta=True, since=(first.token, first.entries)))
    assert again.sent == -1 and again.entries == first.entries
    os.remove(root / "f")
    gone = arun(lambda c: c.scan(str(root), delta=True, since=(again.token, again.entries)))
    assert gone.sent == 1 and gone.entries == {}


def test_a_delta_is_validated_like_a_full_scan() -> None:
    folder = Entry(EntryKind.DIRECTORY, 0, 1, 0o755)
    file = ["file", 1, 1, 0o644, "0" * 64, "", ""]
    previous = {"d": folder, "d/x": Entry(EntryKind.FILE, 1, 1, 0o644, "0" * 64)}
    with pytest.raises(BadHostData):
        apply_scan_delta(previous, {"../x": file}, [])
    with pytest.raises(BadHostData):
        apply_scan_delta(previous, {}, ["d"])  # the dir goes, its child stays
    with pytest.raises(BadHostData):
        apply_scan_delta(previous, {"d": file}, [])  # the dir became a file under its child
    with pytest.raises(BadHostData):
        apply_scan_delta(previous, {"n/y": file}, [])  # no parent
    with pytest.raises(BadHostData):
        apply_scan_delta(previous, {"d/y": ["file", 1, 1, 0o644, "nothex", "", ""]}, [])
    merged = apply_scan_delta(previous, {"d/y": file}, ["d/x"])
    assert set(merged) == {"d", "d/y"}


def test_the_client_refuses_a_delta_it_did_not_ask_for(root: Path) -> None:
    async def body(c: AgentClient) -> None:
        first = await c.scan(str(root), delta=True)
        c._send = _lying_send(c._send, first.token)  # type: ignore[method-assign]
        with pytest.raises(BadHostData):
            await c.scan(str(root), delta=True)  # no since: a delta cannot be merged

    (root / "f").write_text("f")
    arun(body)


def _lying_send(send, token):  # type: ignore[no-untyped-def]
    """Ask the agent for a delta against a token the client never passed to scan()."""

    def wrapped(request, blob):  # type: ignore[no-untyped-def]
        if request.get("op") == "scan":
            request = dict(request, since=token)
        return send(request, blob)

    return wrapped
