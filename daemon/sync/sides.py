"""The two ends of a pair behind one interface, so apply has a single transfer function.

:class:`Side` is what apply needs: read a file's bytes, and change one path at a time, each change
carrying the entry expected there (``expect``) so nothing edited since the scan is clobbered.
:class:`AgentSide` drives a tether agent (remote over SSH, or local as a subprocess);
:class:`LocalSide` reads in-process and hands its changes to a local agent started on first use,
so both sides stage, check and rename with the same code.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from .endpoint import Endpoint, Range, RemoteOpError, Seg, WriteItem
from .entry import Entry
from .sparse import read_pieces
from .transfer import StreamSide
from .wire import CHUNK


@dataclass(frozen=True, slots=True)
class Content:
    """A file's bytes as read for a transfer, with their SHA-256, computed once where they were
    read and checked again where they land."""

    data: bytes
    digest: str


O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)

Write = tuple[str, Content, Entry, "Entry | None"]
"""One file for :meth:`AgentSide.write_many`: (path, content, entry to create, expected there)."""


def read_to_end(fd: int, size: int) -> bytes:
    """Everything ``fd`` holds: one read() when it has the ``size`` bytes stat said (a short
    read of a regular file is its end), more only if it grew meanwhile. Cheaper per small file
    than a buffered file object, which stats again and reads once more to see the end."""
    parts = [os.read(fd, size + 1)]
    if len(parts[0]) <= size:
        return parts[0]
    while chunk := os.read(fd, max(size, 1 << 16)):
        parts.append(chunk)
    return b"".join(parts)


def process_umask() -> int:
    """This process's umask, read without changing it where the system says it
    (``/proc/self/status``, Linux 4.7+); elsewhere set and put back at once."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o077)
    os.umask(old)
    return old


class OpFailed(Exception):
    """One path could not be changed; ``kind`` is the agent's error type (``changed``, ...)."""

    def __init__(self, kind: str, message: str, path: str = "") -> None:
        super().__init__(message)
        self.kind, self.message, self.path = kind, message, path


class Side(StreamSide, Protocol):
    """One end of a pair, as apply sees it: what a big file's transfer needs of it
    (:class:`~tether.sync.transfer.StreamSide`: ``local``, ranged reads, signatures, streamed
    writes) and the whole-file and per-path operations."""

    label: str

    async def read(self, path: str, expect: Entry) -> Content: ...
    async def read_many(self, files: list[tuple[str, Entry]]) -> list[Content | OpFailed]: ...
    async def write(
        self, path: str, content: Content, entry: Entry, expect: Entry | None
    ) -> Entry: ...
    async def write_many(self, files: list[Write]) -> list[Entry | OpFailed]: ...
    async def mkdir(self, path: str, entry: Entry, expect: Entry | None) -> Entry: ...
    async def symlink(self, path: str, target: str, expect: Entry | None) -> Entry: ...
    async def delete(self, path: str, expect: Entry) -> None: ...
    async def rename(self, src: str, dst: str, expect: Entry) -> Entry: ...
    async def close(self) -> None: ...


def error_kind(exc: BaseException) -> str:
    """The agent's error type of a failed op (``changed``, ``no_space``, ...), else ``os``."""
    for name in ("type", "kind", "error_type", "code"):
        value = getattr(exc, name, None)
        if isinstance(value, str) and value:
            return value
    if isinstance(exc, PermissionError):
        return "permission"
    if isinstance(exc, FileNotFoundError):
        return "not_found"
    return "os"


async def _guard(call: Awaitable[Any], path: str) -> Any:
    """Run one agent call; a per-path failure becomes :class:`OpFailed`.

    A lost link (HostUnreachable) or bad host data is not per-path and propagates.
    """
    try:
        return await call
    except RemoteOpError as exc:
        raise OpFailed(exc.type, exc.message, path) from exc


class AgentSide:
    """A side driven by an :class:`~.endpoint.Endpoint`: a tether agent, or SFTP."""

    local = False

    def __init__(self, client: Endpoint, root: str, label: str) -> None:
        self.client, self.root, self.label = client, root, label

    async def read_range(self, path: str, offset: int, length: int) -> Range:
        got: Range = await _guard(self.client.read_range(self.root, path, offset, length), path)
        return got

    async def signature(self, path: str, block: int) -> tuple[bytes, int] | None:
        """The delta signature of ``path``; None where the host cannot make one (SFTP)."""
        got: tuple[bytes, int] | None = await _guard(
            self.client.signature(self.root, path, block), path
        )
        return got

    async def digest_prefix(self, path: str, length: int) -> tuple[str, int] | None:
        """The sha256 of the first ``length`` bytes of ``path``, and its size; None on SFTP."""
        got: tuple[str, int] | None = await _guard(
            self.client.digest_prefix(self.root, path, length), path
        )
        return got

    async def write_stream(
        self,
        path: str,
        frames: AsyncIterator[list[Seg]],
        entry: Entry,
        expect: Entry | None,
        digest: Callable[[], str],
        base: bool = False,
    ) -> Entry:
        call = self.client.write_stream(
            self.root,
            path,
            frames,
            mode=entry.mode & 0o777,
            mtime_ns=entry.mtime_ns,
            expect=expect,
            digest=digest,
            base=base,
        )
        result: Entry = await _guard(call, path)
        return result

    async def read(self, path: str, expect: Entry) -> Content:
        data, got = await _guard(self.client.read_entry(self.root, path), path)
        if got.digest != expect.digest:
            raise OpFailed("changed", f"{path} changed since it was scanned", path)
        return Content(data, got.digest)

    async def read_many(self, files: list[tuple[str, Entry]]) -> list[Content | OpFailed]:
        """Each file read on its own, all in flight at once over the agent's stream; a file
        that cannot be read is its OpFailed, anything else (a lost link) raises."""
        read = await asyncio.gather(
            *(self.read(path, expect) for path, expect in files), return_exceptions=True
        )
        for result in read:
            if isinstance(result, BaseException) and not isinstance(result, OpFailed):
                raise result
        return read  # type: ignore[return-value]

    async def write(self, path: str, content: Content, entry: Entry, expect: Entry | None) -> Entry:
        call = self.client.write(
            self.root,
            path,
            content.data,
            mode=entry.mode & 0o777,
            mtime_ns=entry.mtime_ns,
            expect=expect,
            digest=content.digest,
        )
        result: Entry = await _guard(call, path)
        return result

    async def write_many(self, files: list[Write]) -> list[Entry | OpFailed]:
        """Many small files in one request; each lands or fails (OpFailed) on its own."""
        items = [
            WriteItem(path, c.data, entry.mode & 0o777, entry.mtime_ns, expect, c.digest)
            for path, c, entry, expect in files
        ]
        results = await _guard(self.client.write_many(self.root, items), files[0][0])
        return [
            OpFailed(r.type, r.message, item.path) if isinstance(r, RemoteOpError) else r
            for item, r in zip(items, results, strict=True)
        ]

    async def mkdir(self, path: str, entry: Entry, expect: Entry | None) -> Entry:
        call = self.client.mkdir(self.root, path, mode=entry.mode & 0o7777 or None, expect=expect)
        result: Entry = await _guard(call, path)
        return result

    async def symlink(self, path: str, target: str, expect: Entry | None) -> Entry:
        result: Entry = await _guard(
            self.client.symlink(self.root, path, target, expect=expect), path
        )
        return result

    async def delete(self, path: str, expect: Entry) -> None:
        await _guard(self.client.delete(self.root, path, expect=expect), path)

    async def rename(self, src: str, dst: str, expect: Entry) -> Entry:
        result: Entry = await _guard(self.client.rename(self.root, src, dst, expect=expect), src)
        return result

    async def close(self) -> None:
        await self.client.close()


class LocalSide:
    """This machine's folder: reads in-process, changes through a local agent started lazily."""

    label = "local"
    local = True

    def __init__(self, root: Path, spawn: Callable[[], Awaitable[Endpoint]]) -> None:
        self.root = root
        self._spawn = spawn
        self._agent: AgentSide | None = None
        self._lock = asyncio.Lock()
        self._umask = process_umask()

    def _masked(self, entry: Entry) -> Entry:
        """``entry`` with the local umask taken off its mode: a host's 0777 folder or 0666 file
        must not come out writable by every local user (only the executable bits are synced,
        and a umask keeps the owner's)."""
        return replace(entry, mode=entry.mode & ~self._umask)

    async def _writer(self) -> AgentSide:
        async with self._lock:
            if self._agent is None:  # the folder made off the loop: a slow mount takes seconds
                await asyncio.to_thread(self.root.mkdir, parents=True, exist_ok=True)
                self._agent = AgentSide(await self._spawn(), str(self.root), "local")
            return self._agent

    async def read(self, path: str, expect: Entry) -> Content:
        """One file (apply reads a big one so; small ones come in batches, :meth:`read_many`),
        off the event loop."""
        return await asyncio.to_thread(self._load, path, expect)

    async def read_many(self, files: list[tuple[str, Entry]]) -> list[Content | OpFailed]:
        """Small files read and hashed in one worker thread: the event loop keeps sending the
        previous batch meanwhile (hashlib and file reads release the GIL)."""

        def load_all() -> list[Content | OpFailed]:
            out: list[Content | OpFailed] = []
            for path, expect in files:
                try:
                    out.append(self._load(path, expect))
                except OpFailed as exc:
                    out.append(exc)
            return out

        return await asyncio.to_thread(load_all)

    def _load(self, path: str, expect: Entry) -> Content:
        """The file's bytes, if it is still what the scan saw: the same digest, or, for a file
        the scan left unhashed (``expect.digest`` empty), the same size and mtime before and
        after the read (what the digest cache trusts too)."""
        try:
            fd = os.open(os.path.join(self.root, path), os.O_RDONLY | O_NOFOLLOW)
            try:
                before = os.fstat(fd)
                data = read_to_end(fd, before.st_size)
                after = os.fstat(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise OpFailed(error_kind(exc), f"{path}: {exc.strerror or exc}", path) from exc
        digest = hashlib.sha256(data).hexdigest()
        if expect.digest:
            unchanged = digest == expect.digest
        else:
            seen = {(st.st_size, st.st_mtime_ns) for st in (before, after)}
            unchanged = len(data) == expect.size and seen == {(expect.size, expect.mtime_ns)}
        if not unchanged:
            raise OpFailed("changed", f"{path} changed since it was scanned", path)
        return Content(data, digest)

    async def read_range(self, path: str, offset: int, length: int) -> Range:
        """Part of a big file, holes left out, off the event loop."""

        def load() -> Range:
            try:
                fd = os.open(os.path.join(self.root, path), os.O_RDONLY | O_NOFOLLOW)
                try:
                    st = os.fstat(fd)
                    pieces = read_pieces(fd, offset, min(length, CHUNK), st.st_size)
                finally:
                    os.close(fd)
            except OSError as exc:
                raise OpFailed(error_kind(exc), f"{path}: {exc.strerror or exc}", path) from exc
            return Range(st.st_size, st.st_mtime_ns, st.st_mode & 0o7777, pieces)

        return await asyncio.to_thread(load)

    async def signature(self, path: str, block: int) -> tuple[bytes, int] | None:
        return await (await self._writer()).signature(path, block)

    async def digest_prefix(self, path: str, length: int) -> tuple[str, int] | None:
        return await (await self._writer()).digest_prefix(path, length)

    async def write_stream(
        self,
        path: str,
        frames: AsyncIterator[list[Seg]],
        entry: Entry,
        expect: Entry | None,
        digest: Callable[[], str],
        base: bool = False,
    ) -> Entry:
        writer = await self._writer()
        return await writer.write_stream(path, frames, entry, expect, digest, base)

    async def write(self, path: str, content: Content, entry: Entry, expect: Entry | None) -> Entry:
        return await (await self._writer()).write(path, content, self._masked(entry), expect)

    async def write_many(self, files: list[Write]) -> list[Entry | OpFailed]:
        masked = [(path, c, self._masked(entry), expect) for path, c, entry, expect in files]
        return await (await self._writer()).write_many(masked)

    async def mkdir(self, path: str, entry: Entry, expect: Entry | None) -> Entry:
        return await (await self._writer()).mkdir(path, self._masked(entry), expect)

    async def symlink(self, path: str, target: str, expect: Entry | None) -> Entry:
        return await (await self._writer()).symlink(path, target, expect)

    async def delete(self, path: str, expect: Entry) -> None:
        await (await self._writer()).delete(path, expect)

    async def rename(self, src: str, dst: str, expect: Entry) -> Entry:
        return await (await self._writer()).rename(src, dst, expect)

    async def close(self) -> None:
        if self._agent is not None:
            await self._agent.close()
            self._agent = None
