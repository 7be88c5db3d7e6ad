"""The sync engine's connections, opened here so the engine never imports SSH.

:data:`SSH` is the :class:`~tether.sync.endpoint.Connector` every caller of
:func:`tether.sync.engine.sync_pair` hands in: it connects to a pair's host and starts the agent
there (or falls back to SFTP on a host without a usable python3), starts local agents, and names
hosts as a pair's identity records them.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from ..config import Config, HostConfig, PairConfig
from ..sync.endpoint import Endpoint
from .agent_client import AgentClient, NoUsablePython
from .sftp_endpoint import SftpEndpoint
from .ssh import open_connection, resolve_target

log = logging.getLogger(__name__)


@contextlib.asynccontextmanager
async def remote_agent(
    config: Config, pair: PairConfig, *, on_warning: Callable[[str], None] | None = None
) -> AsyncIterator[Endpoint]:
    """Connect to the pair's host and start its agent; close both on exit.

    A host without a usable python3 gets the SFTP endpoint instead (slower: it hashes every
    file on each scan), with a warning that says so.
    """
    host = config.host(pair.host)
    async with open_connection(host) as conn:
        client: Endpoint
        try:
            client = await AgentClient.start(conn, python=host.python)
        except NoUsablePython as exc:
            warning = f"{exc.message}; syncing over SFTP instead (slower: no digest cache there)"
            log.warning("%s", warning)
            if on_warning is not None:
                on_warning(warning)
            client = await SftpEndpoint.start(conn)
        try:
            yield client
        finally:
            await client.close()


class SshConnector:
    """:class:`~tether.sync.endpoint.Connector` over SSH and local agent subprocesses."""

    def remote(
        self, config: Config, pair: PairConfig
    ) -> contextlib.AbstractAsyncContextManager[Endpoint]:
        return remote_agent(config, pair)

    async def spawn_local(self) -> Endpoint:
        return await AgentClient.spawn_local()

    def host_label(self, host: HostConfig) -> str:
        target = resolve_target(host)
        return target.display + (f" via {target.proxy_jump}" if target.proxy_jump else "")


SSH = SshConnector()
"""The connector tether itself uses."""
