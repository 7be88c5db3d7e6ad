"""watchdog → asyncio: a folder's changes as batches of root-relative paths, coalesced per path.

::

    async with LocalWatcher(root, ignore=rules) as watcher:
        async for paths in watcher:          # frozenset[str], e.g. {"src/a.py", "src/new"}
            session.mark_dirty(paths)

How a batch forms: the watchdog observer thread hands each event to the loop with
``call_soon_threadsafe``; a batch is emitted once no new event arrived for ``coalesce_ms``, but
never later than ``max_delay_ms`` after its first event, so a constant stream still flushes. A path
is in a batch once however many events it had. When the consumer is slower than the events, the
batches waiting for it are merged into one.

What is reported: a created, modified, deleted or closed-after-write path, both ends of a move, and
a folder's own path when the folder is created, deleted or moved (never its contents one by one,
unless watchdog reports them, as it does for a folder created with files already in it). Not
reported: paths outside the root, paths ``ignore(relpath, is_dir)`` drops (a path under an ignored
folder is dropped too, as git does), opened/closed-without-writing events, and a folder's own
"modified" event (watchdog emits one on the parent of every created or deleted child; reporting it
would make each edit look like a change to its whole folder). The root itself, deleted or moved
away, is reported as ``"."``. No backend tells a watch that its own folder (or a folder above
it) was moved or replaced, so the watcher also looks at the root's identity (device, inode) every
``root_check_s`` seconds, one ``stat`` each, and reports ``"."`` when it is gone or is another
folder.

Echo suppression: after the sync engine writes files it calls :meth:`LocalWatcher.suppress` with
what it wrote; events for those paths within the window are dropped while the file on disk still
matches, so a user's edit made right after is still seen.

Choosing the backend (watchfiles' order): the ``force_polling`` argument, else the
``TETHER_FORCE_POLLING`` environment variable, else, on Linux, a check that inotify has watches
enough: watchdog's inotify backend puts one watch on every folder below the root (ignored ones
included: it cannot prune) and silently misses events in folders it could not watch, so the folders
are counted first and compared with ``fs.inotify.max_user_watches`` minus a margin left for other
programs. Over it, the watcher polls and says how to raise the limit
(:attr:`LocalWatcher.warnings`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import posixpath
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Protocol

# Imported here, never inside the observer thread: on CPython 3.11 a first import that compiles
# in a thread while the loop thread compiles too can raise SystemError.
from watchdog import events as wd
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

log = logging.getLogger(__name__)

CHANGE_EVENTS: list[type[wd.FileSystemEvent]] = [
    wd.FileCreatedEvent, wd.FileModifiedEvent, wd.FileDeletedEvent, wd.FileMovedEvent,
    wd.FileClosedEvent, wd.FileAttribEvent, wd.DirCreatedEvent, wd.DirDeletedEvent,
    wd.DirMovedEvent, wd.DirModifiedEvent, wd.DirAttribEvent,
]  # fmt: skip
"""What can mean a change. Opens and read-only closes are not asked for: the scanner reads every
file it hashes, and two events per read could overflow the kernel's inotify queue (16384 here)
during a large sync."""

FORCE_POLLING_ENV = "TETHER_FORCE_POLLING"
INOTIFY_LIMIT_FILE = Path("/proc/sys/fs/inotify/max_user_watches")
RECOMMENDED_INOTIFY_WATCHES = 524288

Emit = Callable[[str, str, str | None, bool], None]
"""``emit(kind, src_path, dest_path, is_dir)``: how an event source hands over one event; safe to
call from any thread. ``kind`` is watchdog's ``event_type`` ("created", "modified", "deleted",
"moved", "closed", "closed_no_write", "opened"); paths are absolute, or relative to the root;
``dest_path`` is set for "moved" only."""

Fingerprint = tuple[int, int]
"""``(size, mtime_ns)`` of a file as the sync engine wrote it (:meth:`LocalWatcher.suppress`)."""

_REPORTED_KINDS = frozenset({"created", "modified", "deleted", "moved", "closed"})
_ANY = object()  # suppress() without a fingerprint: drop every event in the window


class EventSource(Protocol):
    """What produces raw events; watchdog in production, :class:`ManualSource` in tests."""

    @property
    def mode(self) -> str:
        """A short name for status output: "inotify", "polling", "fsevents", "manual", ..."""
        ...

    def start(self, emit: Emit) -> None:
        """Deliver events to ``emit``. Blocking (it may walk the tree): run off the loop."""
        ...

    def stop(self) -> None:
        """Stop delivering events and join any thread. Blocking; run off the loop."""
        ...


class _Handler:
    """A watchdog event handler that forwards every event as plain strings."""

    def __init__(self, emit: Emit) -> None:
        self._emit = emit

    def dispatch(self, event: object) -> None:
        src = os.fsdecode(event.src_path)  # type: ignore[attr-defined]
        dest = os.fsdecode(getattr(event, "dest_path", "") or "") or None
        self._emit(event.event_type, src, dest, bool(event.is_directory))  # type: ignore[attr-defined]


class WatchdogSource:
    """Events from a watchdog observer (the platform's native one, or polling)."""

    def __init__(self, root: Path, *, polling: bool = False, poll_interval_s: float = 0.5) -> None:
        self.root = root
        self.polling = polling
        self.poll_interval_s = poll_interval_s
        self._observer: object | None = None

    @property
    def mode(self) -> str:
        if self.polling:
            return "polling"
        names = {
            "InotifyObserver": "inotify",
            "FSEventsObserver": "fsevents",
            "KqueueObserver": "kqueue",
            "WindowsApiObserver": "windows",
        }
        # watchdog types Observer as a factory; at run time it is the platform's observer class.
        kind: str = getattr(Observer, "__name__", "native")
        return names.get(kind, kind)

    def start(self, emit: Emit) -> None:
        observer = PollingObserver(timeout=self.poll_interval_s) if self.polling else Observer()
        observer.schedule(
            _Handler(emit),  # type: ignore[arg-type]
            str(self.root),
            recursive=True,
            event_filter=CHANGE_EVENTS,
        )
        observer.start()
        self._observer = observer

    def stop(self) -> None:
        observer, self._observer = self._observer, None
        if observer is not None:
            observer.stop()  # type: ignore[attr-defined]
            observer.join(timeout=10)  # type: ignore[attr-defined]


class ManualSource:
    """A scripted event source: tests (and other modules' tests) :meth:`push` events by hand."""

    mode = "manual"

    def __init__(self) -> None:
        self._emit: Emit | None = None
        self.started = False
        self.stopped = False

    def start(self, emit: Emit) -> None:
        self._emit = emit
        self.started = True

    def stop(self) -> None:
        self._emit = None
        self.stopped = True

    def push(self, kind: str, src: str, dest: str | None = None, is_dir: bool = False) -> None:
        """Deliver one event, as a watchdog thread would (callable from any thread)."""
        if self._emit is not None:
            self._emit(kind, src, dest, is_dir)


def inotify_watch_limit() -> int | None:
    """``fs.inotify.max_user_watches``, or None where there is no such setting."""
    try:
        return int(INOTIFY_LIMIT_FILE.read_text().strip())
    except (OSError, ValueError):
        return None


def inotify_budget(limit: int) -> int:
    """How many of ``limit`` watches one watcher may plan to use: a margin stays for other programs
    (editors and IDEs watch folders too), a quarter of the limit but at most 4096."""
    return limit - min(limit // 4, 4096)


def count_dirs(root: Path, stop_after: int | None = None) -> int:
    """Folders at and below ``root`` (symlinks not followed), the way watchdog's inotify backend
    watches them; stops counting once past ``stop_after``. Unreadable folders count, unentered."""
    count = 0
    stack = [os.fspath(root)]
    while stack:
        folder = stack.pop()
        count += 1
        if stop_after is not None and count > stop_after:
            break
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(entry.path)
                    except OSError:
                        continue
        except OSError:
            continue
    return count


def _env_flag(name: str) -> bool | None:
    value = os.environ.get(name, "").strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    return None


def _limit_warning(root: Path, folders: int, limit: int, poll_interval_s: float) -> str:
    n = RECOMMENDED_INOTIFY_WATCHES
    return (
        f"{root} has more than {folders - 1} folders but inotify allows {limit} watches per user "
        f"(fs.inotify.max_user_watches), so tether polls it every {poll_interval_s:g} s instead "
        f"(slower, more CPU). Raise the limit with `sudo sysctl fs.inotify.max_user_watches={n}` "
        f"and keep it across reboots with "
        f"`echo fs.inotify.max_user_watches={n} | sudo tee /etc/sysctl.d/60-tether-inotify.conf`"
    )


class LocalWatcher:
    """An async iterator of batches (``frozenset`` of root-relative POSIX paths) for one folder.

    Use it as an async context manager; iterating without one starts the watcher lazily and stops
    it when the iterating task is cancelled. Either way the observer is stopped and joined in an
    executor, never on the loop, and ``CancelledError`` is re-raised.
    """

    def __init__(
        self,
        root: Path,
        *,
        ignore: Callable[[str, bool], bool] | None = None,
        coalesce_ms: float = 10,
        max_delay_ms: float = 100,
        force_polling: bool | None = None,
        poll_interval_s: float = 0.5,
        inotify_limit: int | None = None,
        source: EventSource | None = None,
        root_check_s: float = 1.0,
    ) -> None:
        """Args:
        root: the folder to watch (it must exist).
        ignore: ``(relpath, is_dir) -> True`` to drop a path, e.g. a pair's ``IgnoreRules``; it is
            called on the observer thread, so it must be thread-safe (pure functions are).
        coalesce_ms: quiet time that ends a batch.
        max_delay_ms: the longest a batch waits after its first event, however busy the folder.
        force_polling: True/False to choose; None: ``$TETHER_FORCE_POLLING``, else the inotify
            check.
        poll_interval_s: how often the polling backend rescans.
        inotify_limit: the watch limit to check against (None: read
            ``/proc/sys/fs/inotify/max_user_watches``); for tests.
        source: an event source to use instead of watchdog (e.g. :class:`ManualSource`).
        root_check_s: how often the root's identity is checked (moved or replaced roots).
        """
        self.root = Path(root)
        self.ignore = ignore
        self.coalesce_ms = coalesce_ms
        self.max_delay_ms = max(max_delay_ms, coalesce_ms)
        self.force_polling = force_polling
        self.poll_interval_s = poll_interval_s
        self.inotify_limit = inotify_limit
        self.warnings: list[str] = []
        self._source = source
        prefixes = {os.path.abspath(self.root)}
        with contextlib.suppress(OSError):
            prefixes.add(str(self.root.resolve()))
        self._prefixes = tuple(sorted(prefixes, key=len, reverse=True))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: set[str] = set()
        self._batch_started = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._ready: list[frozenset[str]] = []
        self._waiter: asyncio.Future[None] | None = None
        self._started = False
        self._closed = False
        self._lazy = False
        self._stopping: asyncio.Future[None] | None = None
        self._suppress_lock = threading.Lock()
        self._suppressed: dict[str, tuple[float, object]] = {}
        self.root_check_s = root_check_s
        self._root_id: tuple[int, int] | None = None
        self._root_check: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    @property
    def mode(self) -> str:
        """The backend in use: "inotify", "polling", "fsevents", ... ("" before it starts)."""
        return self._source.mode if self._source is not None and self._started else ""

    async def __aenter__(self) -> LocalWatcher:
        await self._start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __aiter__(self) -> LocalWatcher:
        return self

    async def _start(self) -> None:
        if self._started:
            return
        if self._closed:
            raise RuntimeError("LocalWatcher is closed")
        loop = self._loop = asyncio.get_running_loop()
        self._root_id = await loop.run_in_executor(None, self._identity)
        if self._source is None:
            polling = await loop.run_in_executor(None, self._choose_polling)
            self._source = WatchdogSource(
                self.root, polling=polling, poll_interval_s=self.poll_interval_s
            )
        try:
            await loop.run_in_executor(None, self._source.start, self._emit)
        except OSError as exc:
            if not isinstance(self._source, WatchdogSource) or self._source.polling:
                raise
            # inotify_init or the root's watch failed (ENOSPC/EMFILE: a per-user limit is spent).
            message = (
                f"cannot watch {self.root} natively ({exc.strerror or exc}); polling it every "
                f"{self.poll_interval_s:g} s instead. If a limit is spent, raise it: "
                f"`sudo sysctl fs.inotify.max_user_watches={RECOMMENDED_INOTIFY_WATCHES}` "
                f"(or fs.inotify.max_user_instances), persisted in /etc/sysctl.d/"
            )
            self._warn(message)
            self._source = WatchdogSource(
                self.root, polling=True, poll_interval_s=self.poll_interval_s
            )
            await loop.run_in_executor(None, self._source.start, self._emit)
        self._started = True
        self._root_check = asyncio.ensure_future(self._check_root())

    def _identity(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.root)
        except OSError:
            return None
        return (st.st_dev, st.st_ino)

    async def _check_root(self) -> None:
        """Report ``"."`` once when the root is gone or is no longer the folder it was. The stat
        runs in the executor: a hung mount must not stall the loop."""
        loop = asyncio.get_running_loop()
        while not self._closed:
            await asyncio.sleep(self.root_check_s)
            now = await loop.run_in_executor(None, self._identity)
            if now != self._root_id and not self._closed:
                self._root_id = now
                self._add(["."])

    def _choose_polling(self) -> bool:
        """force_polling > $TETHER_FORCE_POLLING > the inotify watch check (walks the tree)."""
        if self.force_polling is not None:
            return self.force_polling
        from_env = _env_flag(FORCE_POLLING_ENV)
        if from_env is not None:
            return from_env
        if not sys.platform.startswith("linux"):
            return False
        limit = self.inotify_limit if self.inotify_limit is not None else inotify_watch_limit()
        if limit is None:
            return False
        budget = inotify_budget(limit)
        folders = count_dirs(self.root, stop_after=budget)
        if folders > budget:
            self._warn(_limit_warning(self.root, folders, limit, self.poll_interval_s))
            return True
        return False

    def _warn(self, message: str) -> None:
        self.warnings.append(message)
        log.warning("%s", message)

    async def aclose(self) -> None:
        """Stop watching (idempotent). Batches not yet taken are dropped."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._root_check is not None:
            self._root_check.cancel()
            self._root_check = None
        self._pending.clear()
        self._wake()
        if not self._started or self._source is None:
            return
        loop = asyncio.get_running_loop()
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(loop.run_in_executor(None, self._source.stop))
        await asyncio.shield(self._stopping)

    # -- iteration -------------------------------------------------------------------------------

    async def __anext__(self) -> frozenset[str]:
        if not self._started and not self._closed:
            self._lazy = True
            await self._start()
        try:
            while not self._ready and not self._closed:
                assert self._loop is not None
                self._waiter = self._loop.create_future()
                try:
                    await self._waiter
                finally:
                    self._waiter = None
        except asyncio.CancelledError:
            if self._lazy:
                await self.aclose()
            raise
        if not self._ready:
            raise StopAsyncIteration
        batches, self._ready = self._ready, []
        return frozenset().union(*batches)

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # -- events: observer thread ----------------------------------------------------------------

    def _emit(self, kind: str, src: str, dest: str | None, is_dir: bool) -> None:
        """Filter one raw event (on the observer's thread) and hand what is left to the loop."""
        paths = self._relevant(kind, src, dest, is_dir)
        if not paths or self._closed or self._loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop closed under a stopping observer
            self._loop.call_soon_threadsafe(self._add, paths)

    def _relevant(self, kind: str, src: str, dest: str | None, is_dir: bool) -> list[str]:
        if kind not in _REPORTED_KINDS or (kind == "modified" and is_dir):
            return []
        ends = [src, dest] if kind == "moved" and dest else [src]
        out = []
        for end in ends:
            rel = self._relpath(end)
            if rel is None:
                continue
            if rel == ".":
                if kind in ("deleted", "moved"):
                    out.append(rel)
                continue
            if self._ignored(rel, is_dir) or self._is_suppressed(rel):
                continue
            out.append(rel)
        return out

    def _relpath(self, path: str) -> str | None:
        """Root-relative POSIX path, "." for the root, None when outside it."""
        if os.path.isabs(path):
            for prefix in self._prefixes:
                if path == prefix:
                    return "."
                if path.startswith(prefix.rstrip(os.sep) + os.sep):
                    rel = path[len(prefix.rstrip(os.sep)) + 1 :]
                    break
            else:
                return None
        else:
            rel = path
        if os.sep != "/":
            rel = rel.replace(os.sep, "/")
        rel = posixpath.normpath(rel)
        if rel == ".." or rel.startswith("../") or rel.startswith("/"):
            return None
        return rel

    def _ignored(self, rel: str, is_dir: bool) -> bool:
        if self.ignore is None:
            return False
        parts = rel.split("/")
        for depth in range(1, len(parts)):
            if self.ignore("/".join(parts[:depth]), True):
                return True
        return self.ignore(rel, is_dir)

    # -- events: loop ----------------------------------------------------------------------------

    def _add(self, paths: list[str]) -> None:
        if self._closed:
            return
        assert self._loop is not None
        now = self._loop.time()
        if not self._pending:
            self._batch_started = now
        self._pending.update(paths)
        deadline = min(
            now + self.coalesce_ms / 1000, self._batch_started + self.max_delay_ms / 1000
        )
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_at(deadline, self._flush)

    def flush_now(self) -> None:
        """Hand over the batch being coalesced now, without waiting out its quiet time (a caller
        that knows no event it cares about is still on the way, as after a flush barrier)."""
        if self._timer is not None:
            self._timer.cancel()
        self._flush()

    def _flush(self) -> None:
        self._timer = None
        if self._pending and not self._closed:
            self._ready.append(frozenset(self._pending))
            self._pending = set()
            self._wake()

    # -- echo suppression ------------------------------------------------------------------------

    def suppress(
        self, paths: Iterable[str] | Mapping[str, Fingerprint | None], ttl_s: float = 2.0
    ) -> None:
        """Don't report the sync engine's own writes back to it.

        For ``ttl_s`` seconds, an event for one of ``paths`` (root-relative POSIX) is dropped while
        the path on disk matches what was written:

        - a mapping gives, per path, the ``(size, mtime_ns)`` written, or None for "deleted" (also
          right for a temporary file renamed into place); an event is dropped only while the file's
          ``lstat`` still gives that, so an edit by the user within the window is still reported;
        - a plain iterable drops every event for those paths in the window (use it only where
          nobody else could write them).

        A later call for the same path replaces its entry; entries expire on their own.
        """
        deadline = time.monotonic() + ttl_s
        items = paths.items() if isinstance(paths, Mapping) else ((p, _ANY) for p in paths)
        with self._suppress_lock:
            now = time.monotonic()
            for path, expected in list(self._suppressed.items()):
                if expected[0] <= now:
                    del self._suppressed[path]
            for path, expect in items:
                self._suppressed[posixpath.normpath(path)] = (deadline, expect)

    def _is_suppressed(self, rel: str) -> bool:
        with self._suppress_lock:
            entry = self._suppressed.get(rel)
            if entry is None:
                return False
            deadline, expect = entry
            if deadline <= time.monotonic():
                del self._suppressed[rel]
                return False
        if expect is _ANY:
            return True
        try:
            st = os.lstat(self.root / rel)
        except FileNotFoundError:
            actual = None
        except OSError:
            return False
        else:
            actual = (st.st_size, st.st_mtime_ns)
        return actual == expect
