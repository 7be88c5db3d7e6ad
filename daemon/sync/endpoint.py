"""What the sync engine asks of the host's end of a pair, as one declared interface.

Two implementations answer it: the tether agent over its stream
(:class:`tether.transport.agent_client.AgentClient`, on the host over SSH or here as a
subprocess) and the SFTP fallback for a host without Python
(:class:`tether.transport.sftp_endpoint.SftpEndpoint`). The engine, apply and the sides are typed
against :class:`Endpoint` and the plain data below, never against either class, so they import
no SSH library: the layer that opens connections builds the endpoints and hands them in
(:class:`Connector`, implemented in :mod:`tether.transport.endpoints`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Protocol, TypeAlias

from ..config import Config, HostConfig, PairConfig
from ..errors import RemoteError
from .entry import Entry

_HINTS = {
    "no_space": "free some disk space on the host",
    "read_only": "the remote folder is on a read-only filesystem",
    "permission": "check the remote folder's owner and permissions",
    "changed": "the path changed on the host; it will be rescanned",
    "no_venv": "create it there, or fix the host's venv in tether.toml",
}


class RemoteOpError(RemoteError):
    """An operation failed on the host; ``type`` is the agent's error type (``changed``, ...)."""

    def __init__(self, type_: str, message: str, path: str | None = None) -> None:
        super().__init__(message, _HINTS.get(type_, ""))
        self.type = type_
        self.path = path


class ExpectationFailed(RemoteOpError):
    """The path no longer holds what the caller expected: rescan instead of overwriting."""


@dataclass(frozen=True)
class ScanResult:
    """One side's snapshot as the host saw it."""

    exists: bool
    is_dir: bool
    entries: dict[str, Entry]
    stats: dict[str, int] = field(default_factory=dict)
    """files, hashed (read to compute a digest), hashed_bytes."""
    token: str = ""
    """With ``delta=True``: the host's name for this snapshot (pass it as ``since`` next time)."""
    sent: int = -1
    """How many entries the host actually sent (-1: all of them, no delta)."""


@dataclass(frozen=True)
class WriteItem:
    """One file of :meth:`Endpoint.write_many`."""

    path: str
    data: bytes
    mode: int
    mtime_ns: int
    expect: Entry | None
    digest: str = ""
    """The SHA-256 of ``data`` when the caller already has it (computed here otherwise)."""


Seg: TypeAlias = bytes | int | tuple[int, int]
"""Part of a streamed write: bytes, a hole of that many zeros, or (offset, length) copied from
the target as it was (a delta)."""


@dataclass(frozen=True)
class Range:
    """A range of a file as :meth:`Endpoint.read_range` got it, and the file's stat then."""

    size: int
    mtime_ns: int
    mode: int
    pieces: list[bytes | int]
    """Data, and holes (ints: that many zero bytes), covering the range in order."""


@dataclass(frozen=True)
class Probe:
    """A host folder as :meth:`Endpoint.probe` found it (before a first sync, a fetch, a bench)."""

    exists: bool
    created: bool
    """It was missing and the probe made it (``create=True``)."""
    is_dir: bool
    writable: bool
    free_bytes: int | None
    """Room left on its filesystem (or its nearest existing parent's); None when unknown."""


class Endpoint(Protocol):
    """One end of a pair that holds its files elsewhere than this process: every path is
    relative to ``root``, and every change carries the entry expected there (``expect``), so
    nothing edited since the scan is clobbered (:class:`ExpectationFailed` instead)."""

    @property
    def home(self) -> str | None:
        """The host user's home folder (a relative or ``~`` root is under it); None unknown."""
        ...

    async def scan(
        self,
        root: str,
        ignore: Sequence[tuple[str, bool]] = (),
        paths: Sequence[str] | None = None,
        *,
        delta: bool = False,
        since: tuple[str, dict[str, Entry]] | None = None,
    ) -> ScanResult: ...
    async def read_entry(self, root: str, path: str) -> tuple[bytes, Entry]: ...
    async def read_range(
        self, root: str, path: str, offset: int, length: int, *, holes: bool = True
    ) -> Range: ...
    async def signature(self, root: str, path: str, block: int) -> tuple[bytes, int] | None:
        """The delta signature of ``path`` and the size it was made of; None where the end
        cannot make one (SFTP): the file is then sent whole."""
        ...

    async def digest_prefix(self, root: str, path: str, length: int) -> tuple[str, int] | None:
        """The sha256 of the first ``length`` bytes of ``path`` and the file's size; None where
        the end cannot hash on its side (SFTP)."""
        ...

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
    ) -> Entry: ...
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
    ) -> Entry: ...
    async def write_many(
        self, root: str, files: Sequence[WriteItem]
    ) -> list[Entry | RemoteOpError]: ...
    async def mkdir(
        self, root: str, path: str, *, mode: int | None = None, expect: Entry | None = None
    ) -> Entry: ...
    async def symlink(
        self, root: str, path: str, target: str, *, expect: Entry | None
    ) -> Entry: ...
    async def delete(self, root: str, path: str, *, expect: Entry) -> None: ...
    async def rename(self, root: str, src: str, dst: str, *, expect: Entry) -> Entry: ...
    async def probe(self, path: str, *, create: bool = False) -> Probe: ...
    async def close(self) -> None: ...


class Connector(Protocol):
    """What the engine needs from the layer that opens connections, handed in so that the
    engine itself never imports SSH: the pair's host end, a local agent to write this side's
    files, and the host's name as the pair's identity records it."""

    def remote(self, config: Config, pair: PairConfig) -> AbstractAsyncContextManager[Endpoint]:
        """The pair's host end, open for the ``async with`` block and closed after it."""
        ...

    def spawn_local(self) -> Awaitable[Endpoint]:
        """An agent on this machine (a subprocess) that writes the local side's files."""
        ...

    def host_label(self, host: HostConfig) -> str:
        """The host as the identity records it (user@name:port, and any jump)."""
        ...
