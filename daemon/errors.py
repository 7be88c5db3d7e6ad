"""Errors a user can act on, each with the exit code the CLI returns for it.

Every failure that reaches the user is a :class:`TetherError`: a one-line message saying what went
wrong, a one-line hint saying what to do, and an exit code from the sysexits family. The CLI
catches ``TetherError`` alone and prints ``message`` and ``hint``; anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations

EX_USAGE = 2
EX_DATAERR = 65
EX_UNAVAILABLE = 69
EX_NOPERM = 77
EX_CONFIG = 78


class TetherError(Exception):
    """A failure the user can act on."""

    exit_code: int = 1

    def __init__(self, message: str, hint: str = "", *, exit_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        if exit_code is not None:
            self.exit_code = exit_code

    def __str__(self) -> str:
        return self.message

    def one_line(self) -> str:
        """The message and its hint as the single line the CLI prints."""
        return f"{self.message} ({self.hint})" if self.hint else self.message


class UsageError(TetherError):
    """The command line itself is wrong."""

    exit_code = EX_USAGE


class ConfigError(TetherError):
    """tether.toml (or a converted config) is missing, malformed or invalid."""

    exit_code = EX_CONFIG


class HostUnreachable(TetherError):
    """The host did not answer, refused the TCP connection, or timed out."""

    exit_code = EX_UNAVAILABLE


class AuthRefused(TetherError):
    """The host refused every key we offered, or wants a password (tether is key-only)."""

    exit_code = EX_NOPERM


class HostKeyUnknown(AuthRefused):
    """The host's key is not in known_hosts; the hint is the command that trusts it."""


class HostKeyChanged(AuthRefused):
    """The host's key differs from the one in known_hosts: possibly an attack, never trusted."""


class HostKeyRevoked(AuthRefused):
    """known_hosts marks the host's key ``@revoked``: refused, and never trusted by ``--trust``."""


class BadHostData(TetherError):
    """The host sent something invalid: an unsafe path, a malformed message, a bad result."""

    exit_code = EX_DATAERR


class RemoteError(TetherError):
    """An operation on the host failed (disk full, permission denied, ...)."""

    exit_code = 1


class NotFound(TetherError):
    """A request names a project, pair or run this daemon does not have (HTTP 404)."""


class NotRegistered(NotFound):
    """The daemon does not watch this project (the CLI then does the work itself)."""
