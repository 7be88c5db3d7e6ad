"""Where tether keeps per-user files: state (the sync database, logs, results) and runtime files
(the control socket); the check that they are private.

The state folder is ``$TETHER_STATE_DIR``, else ``platformdirs.user_state_dir("tether")``
(``~/.local/state/tether`` on Linux, ``~/Library/Application Support/tether`` on macOS).

The runtime folder is, in order: ``$TETHER_RUNTIME_DIR``;
``platformdirs.user_runtime_dir("tether")`` (``$XDG_RUNTIME_DIR/tether`` on Linux,
``~/Library/Caches/TemporaryItems/tether`` on macOS) when the platform really has one; else
``/tmp/tether-<uid>``. Whichever it is, :func:`ensure_private_dir` creates it 0700 and refuses to
use it unless it is a real folder owned by this user with no group or other permissions: a socket
in a folder someone else can write to could be swapped for theirs.
"""

from __future__ import annotations

import contextlib
import os
import stat
import sys
import tempfile
import warnings
from pathlib import Path
from typing import BinaryIO, Literal

from platformdirs import user_runtime_dir, user_state_dir

from .errors import EX_NOPERM, TetherError

RUNTIME_ENV = "TETHER_RUNTIME_DIR"
STATE_ENV = "TETHER_STATE_DIR"
APP_NAME = "tether"


class InsecureFolder(TetherError):
    """A folder tether keeps private files in is not private (wrong owner, mode or kind)."""

    exit_code = EX_NOPERM


def _platform_runtime_dir() -> Path | None:
    """platformdirs' runtime folder, or None where the platform has none (it warns and falls back
    to a shared temporary folder then; tether prefers its own ``/tmp/tether-<uid>``)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            path = Path(user_runtime_dir(APP_NAME, appauthor=False))
        except Warning:
            return None
    return path if path.parent.is_dir() else None


def runtime_dir() -> Path:
    """The runtime folder's path (not created; see :func:`ensure_private_dir`)."""
    override = os.environ.get(RUNTIME_ENV)
    if override:
        return Path(override).expanduser()
    if sys.platform != "win32":
        found = _platform_runtime_dir()
        if found is not None:
            return found
    return Path(tempfile.gettempdir()) / f"{APP_NAME}-{os.getuid()}"


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` (mode 0700) if missing, then check that only this user can use it.

    Returns:
        ``path``, unchanged.

    Raises:
        InsecureFolder: ``path`` is a symlink or not a folder, belongs to another user, or grants
            any group/other permission. It is never chmod-ed or removed silently.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise InsecureFolder(
            f"{path} is not a plain folder (a symlink or a file is never used for private files)",
            f"remove it, or set {RUNTIME_ENV} to a folder of your own",
        )
    if st.st_uid != os.getuid():
        raise InsecureFolder(
            f"{path} belongs to user id {st.st_uid}, not to you (uid {os.getuid()})",
            f"set {RUNTIME_ENV} to a folder of your own, or remove {path} as its owner",
        )
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise InsecureFolder(
            f"{path} is open to other users (mode {mode:04o})",
            f"run `chmod 700 {path}`, or set {RUNTIME_ENV} to a private folder",
        )
    return path


def private_folder(path: Path) -> Path:
    """Create ``path`` (and its parents) 0700, or tighten an existing folder of this user's to 0700.

    The state folder holds the run logs, the daemon's log and the sync state: a folder made 0755
    by hand or by an older version would leave them listable by anyone, so it is narrowed, not
    merely accepted. A folder that is not this user's is left as it is (chmod would fail anyway).
    """
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = os.stat(path)
    if st.st_uid == os.getuid() and stat.S_IMODE(st.st_mode) & 0o077:
        os.chmod(path, stat.S_IMODE(st.st_mode) & 0o700)
    return path


def open_private(path: Path, mode: Literal["ab", "wb"]) -> BinaryIO:
    """Open a log file for writing, readable by this user alone whatever the umask.

    ``open()`` would create it 0644 under the usual umask 022, and a log holds a run's output;
    an existing file (an older tether made it 0644) is narrowed to 0600 as well.
    """
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if mode == "ab" else os.O_TRUNC)
    fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        os.fchmod(fd, 0o600)
        return os.fdopen(fd, mode)
    except BaseException:
        os.close(fd)
        raise


def state_dir() -> Path:
    """Where tether keeps its state (created 0700 when missing, narrowed to 0700 when wider)."""
    override = os.environ.get(STATE_ENV)
    if override:
        return private_folder(Path(override).expanduser())
    return private_folder(Path(user_state_dir(APP_NAME, appauthor=False)))
