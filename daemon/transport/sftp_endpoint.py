"""The host end of a pair over plain SFTP, for hosts without a usable python3.

It implements the :class:`~tether.sync.endpoint.Endpoint` Protocol as the agent's client does (scan,
reads, writes, mkdir, symlink, delete, rename, probe), so the engine runs unchanged. It keeps the
agent's rules: every path the host names is validated, a symlink escaping the root becomes
UNTRACKED, nothing is written except to a temporary name beside its target and renamed into place
(``posix-rename``), and each change first checks that the target still is what the caller expects.
What it cannot do as well: no digest cache on the host (every file is read to hash it on each scan),
one round trip per directory, and mtimes at SFTP's one-second resolution. That is why it is a
fallback, announced with a warning."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import posixpath
import stat
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import asyncssh

from ..errors import BadHostData
from ..sync.endpoint import (
    ExpectationFailed,
    Probe,
    Range,
    RemoteOpError,
    ScanResult,
    Seg,
    WriteItem,
)
from ..sync.entry import Entry, EntryKind
from ..sync.paths import check_relpath, escaping_link_problem, symlink_stays_inside
from ..sync.tempnames import is_stale, is_temp, machine_id, pid_alive, temp_name
from ..sync.wire import CHUNK, WINDOW, WireRules, foreign_name

_WRITING: set[str] = set()
"""The host paths of the temporaries this process is writing now, over any SFTP session. One of
this process's that is not here was left by a write the link cut: stale."""


def _writer_alive(pid: int) -> bool:
    """Whether process ``pid`` of this machine may still write a temporary it named."""
    return pid_alive(pid) if pid != os.getpid() else False


def _error(exc: asyncssh.SFTPError, path: str) -> RemoteOpError:
    kind = {
        asyncssh.FX_NO_SUCH_FILE: "not_found",
        asyncssh.FX_PERMISSION_DENIED: "permission",
        asyncssh.FX_FILE_ALREADY_EXISTS: "exists",
        asyncssh.FX_NO_SPACE_ON_FILESYSTEM: "no_space",
        asyncssh.FX_WRITE_PROTECT: "read_only",
        asyncssh.FX_DIR_NOT_EMPTY: "not_empty",
    }.get(exc.code, "os")
    if kind == "os" and "space" in str(exc.reason).lower():
        kind = "no_space"
    return RemoteOpError(kind, f"sftp: {exc.reason}", path)


def _data(got: bytes | str) -> bytes:
    """A read from a file opened ``"rb"``: asyncssh types it as str or bytes; binary mode
    always gives bytes."""
    if isinstance(got, str):
        raise TypeError("an SFTP file opened in binary mode returned text")
    return got


def _filename(name: asyncssh.SFTPName) -> str:
    """A listed name as a path string (the session decodes names; bytes only if it did not)."""
    return os.fsdecode(name.filename)


class SftpEndpoint:
    """The agent's file operations, spoken over an SFTP session."""

    remote_dir: str | None = None  # no agent install folder: runs need the agent
    home: str
    """The login's home folder, as the SFTP server resolves ``.``."""

    def __init__(self, sftp: asyncssh.SFTPClient, home: str) -> None:
        self.sftp, self.home = sftp, home

    @classmethod
    async def start(cls, conn: asyncssh.SSHClientConnection) -> SftpEndpoint:
        # Names are bytes: one that is not UTF-8 comes and goes as os.fsdecode spells it.
        sftp = await conn.start_sftp_client(path_errors="surrogateescape")
        return cls(sftp, await sftp.realpath("."))

    async def close(self) -> None:
        self.sftp.exit()
        await self.sftp.wait_closed()

    # -- paths -----------------------------------------------------------------------------------

    def _root(self, root: str) -> str:
        if root == "~" or root.startswith("~/"):
            return self.home + root[1:]
        return root if root.startswith("/") else posixpath.join(self.home, root)

    def _abs(self, root: str, path: str) -> str:
        return posixpath.join(self._root(root), check_relpath(path, origin="the caller"))

    # -- reading -----------------------------------------------------------------------------

    async def _hash(self, full: str) -> str:
        digest = hashlib.sha256()
        async with self.sftp.open(full, "rb") as fh:
            while chunk := _data(await fh.read(CHUNK)):
                digest.update(chunk)
        return digest.hexdigest()

    async def _entry(self, full: str, rel: str, attrs: asyncssh.SFTPAttrs) -> Entry:
        mode, mtime_ns = attrs.permissions or 0, int((attrs.mtime or 0) * 1_000_000_000)
        kind = stat.S_IFMT(mode)
        if kind == stat.S_IFREG:
            try:
                digest = await self._hash(full)
            except asyncssh.SFTPError as exc:
                return Entry(EntryKind.PROBLEM, problem=f"cannot read: {exc.reason}")
            return Entry(EntryKind.FILE, attrs.size or 0, mtime_ns, mode & 0o7777, digest)
        if kind == stat.S_IFDIR:
            return Entry(EntryKind.DIRECTORY, 0, mtime_ns, mode & 0o7777)
        if kind == stat.S_IFLNK:
            target = await self.sftp.readlink(full)
            if symlink_stays_inside(rel, target):
                return Entry(EntryKind.SYMLINK, 0, mtime_ns, 0, target=target)
            why = escaping_link_problem(target)
            return Entry(EntryKind.UNTRACKED, 0, mtime_ns, mode & 0o7777, problem=why)
        return Entry(EntryKind.UNTRACKED, 0, mtime_ns, mode & 0o7777)

    async def scan(
        self,
        root: str,
        ignore: Sequence[tuple[str, bool]] = (),
        paths: Sequence[str] | None = None,
        **_: Any,
    ) -> ScanResult:
        """A full, validated snapshot of ``root`` (``paths`` narrows it; deltas are not kept)."""
        ignored = WireRules(ignore)

        top = self._root(root)
        try:
            attrs = await self.sftp.stat(top)
        except asyncssh.SFTPNoSuchFile:
            return ScanResult(False, False, {})
        if not stat.S_ISDIR(attrs.permissions or 0):
            return ScanResult(True, False, {})
        entries: dict[str, Entry] = {}
        starts = [""] if paths is None else sorted({check_relpath(p) for p in paths})
        for start in starts:
            await self._walk(top, start, ignored, entries)
        files = sum(e.kind is EntryKind.FILE for e in entries.values())
        return ScanResult(True, True, entries, {"files": files, "hashed": files})

    async def _walk(
        self, top: str, start: str, ignored: WireRules, entries: dict[str, Entry]
    ) -> None:
        if start:
            try:
                attrs = await self.sftp.lstat(posixpath.join(top, start))
            except asyncssh.SFTPNoSuchFile:
                return
            parts = start.split("/")
            for depth in range(1, len(parts)):  # ancestors too, as the agent reports them
                entries.setdefault("/".join(parts[:depth]), Entry(EntryKind.DIRECTORY))
            entries[start] = await self._entry(posixpath.join(top, start), start, attrs)
            if entries[start].kind is not EntryKind.DIRECTORY:
                return
        pending = [start]
        while pending:
            folder = pending.pop()
            for name in await self.sftp.readdir(posixpath.join(top, folder) if folder else top):
                filename = _filename(name)
                if filename in (".", ".."):
                    continue
                if is_temp(filename):
                    await self._drop_if_stale(posixpath.join(top, folder, filename), name)
                    continue
                rel = f"{folder}/{filename}" if folder else filename
                is_dir = stat.S_ISDIR(name.attrs.permissions or 0)
                foreign = foreign_name(filename)
                try:
                    check_relpath(rel, foreign_ok=foreign is not None)
                except BadHostData:
                    raise BadHostData(f"the host's folder holds an unsafe name: {rel!r}") from None
                if ignored(rel, is_dir):
                    continue
                if foreign is not None:  # listed, reported, never synced (as the agent does)
                    entries[rel] = Entry(EntryKind.UNTRACKED, problem=foreign)
                    continue
                entries[rel] = await self._entry(posixpath.join(top, rel), rel, name.attrs)
                if entries[rel].kind is EntryKind.DIRECTORY:
                    pending.append(rel)

    async def read_entry(self, root: str, path: str) -> tuple[bytes, Entry]:
        full = self._abs(root, path)
        try:
            attrs = await self.sftp.lstat(full)
            async with self.sftp.open(full, "rb") as fh:
                data = _data(await fh.read())
        except asyncssh.SFTPError as exc:
            raise _error(exc, path) from None
        entry = Entry(
            EntryKind.FILE,
            len(data),
            int((attrs.mtime or 0) * 1e9),
            (attrs.permissions or 0) & 0o7777,
            hashlib.sha256(data).hexdigest(),
        )
        return data, entry

    async def read(self, root: str, path: str) -> bytes:
        return (await self.read_entry(root, path))[0]

    async def signature(self, root: str, path: str, block: int) -> None:
        """None: SFTP cannot compute a delta signature on the host, so the file goes whole."""
        return

    async def digest_prefix(self, root: str, path: str, length: int) -> None:
        """None: SFTP cannot hash on the host (an appended file then goes whole)."""
        return

    async def read_range(
        self, root: str, path: str, offset: int, length: int, *, holes: bool = True
    ) -> Range:
        """Up to CHUNK bytes of ``path`` from ``offset`` (SFTP cannot see holes: all data)."""
        full = self._abs(root, path)
        try:
            attrs = await self.sftp.lstat(full)
            async with self.sftp.open(full, "rb") as fh:
                data = _data(await fh.read(min(length, CHUNK), offset))
        except asyncssh.SFTPError as exc:
            raise _error(exc, path) from None
        mtime_ns = int((attrs.mtime or 0) * 1e9)
        return Range(attrs.size or 0, mtime_ns, (attrs.permissions or 0) & 0o7777, [data])

    # -- writing -----------------------------------------------------------------------------

    async def _current(self, full: str, rel: str) -> Entry | None:
        try:
            attrs = await self.sftp.lstat(full)
        except asyncssh.SFTPNoSuchFile:
            return None
        return await self._entry(full, rel, attrs)

    async def _check(self, full: str, rel: str, expect: Entry | None) -> None:
        """Refuse (``changed``) unless the target is what the caller saw in its scan.

        As the agent does: a file whose size, mode and mtime match is taken as unchanged; one
        whose mtime alone moved is hashed; anything else has changed.
        """
        try:
            attrs = await self.sftp.lstat(full)
        except asyncssh.SFTPNoSuchFile:
            attrs = None
        if expect is None or attrs is None:
            if expect is not None or attrs is not None:
                raise ExpectationFailed(
                    "changed", f"{rel} appeared or vanished since the scan", rel
                )
            return
        mode = attrs.permissions or 0
        if expect.kind is EntryKind.FILE and stat.S_ISREG(mode):
            if attrs.size != expect.size or (mode & 0o111) != (expect.mode & 0o111):
                raise ExpectationFailed("changed", f"{rel} was edited since the scan", rel)
            if int((attrs.mtime or 0) * 1e9) // 10**9 == expect.mtime_ns // 10**9:
                return
        current = await self._entry(full, rel, attrs)
        if not expect.same_content(current):
            raise ExpectationFailed("changed", f"{rel} changed since the scan", rel)

    def _temp(self, full: str) -> str:
        folder, name = posixpath.split(full)
        return posixpath.join(folder, temp_name(name))

    async def _drop_if_stale(self, full: str, name: asyncssh.SFTPName) -> None:
        """Remove ``full``, a temporary, if its writer is gone (:mod:`tether.sync.tempnames`)."""
        if full in _WRITING or stat.S_ISDIR(name.attrs.permissions or 0):
            return
        age_s = time.time() - (name.attrs.mtime or 0)
        if is_stale(_filename(name), age_s, machine_id(), _writer_alive):
            with contextlib.suppress(asyncssh.SFTPError):
                await self.sftp.remove(full)

    async def write(
        self,
        root: str,
        path: str,
        data: bytes,
        *,
        mode: int,
        mtime_ns: int,
        expect: Entry | None,
        digest: str = "",
    ) -> Entry:
        full = self._abs(root, path)
        temp = self._temp(full)
        async with self._staged(temp, path):
            await self.sftp.makedirs(posixpath.dirname(full), exist_ok=True)
            async with self.sftp.open(temp, "wb") as fh:
                await fh.write(data)
            await self.sftp.setstat(
                temp,
                asyncssh.SFTPAttrs(
                    permissions=mode & 0o7777, atime=mtime_ns // 10**9, mtime=mtime_ns // 10**9
                ),
            )
            await self._check(full, path, expect)
            await self.sftp.posix_rename(temp, full)
        digest = digest or hashlib.sha256(data).hexdigest()
        return Entry(EntryKind.FILE, len(data), (mtime_ns // 10**9) * 10**9, mode & 0o7777, digest)

    async def write_stream(
        self,
        root: str,
        path: str,
        frames: AsyncIterator[list[Seg]],
        *,
        mode: int,
        mtime_ns: int,
        expect: Entry | None,
        digest: Callable[[], str],
        base: bool = False,
        fsync: bool = False,
    ) -> Entry:
        """Write a streamed file to a temp beside the target, WINDOW writes in flight; holes
        are skipped (the size is set at the end), so they stay holes where the host's
        filesystem allows. No copies (no delta: SFTP has no signatures); ``digest()`` must be
        the sha256 of what the frames held (the sender hashes them), SSH vouches for the rest."""
        full = self._abs(root, path)
        temp = self._temp(full)
        async with self._staged(temp, path):
            await self.sftp.makedirs(posixpath.dirname(full), exist_ok=True)
            async with self.sftp.open(temp, "wb") as fh:
                offset = await _write_frames(fh, frames, path)
            await self.sftp.setstat(
                temp,
                asyncssh.SFTPAttrs(
                    size=offset,
                    permissions=mode & 0o7777,
                    atime=mtime_ns // 10**9,
                    mtime=mtime_ns // 10**9,
                ),
            )
            await self._check(full, path, expect)
            await self.sftp.posix_rename(temp, full)
        return Entry(EntryKind.FILE, offset, (mtime_ns // 10**9) * 10**9, mode & 0o7777, digest())

    @contextlib.asynccontextmanager
    async def _staged(self, temp: str, path: str) -> AsyncIterator[None]:
        """The block writes ``temp`` and renames it into place: while it runs, ``temp`` is
        listed as this process's own (a scan never takes it for a cut write's leftover), and
        if it fails the temporary goes (an SFTP error becomes the path's own error)."""
        _WRITING.add(temp)
        try:
            yield
        except asyncssh.SFTPError as exc:
            await self._discard(temp)
            raise _error(exc, path) from None
        except BaseException:
            await self._discard(temp)
            raise
        finally:
            _WRITING.discard(temp)

    async def _discard(self, temp: str) -> None:
        with contextlib.suppress(asyncssh.SFTPError):
            await self.sftp.remove(temp)

    async def write_many(
        self, root: str, files: Sequence[WriteItem], **_: Any
    ) -> list[Entry | RemoteOpError]:
        async def one(item: WriteItem) -> Entry | RemoteOpError:
            try:
                return await self.write(
                    root,
                    item.path,
                    item.data,
                    mode=item.mode,
                    mtime_ns=item.mtime_ns,
                    expect=item.expect,
                    digest=item.digest,
                )
            except RemoteOpError as exc:
                return exc

        return list(await asyncio.gather(*(one(item) for item in files)))

    async def mkdir(
        self, root: str, path: str, *, mode: int | None = None, expect: Entry | None = None
    ) -> Entry:
        full = self._abs(root, path)
        try:
            current = await self._current(full, path)
            if current is not None and current.kind is EntryKind.DIRECTORY:
                return current
            await self._check(full, path, expect)
            await self.sftp.makedirs(posixpath.dirname(full), exist_ok=True)
            await self.sftp.mkdir(full, asyncssh.SFTPAttrs(permissions=(mode or 0o755) & 0o7777))
        except asyncssh.SFTPError as exc:
            raise _error(exc, path) from None
        return Entry(EntryKind.DIRECTORY, 0, 0, (mode or 0o755) & 0o7777)

    async def symlink(self, root: str, path: str, target: str, *, expect: Entry | None) -> Entry:
        if not symlink_stays_inside(path, target):
            raise RemoteOpError("invalid", f"{path} -> {target} escapes the root", path)
        full = self._abs(root, path)
        temp = self._temp(full)
        async with self._staged(temp, path):
            await self._check(full, path, expect)
            await self.sftp.symlink(target, temp)
            await self.sftp.posix_rename(temp, full)
        return Entry(EntryKind.SYMLINK, target=target)

    async def delete(self, root: str, path: str, *, expect: Entry) -> None:
        full = self._abs(root, path)
        try:
            await self._check(full, path, expect)
            if expect.kind is EntryKind.DIRECTORY:
                await self.sftp.rmdir(full)
            else:
                await self.sftp.remove(full)
        except asyncssh.SFTPError as exc:
            raise _error(exc, path) from None

    async def rename(self, root: str, src: str, dst: str, *, expect: Entry) -> Entry:
        full_src, full_dst = self._abs(root, src), self._abs(root, dst)
        try:
            await self._check(full_src, src, expect)
            if await self._current(full_dst, dst) is not None:
                raise RemoteOpError("exists", f"{dst} already exists", dst)
            await self.sftp.posix_rename(full_src, full_dst)
        except asyncssh.SFTPError as exc:
            raise _error(exc, src) from None
        return expect

    async def probe(self, path: str, *, create: bool = False) -> Probe:
        full = self._root(path)
        exists = await self.sftp.exists(full)
        created = False
        if not exists and create:
            await self.sftp.makedirs(full, exist_ok=True)
            exists = created = True
        is_dir = exists and await self.sftp.isdir(full)
        free = None
        try:
            vfs = await self.sftp.statvfs(full if exists else posixpath.dirname(full))
            free = vfs.bavail * vfs.frsize
        except asyncssh.SFTPError:
            pass
        return Probe(exists, created, is_dir, writable=is_dir, free_bytes=free)


async def _write_frames(fh: Any, frames: AsyncIterator[list[Seg]], path: str) -> int:
    """Write the frames' data at their offsets into the open ``fh``, WINDOW writes in flight;
    holes are skipped. Returns the size the frames describe; a failure cancels the writes
    still in flight."""
    offset = 0
    pending: set[asyncio.Future[Any]] = set()
    try:
        async for frame in frames:
            for seg in frame:
                if isinstance(seg, tuple):
                    raise RemoteOpError("invalid", "sftp: no delta copies", path)
                if isinstance(seg, int):
                    offset += seg
                    continue
                if len(pending) >= WINDOW:
                    done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                    for task in done:
                        task.result()
                pending.add(asyncio.ensure_future(fh.write(seg, offset)))
                offset += len(seg)
        while pending:
            await pending.pop()
    finally:
        for task in pending:
            task.cancel()
    return offset
