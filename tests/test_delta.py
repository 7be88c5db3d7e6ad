"""daemon/sync/delta.py: any edit of any file is rebuilt exactly, both ways (push: block copies
and literals; pull: blocks found in the old copy plus fetched ranges), the usual edits cost about
what changed, and the agent's signing and hole-finding give the same answers as tether's own."""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tether.sync import blocks, delta, sparse
from tether.sync.delta import Copy, Literal, Matcher, Signature

from tests.agent_module import load_agent

BLOCK = 64

agent_base, agent_digests = load_agent("agent_base"), load_agent("agent_digests")
agent_scan, agent_read = load_agent("agent_scan"), load_agent("agent_read")
agent_write = load_agent("agent_write")


def sign(data: bytes, block: int = BLOCK) -> Signature:
    full = len(data) - len(data) % block
    return Signature(
        block, b"".join(blocks.block_sig(data[i : i + block]) for i in range(0, full, block))
    )


def match(sig: Signature, data: bytes, *, piece: int, search: int) -> list[delta.Event]:
    m = Matcher(sig, search=search)
    events: list[delta.Event] = []
    for i in range(0, len(data), piece):
        events += m.feed(data[i : i + piece])
    return events + m.finish()


def push(old: bytes, new: bytes, *, piece: int = 97, search: int = 300) -> tuple[bytes, int]:
    """Rebuild ``new`` the way the host does from a push: (result, literal bytes sent)."""
    sig = sign(old)
    out, literal, pos = bytearray(), 0, 0
    for e in match(sig, new, piece=piece, search=search):
        assert e.pos == pos  # events cover the stream in order, without gaps
        if isinstance(e, Copy):
            out += old[e.block * BLOCK : (e.block + 1) * BLOCK]
            pos += BLOCK
        else:
            out += e.data
            literal += len(e.data)
            pos += len(e.data)
    return bytes(out), literal


def pull(old: bytes, new: bytes, *, piece: int = 97, search: int = 300) -> tuple[bytes, int]:
    """Rebuild ``new`` the way this machine does from a pull: (result, bytes fetched)."""
    sig = sign(new)
    have: dict[int, int] = {}
    delta.found_blocks(match(sig, old, piece=piece, search=search), sig, have)
    out, fetched = bytearray(), 0
    for kind, offset, n in delta.pull_plan(have, sig, len(new), piece=200):
        if kind == "copy":
            out += old[offset : offset + n]
        else:
            out += new[offset : offset + n]
            fetched += n
    return bytes(out), fetched


edits = st.lists(
    st.tuples(
        st.sampled_from(["insert", "delete", "replace", "append", "truncate", "move"]),
        st.integers(0, 10**6),
        st.integers(0, 500),
        st.binary(min_size=0, max_size=300),
    ),
    max_size=6,
)


def edited(data: bytes, ops: list[tuple[str, int, int, bytes]]) -> bytes:
    out = bytearray(data)
    for op, at, n, text in ops:
        at = at % (len(out) + 1)
        if op == "insert":
            out[at:at] = text
        elif op == "delete":
            del out[at : at + n]
        elif op == "replace":
            out[at : at + len(text)] = text
        elif op == "append":
            out += text
        elif op == "truncate":
            del out[at:]
        else:  # move a stretch elsewhere (a shift both ways)
            stretch = bytes(out[at : at + n])
            del out[at : at + n]
            dest = (at * 7) % (len(out) + 1)
            out[dest:dest] = stretch
    return bytes(out)


@settings(max_examples=300, deadline=None)
@given(
    base=st.one_of(
        st.binary(min_size=0, max_size=3000),
        st.integers(0, 2**32).map(lambda seed: random.Random(seed).randbytes(2500)),
        st.integers(1, 3000).map(lambda n: b"\0" * n),  # every block alike
        st.integers(1, 100).map(lambda n: b"line,1,2,3\n" * n),  # a repetitive CSV
    ),
    ops=edits,
    piece=st.integers(1, 400),
    search=st.integers(1, 400),
)
def test_any_edit_is_rebuilt_exactly_both_ways(base, ops, piece, search) -> None:
    new = edited(base, ops)
    assert push(base, new, piece=piece, search=search)[0] == new
    assert pull(base, new, piece=piece, search=search)[0] == new


def test_usual_edits_cost_about_what_changed() -> None:
    rng = random.Random(7)
    old = rng.randbytes(200 * BLOCK + 10)
    middle = old[: 100 * BLOCK] + rng.randbytes(3 * BLOCK) + old[103 * BLOCK :]
    appended = old + rng.randbytes(20 * BLOCK)
    inserted = old[: 50 * BLOCK + 5] + b"x" * 1000 + old[50 * BLOCK + 5 :]
    deleted = old[: 50 * BLOCK + 5] + old[53 * BLOCK + 40 :]
    truncated = old[: 150 * BLOCK + 3]
    cases = {
        "middle": (middle, 3 * BLOCK),
        "appended": (appended, 20 * BLOCK),
        "inserted": (inserted, 1000),
        "deleted": (deleted, 0),
        "truncated": (truncated, 0),
    }
    for name, (new, changed) in cases.items():
        for way in (push, pull):
            rebuilt, sent = way(old, new, search=4 * BLOCK)
            assert rebuilt == new, (name, way.__name__)
            assert sent <= changed + 3 * BLOCK, (name, way.__name__, sent)


def test_the_matcher_holds_a_bounded_window_of_a_long_stream() -> None:
    """Fed 8 MiB of new bytes, it hands literals on instead of keeping them."""
    sig = sign(os.urandom(64 * 1024), 4096)
    m = Matcher(sig, search=64 * 1024)
    most = 0
    for _ in range(64):
        for e in m.feed(os.urandom(128 * 1024)):
            assert isinstance(e, Literal) and len(e.data) <= delta.LITERAL
        most = max(most, len(m.buf))
    assert most < 64 * 1024 + 4096 + delta.LITERAL + 128 * 1024


def test_the_agent_signs_a_file_block_by_block(tmp_path: Path) -> None:
    """The host's ``signature`` op: one record per full block, in order, the short tail unsigned,
    each the record tether's matcher looks for."""
    block = 4096
    data = os.urandom(block) + b"\0" * block + bytes(range(256)) * 16 + os.urandom(100)
    (tmp_path / "f").write_bytes(data)
    reply, raw = agent_read.op_signature({"root": str(tmp_path), "path": "f", "block": block})
    assert (reply["size"], reply["count"], reply["block"]) == (len(data), 3, block)
    assert raw == b"".join(
        blocks.block_sig(data[i : i + block]) for i in range(0, 3 * block, block)
    )
    sig = Signature(block, raw)
    assert sig.twins(0) == [0] and sig.record(1) == (blocks.strong(bytes(block)), bytes(16))


def test_the_agent_finds_holes_as_tether_does(tmp_path: Path) -> None:
    path = tmp_path / "sparse"
    with path.open("wb") as fh:
        for offset in (0, 5 << 20, 9 << 20):
            fh.seek(offset)
            fh.write(os.urandom(100_000))
        fh.truncate(12 << 20)
    fd = os.open(path, os.O_RDONLY)
    try:
        for start, end in [(0, 12 << 20), (50_000, 5 << 20), (6 << 20, 12 << 20), (0, 0)]:
            assert agent_read.sparse.data_extents(fd, start, end) == sparse.data_extents(
                fd, start, end
            )
        runs = sparse.data_extents(fd, 0, 12 << 20)
    finally:
        os.close(fd)
    if len(runs) > 1:  # a filesystem that reports holes: they are found
        assert sum(b - a for a, b in runs) < 4 << 20


def test_an_overwrite_takes_the_digest_the_scan_cached_for_exactly_that_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check before an overwrite reads a big file again only when the scan's digest may be
    stale: a same-size rewrite with the old mtime put back moves the ctime, so it is hashed and
    refused; an untouched file is not read a second time."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    root = tmp_path / "root"
    root.mkdir()
    (root / "big").write_bytes(b"a" * 4096)
    agent_digests.DIGEST_CACHES.clear()
    scanned = agent_scan.op_scan({"root": str(root), "racy_ms": 0})["entries"]["big"]
    hashed: list[int] = []
    real_hash = agent_digests.hash_fd
    monkeypatch.setattr(agent_digests, "hash_fd", lambda fd: hashed.append(fd) or real_hash(fd))

    def check() -> str:
        dfd, name, _ = agent_base.open_parent(str(root), "big", False)
        try:
            return agent_write.check_expect(dfd, name, scanned, "big", str(root))
        finally:
            os.close(dfd)

    assert check() == scanned[4] and hashed == []
    (root / "big").write_bytes(b"b" * 4096)
    os.utime(root / "big", ns=(scanned[2], scanned[2]))
    with pytest.raises(agent_base.AgentError) as changed:
        check()
    assert changed.value.type == "changed" and len(hashed) == 1


@pytest.mark.parametrize(
    ("op", "args"),
    [
        ("op_signature", {"block": 100}),  # below the smallest block a signer accepts
        ("op_signature", {"block": 1 << 30}),  # above the largest
        ("op_digest", {"length": -1}),
        ("op_digest", {}),
    ],
)
def test_the_agent_refuses_a_bad_block_or_length(tmp_path: Path, op: str, args: dict) -> None:
    """A request the client could never make is refused as invalid, before any file is read."""
    (tmp_path / "f").write_bytes(b"x" * 10_000)
    with pytest.raises(agent_base.AgentError) as refused:
        getattr(agent_read, op)({"root": str(tmp_path), "path": "f", **args})
    assert refused.value.type == "invalid"


def test_the_agent_hashes_a_file_start_and_refuses_what_is_not_a_file(tmp_path: Path) -> None:
    data = os.urandom(70_000)
    (tmp_path / "f").write_bytes(data)
    (tmp_path / "d").mkdir()
    (tmp_path / "l").symlink_to("f")
    got = agent_read.op_digest({"root": str(tmp_path), "path": "f", "length": 65_536})
    assert (got["size"], got["digest"]) == (70_000, hashlib.sha256(data[:65_536]).hexdigest())
    for name in ("d", "l"):
        with pytest.raises(agent_base.AgentError) as refused:
            agent_read.op_digest({"root": str(tmp_path), "path": name, "length": 1})
        assert refused.value.type == "invalid", name
