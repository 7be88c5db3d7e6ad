"""The daemon's side of ``watch = true``: poll a host's report roots (one listing round trip
every few seconds, cheaper to keep right than an inotify watch on trees tools rewrite
wholesale), and pull a new or updated report once it has settled."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from ..config import Config, ReportsConfig
from ..errors import TetherError
from ..sync.state import off_loop
from ..transport.link import Link
from .fetch import list_host, pull, with_local_status
from .model import LocalStatus, Settler

POLL_S = 2.0
SETTLE_S = 3.0
"""A report is pulled once its listing has not moved for this long."""


class ReportWatcher:
    """Watches one ``[reports.NAME]`` table's roots for the daemon."""

    def __init__(
        self,
        config: Config,
        table: ReportsConfig,
        link: Link,
        on_event: Callable[[dict[str, Any]], None],
        *,
        poll_s: float = POLL_S,
        settle_s: float = SETTLE_S,
    ) -> None:
        self.config, self.table, self.link, self.emit = config, table, link, on_event
        self.poll_s = poll_s
        self.settler = Settler(settle_s)
        self.pulled = 0
        self.last: str = ""
        self.error: str = ""
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=f"reports {self.table.name}")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def snapshot(self) -> dict[str, Any]:
        return {
            "reports": self.table.name,
            "host": self.table.host,
            "pulled": self.pulled,
            "last": self.last,
            "error": self.error,
        }

    async def _loop(self) -> None:
        while True:
            try:
                await self.poll_once()
            except TetherError as exc:  # the host is away: the link reconnects; try again
                if exc.one_line() != self.error:
                    self.emit(
                        {"kind": "reports.error", "level": "warning", "message": exc.one_line()}
                    )
                self.error = exc.one_line()
            await asyncio.sleep(self.poll_s)

    async def poll_once(self) -> None:
        agent = await self.link.wait_agent(30)
        listing = await list_host(agent, [self.table])
        self.error = ""
        ready = self.settler.observe(listing.reports, time.monotonic())
        if not ready:
            return
        async with off_loop() as store:
            config = self.config
            for report in await store.run(lambda s: with_local_status(config, s, ready)):
                where = f"{self.table.name}.{report.kind}/{report.folder}"
                if report.status is LocalStatus.EDITED:
                    self.emit(
                        {
                            "kind": "reports.skipped",
                            "message": f"{where}: edited locally, not pulled",
                        }
                    )
                elif report.status is not LocalStatus.UP_TO_DATE:
                    result = await pull(self.config, agent, report, store=store)
                    if not result.ok:
                        why = "still being written" if result.changing else result.error
                        self.emit(
                            {
                                "kind": "reports.error",
                                "level": "warning",
                                "message": f"{where}: not pulled: {why or 'problems'}",
                            }
                        )
                        self.settler.done(report)  # looked at again once it moves
                        continue
                    self.pulled += 1
                    self.last = where
                    copied = result.sync.copied if result.sync else 0
                    self.emit(
                        {"kind": "reports.pulled", "message": f"pulled {where} ({copied} file(s))"}
                    )
                self.settler.done(report)
