"""`tether daemon`: the per-user agent in the foreground (what the service runs)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from typing import ClassVar

MALLOC_ENV = "PYTHONMALLOC"


def add_arguments(p: argparse.ArgumentParser, verb: str) -> None:
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if getattr(args, "own_argv", False):
        use_system_malloc()
    from ...service.daemon import run_daemon

    logging.getLogger().setLevel(logging.INFO if args.verbose else logging.WARNING)
    if under_journal(os.environ, sys.stderr.fileno()):
        for handler in logging.getLogger().handlers:
            handler.setFormatter(JournalFormatter())
    asyncio.run(run_daemon())
    return 0


def under_journal(env: dict[str, str] | os._Environ[str], fd: int) -> bool:
    """Whether ``fd`` is the journal stream systemd gave this service (``JOURNAL_STREAM`` names
    its device and inode): then the journal timestamps each line, and a ``<N>`` prefix sets its
    priority. Under launchd stderr is the log file the plist names, written as usual."""
    try:
        device, inode = (int(x) for x in env.get("JOURNAL_STREAM", "").split(":"))
        info = os.fstat(fd)
    except (ValueError, OSError):
        return False
    return (info.st_dev, info.st_ino) == (device, inode)


class JournalFormatter(logging.Formatter):
    """``<priority>logger: message``, the syslog priority from the record's level."""

    PRIORITY: ClassVar[dict[int, int]] = {
        logging.DEBUG: 7,
        logging.INFO: 6,
        logging.WARNING: 4,
        logging.ERROR: 3,
    }

    def __init__(self) -> None:
        super().__init__("%(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        priority = self.PRIORITY.get(record.levelno, 2)
        return "\n".join(f"<{priority}>{line}" for line in super().format(record).splitlines())


def use_system_malloc() -> None:
    """Start this process again (same pid, same command line) on glibc's malloc, not pymalloc.

    A long-running daemon that once synced a big tree sits on pymalloc's 1 MiB arenas, each kept
    whole by any live object in it: after a first sync of 100,000 files, 56 arenas held 23 MB of
    objects. glibc's ``malloc_trim`` (:func:`tether.service.pair_session.release_memory`) returns
    the free pages between live objects too: idle RSS 126 -> 87 MB there, with the same peak and
    sync time. Linux with glibc only; a ``PYTHONMALLOC`` already set (``pymalloc`` to opt out) is
    kept. Returns only where it does nothing (or the exec failed).
    """
    if MALLOC_ENV in os.environ or not sys.platform.startswith("linux"):
        return
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return
    except (ValueError, OSError):  # musl and others: no such setting
        return
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(
            sys.executable,
            [sys.executable, *sys.orig_argv[1:]],
            {**os.environ, MALLOC_ENV: "malloc"},
        )
    except OSError:
        return
