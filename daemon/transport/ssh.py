"""One SSH connection to a host: key-only auth, ~/.ssh/config, strict known_hosts, named failures.

:func:`connect` opens an :class:`asyncssh.SSHClientConnection` or raises a :class:`TetherError`
whose message says what went wrong and whose hint says what to do. tether never prompts: password
and keyboard-interactive methods are *declined* by our client object (never answered), which also
tells us that the server offered them, so "this server only takes passwords" can be said plainly.
Files (~/.ssh/config, keys, known_hosts) are read off the event loop.
"""

from __future__ import annotations

import asyncio
import getpass
import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import asyncssh
from asyncssh.config import SSHClientConfig, SSHConfig

from ..config import HostConfig
from ..errors import (
    AuthRefused,
    HostKeyChanged,
    HostKeyRevoked,
    HostKeyUnknown,
    HostUnreachable,
    TetherError,
)

DEFAULT_CONNECT_TIMEOUT_S = 15.0
DEFAULT_KEY_NAMES = ("id_ed25519", "id_ecdsa", "id_rsa", "id_ed25519_sk", "id_ecdsa_sk")
PREFERRED_CIPHERS = (
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes128-ctr",
    "aes256-ctr",
)
"""Our order when ``~/.ssh/config`` names no ``Ciphers``: AES-GCM first, one hardware-accelerated
call per packet, where asyncssh's default, chacha20-poly1305, costs several Python-level calls
per packet (it was most of the daemon's CPU while sending a first sync of many small files)."""


@dataclass(frozen=True)
class Target:
    """Where a host really is once ``~/.ssh/config`` has been applied."""

    alias: str
    hostname: str
    port: int
    username: str
    proxy_jump: str | None
    connect_timeout_s: float
    config_paths: tuple[Path, ...]
    identity_files: tuple[Path, ...] = ()
    ciphers: str = ""
    """``Ciphers`` from ``~/.ssh/config`` (asyncssh applies it); empty: none named there."""

    @property
    def display(self) -> str:
        return f"{self.username}@{self.hostname}:{self.port}"

    @property
    def known_hosts_name(self) -> str:
        """How OpenSSH names this host in known_hosts."""
        return self.hostname if self.port == 22 else f"[{self.hostname}]:{self.port}"


def parse_destination(ssh: str) -> tuple[str | None, str, int | None]:
    """Split ``[user@]host[:port]`` (``[v6addr]:port`` too) into its parts."""
    user, _, rest = ssh.rpartition("@")
    port: int | None = None
    if rest.startswith("["):
        host, _, tail = rest[1:].partition("]")
        if tail.startswith(":") and tail[1:].isdigit():
            port = int(tail[1:])
    elif rest.count(":") == 1 and rest.split(":")[1].isdigit():
        host, port_text = rest.split(":")
        port = int(port_text)
    else:
        host = rest
    return (user or None), host, port


def _config_paths(host: HostConfig) -> tuple[Path, ...]:
    path = host.ssh_config or Path("~/.ssh/config").expanduser()
    return (path,) if path.is_file() else ()


def _option(cfg: SSHConfig, name: str) -> str | None:
    """A single-valued ssh_config option as its text (asyncssh gives each as a plain object)."""
    value = cfg.get(name)
    return None if value is None or value == () else str(value)


def resolve_target(host: HostConfig) -> Target:
    """Apply ~/.ssh/config (Host, HostName, Port, User, ProxyJump, ConnectTimeout, IdentityFile,
    Ciphers). What tether.toml spells out wins over that file, as ssh's command line does: a
    ``user@`` or ``:port`` in ``ssh``, and the host's own ``proxy_jump`` (as ``ssh -J``)."""
    user, alias, port = parse_destination(host.ssh)
    paths = _config_paths(host)
    local_user = getpass.getuser()
    cfg = SSHClientConfig.load(
        None, list(paths), False, False, False, local_user, user or (), alias, port or ()
    )
    timeout = host.connect_timeout_s or _option(cfg, "ConnectTimeout") or DEFAULT_CONNECT_TIMEOUT_S
    files = cfg.get("IdentityFile") or ()
    identities = tuple(
        Path(str(p)).expanduser() for p in (files if isinstance(files, list | tuple) else (files,))
    )
    return Target(
        alias=alias,
        hostname=str(cfg.get("Hostname") or alias),
        port=int(port or _option(cfg, "Port") or 22),
        username=str(user or cfg.get("User") or local_user),
        proxy_jump=host.proxy_jump or (str(cfg.get("ProxyJump")) if cfg.get("ProxyJump") else None),
        connect_timeout_s=float(timeout),
        config_paths=paths,
        identity_files=identities,
        ciphers=str(cfg.get("Ciphers") or ""),
    )


@dataclass
class _Keys:
    """The keys we will offer, and what we learnt while looking for them."""

    client_keys: Any = ()
    """Passed to asyncssh: a list of paths, or ``()`` for its defaults (~/.ssh/id_*)."""
    agent: bool = False
    found: list[Path] = field(default_factory=list)
    encrypted: list[Path] = field(default_factory=list)


def _is_encrypted(path: Path) -> bool:
    try:
        asyncssh.read_private_key(path)
    except asyncssh.KeyImportError as exc:
        return "passphrase" in str(exc).lower()
    except (OSError, ValueError):
        return False
    return False


def _find_keys(host: HostConfig, target: Target) -> _Keys:
    keys = _Keys(agent=bool(os.environ.get("SSH_AUTH_SOCK")))
    explicit = [host.identity_file] if host.identity_file else list(target.identity_files)
    if explicit:
        for path in explicit:
            if not path.is_file():
                raise AuthRefused(
                    f"{host.name}: identity file {path} does not exist",
                    "fix identity_file in tether.toml or IdentityFile in ~/.ssh/config",
                )
        keys.found = explicit
        keys.encrypted = [p for p in explicit if _is_encrypted(p)]
        usable = [str(p) for p in explicit if p not in keys.encrypted]
        if keys.encrypted and not keys.agent:
            raise AuthRefused(
                f"{host.name}: {keys.encrypted[0]} is encrypted and no ssh-agent is running",
                f"run `ssh-add {keys.encrypted[0]}` in a running ssh-agent; tether never prompts",
            )
        keys.client_keys = usable or ()
        return keys
    ssh_dir = Path("~/.ssh").expanduser()
    keys.found = [ssh_dir / n for n in DEFAULT_KEY_NAMES if (ssh_dir / n).is_file()]
    keys.encrypted = [p for p in keys.found if _is_encrypted(p)]
    return keys


class _AuthWitness(asyncssh.SSHClient):
    """Declines every password prompt and remembers which methods the server offered."""

    def __init__(self) -> None:
        self.offered: set[str] = set()

    def public_key_auth_requested(self) -> None:
        self.offered.add("publickey")

    def password_auth_requested(self) -> None:
        self.offered.add("password")

    def kbdint_auth_requested(self) -> None:
        self.offered.add("keyboard-interactive")


def known_hosts_files(host: HostConfig) -> list[Path]:
    if host.known_hosts is not None:
        return [host.known_hosts]
    return [Path("~/.ssh/known_hosts").expanduser(), Path("/etc/ssh/ssh_known_hosts")]


def _known_hosts_arg(host: HostConfig) -> Any:
    """Never ``None``: asyncssh reads None as "do not verify"."""
    existing = [str(p) for p in known_hosts_files(host) if p.is_file()]
    return existing if existing else asyncssh.import_known_hosts("")


def connect_options(host: HostConfig, target: Target, keys: _Keys, **overrides: Any) -> dict:
    options: dict[str, Any] = {
        "host": target.alias,
        "port": target.port,
        "username": target.username,
        "config": [str(p) for p in target.config_paths],
        "known_hosts": _known_hosts_arg(host),
        "client_keys": keys.client_keys,
        "password_auth": True,  # offered methods are recorded and declined by _AuthWitness
        "kbdint_auth": True,
        "host_based_auth": False,
        "gss_auth": False,
        "connect_timeout": target.connect_timeout_s,
        "login_timeout": target.connect_timeout_s,
    }
    if not target.ciphers:
        options["encryption_algs"] = list(PREFERRED_CIPHERS)
    options.update(overrides)
    return options


async def connect(host: HostConfig, **overrides: Any) -> asyncssh.SSHClientConnection:
    """Open a verified, key-authenticated connection, or raise a classified TetherError.

    A ProxyJump chain is walked hop by hop with the same rules (key-only, the same known_hosts),
    so a jump host gets no laxer treatment than the target. ``overrides`` go to
    :func:`asyncssh.connect` (keepalive settings...).
    """
    loop = asyncio.get_running_loop()
    target = await loop.run_in_executor(None, resolve_target, host)
    tunnel: asyncssh.SSHClientConnection | None = None
    try:
        for hop in (target.proxy_jump or "").split(","):
            if hop.strip() and hop.strip().lower() != "none":
                hop_host = replace(
                    host, name=f"{host.name} via {hop}", ssh=hop.strip(), proxy_jump=None
                )
                hop_target = await loop.run_in_executor(None, resolve_target, hop_host)
                tunnel = _owning(
                    await _connect_hop(hop_host, hop_target, {"tunnel": tunnel}), tunnel
                )
        return _owning(await _connect_hop(host, target, {**overrides, "tunnel": tunnel}), tunnel)
    except BaseException:
        if tunnel is not None:
            tunnel.close()  # closes the whole chain behind it
        raise


def _owning(
    conn: asyncssh.SSHClientConnection, tunnel: asyncssh.SSHClientConnection | None
) -> asyncssh.SSHClientConnection:
    """Make ``conn`` close the jump connection it rides on when it closes."""
    if tunnel is not None:
        conn.set_tunnel(tunnel)
    return conn


async def _connect_hop(
    host: HostConfig, target: Target, overrides: dict[str, Any]
) -> asyncssh.SSHClientConnection:
    keys = await asyncio.get_running_loop().run_in_executor(None, _find_keys, host, target)
    witness = _AuthWitness()
    options = connect_options(host, target, keys, **overrides)
    if options.get("tunnel") is None:
        options.pop("tunnel", None)
    try:
        return await asyncssh.connect(client_factory=lambda: witness, **options)
    except asyncssh.HostKeyNotVerifiable:
        raise await host_key_error(host, target) from None
    except asyncssh.PermissionDenied:
        raise auth_error(host, target, keys, witness.offered) from None
    except (asyncssh.KeyImportError, asyncssh.KeyEncryptionError) as exc:
        raise AuthRefused(
            f"{host.name}: cannot use the key: {exc}", "load it into ssh-agent with `ssh-add`"
        ) from None
    except BaseException as exc:
        error = network_error(host, target, exc)
        if error is None:
            raise
        raise error from None


def network_error(host: HostConfig, target: Target, exc: BaseException) -> TetherError | None:
    """The HostUnreachable that ``exc`` means, or None if it is not a network failure."""
    where = f"{host.name} ({target.display})"
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return HostUnreachable(
            f"{where}: no answer within {target.connect_timeout_s:g}s",
            "check the address and your network, or raise connect_timeout",
        )
    if isinstance(exc, socket.gaierror):
        return HostUnreachable(
            f"{where}: cannot resolve {target.hostname!r}", "check the host name or ~/.ssh/config"
        )
    if isinstance(exc, ConnectionRefusedError):
        return HostUnreachable(
            f"{where}: connection refused", f"is sshd running and listening on port {target.port}?"
        )
    if isinstance(exc, asyncssh.DisconnectError):
        return HostUnreachable(
            f"{where}: the server closed the connection: {exc.reason}", "try again; see sshd's log"
        )
    if isinstance(exc, OSError):
        return HostUnreachable(f"{where}: {exc.strerror or exc}", "check the address and network")
    return None


def auth_error(host: HostConfig, target: Target, keys: _Keys, offered: set[str]) -> AuthRefused:
    """Explain a refused login: no key, key refused, passwords only, or a locked key."""
    who = f"{host.name} ({target.display})"
    copy_id = f"ssh-copy-id -p {target.port} {target.username}@{target.hostname}"
    if "publickey" not in offered and offered & {"password", "keyboard-interactive"}:
        return AuthRefused(
            f"{who} accepts only passwords; tether is key-only",
            f"install a key with `{copy_id}` and enable PubkeyAuthentication in sshd_config",
        )
    if keys.encrypted and not keys.agent:
        return AuthRefused(
            f"{who} refused the keys on offer; {keys.encrypted[0]} is encrypted and no agent runs",
            f"run `ssh-add {keys.encrypted[0]}` (tether never asks for passphrases)",
        )
    if not keys.found and not keys.agent:
        return AuthRefused(
            f"{who}: no SSH key to offer (no identity_file, no ~/.ssh/id_*, no ssh-agent)",
            f"create one with `ssh-keygen -t ed25519`, then `{copy_id}`",
        )
    return AuthRefused(
        f"{who} refused the key (tether is key-only)",
        f"install your public key with `{copy_id}`",
    )


async def fetch_host_key(host: HostConfig, target: Target) -> asyncssh.SSHKey:
    try:
        key = await asyncio.wait_for(
            asyncssh.get_server_host_key(
                target.hostname, target.port, config=[str(p) for p in target.config_paths]
            ),
            target.connect_timeout_s,
        )
    except BaseException as exc:
        error = network_error(host, target, exc)
        if error is None:
            raise
        raise error from None
    if key is None:
        raise HostUnreachable(f"{host.name}: the server showed no host key", "check the server")
    return key


def _recorded_keys(
    host: HostConfig, target: Target
) -> tuple[list[asyncssh.SSHKey], list[asyncssh.SSHKey]]:
    """The keys known_hosts records for the target: (trusted, ``@revoked``).

    The revoked ones are matched as plain lines with the marker taken off: asyncssh's ``match``
    drops what it found for ``[host]:port`` when no trusted key is there and it retries without
    the port, so a revoked key on a non-default port would go unseen.
    """
    port = target.port if target.port != 22 else None
    recorded: list[asyncssh.SSHKey] = []
    revoked: list[asyncssh.SSHKey] = []
    for path in known_hosts_files(host):
        if path.is_file():
            try:
                text = path.read_text(encoding="utf-8", errors="replace")
                recorded.extend(
                    asyncssh.import_known_hosts(text).match(target.hostname, "", port)[0]
                )
                marked = [
                    line.split(None, 1)[1]
                    for line in text.splitlines()
                    if line.startswith("@revoked") and len(line.split(None, 1)) == 2
                ]
                found = asyncssh.import_known_hosts("\n".join(marked)).match(
                    target.hostname, "", port
                )
            except (OSError, ValueError):
                continue
            revoked.extend(found[0])
    return recorded, revoked


def host_key_verdict(
    host: HostConfig, target: Target, key: asyncssh.SSHKey
) -> HostKeyUnknown | HostKeyChanged | HostKeyRevoked | None:
    """None when known_hosts vouches for ``key``; else the error that says unknown, changed or
    revoked. A revoked key is checked first: it is not "unknown" (``--trust`` would record it
    beside its ``@revoked`` line, and the handshake would still refuse it)."""
    recorded, revoked = _recorded_keys(host, target)
    shown = f"{key.get_algorithm()} {key.get_fingerprint('sha256')}"
    if any(r.public_data == key.public_data for r in revoked):
        return HostKeyRevoked(
            f"{host.name}: the host key of {target.known_hosts_name} ({shown}) is marked "
            "@revoked in known_hosts; refusing to connect",
            "ask the host's admin for its new key; remove the @revoked line only if it is wrong",
        )
    if any(r.public_data == key.public_data for r in recorded):
        return None
    if recorded:
        file = known_hosts_files(host)[0]
        return HostKeyChanged(
            f"{host.name}: HOST KEY CHANGED for {target.known_hosts_name}: the server now shows "
            f"{shown}; refusing to connect",
            f"if the host was really reinstalled, run `ssh-keygen -R '{target.known_hosts_name}' "
            f"-f {file}` then `tether check --trust {host.name}`",
        )
    return HostKeyUnknown(
        f"{host.name}: unknown host key for {target.known_hosts_name}: {shown}",
        f"if that fingerprint is right, run `tether check --trust {host.name}`",
    )


async def host_key_error(host: HostConfig, target: Target) -> TetherError:
    """Why the handshake refused the host: fetch the key it shows and compare with known_hosts."""
    key = await fetch_host_key(host, target)
    verdict = await asyncio.get_running_loop().run_in_executor(
        None, host_key_verdict, host, target, key
    )
    return verdict or HostUnreachable(f"{host.name}: the host key check failed; try again")


def record_host_key(host: HostConfig, target: Target, key: asyncssh.SSHKey) -> Path:
    """Append ``key`` to known_hosts as OpenSSH would; the caller has shown the fingerprint."""
    path = known_hosts_files(host)[0]
    line = f"{target.known_hosts_name} {key.export_public_key('openssh').decode().strip()}\n"
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(line)
    return path


@asynccontextmanager
async def open_connection(
    host: HostConfig, **overrides: Any
) -> AsyncIterator[asyncssh.SSHClientConnection]:
    """``async with open_connection(host) as conn``: connect, and always close."""
    conn = await connect(host, **overrides)
    try:
        yield conn
    finally:
        conn.close()
        await conn.wait_closed()
