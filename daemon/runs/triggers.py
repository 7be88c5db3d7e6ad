"""Triggers: when changed files matching a rule have landed on the host, run its command there.

One :class:`TriggerRunner` per ``[triggers.NAME]``. The pair session calls :meth:`notify` once per
landed burst (one sync), so a save of ten files starts one run, not ten. If the previous run is
still going, ``on_busy`` decides: ``restart`` stops its process group (SIGTERM, grace, SIGKILL) and
starts afresh; ``queue`` runs once more after it; ``ignore`` drops the burst. A timeout stops the
group and is recorded. After each run its ``fetch`` paths come back and ``*.tether.json`` results
are handed to ``on_result``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pathspec

from ..config import Config, OnBusy, TriggerConfig
from ..errors import TetherError
from ..reports.fetch import list_host, tables_for
from ..reports.fetch import pull as pull_report
from ..reports.model import Report, changed_since
from ..transport.link import Link
from .history import record_run
from .remote import RunSpec, fetch, follow, start

log = logging.getLogger(__name__)


class TriggerRunner:
    def __init__(
        self,
        config: Config,
        trigger: TriggerConfig,
        link: Link,
        *,
        on_event: Callable[[dict[str, Any]], None] | None = None,
        on_fetched: Callable[[TriggerConfig, RunSpec, list[Path]], Awaitable[None]] | None = None,
    ) -> None:
        self.config, self.trigger, self.link = config, trigger, link
        self.pair = config.pairs[trigger.pair]
        self.host = config.host(self.pair.host)
        self._spec = pathspec.PathSpec.from_lines("gitignore", trigger.on)
        self._on_event = on_event
        self._on_fetched = on_fetched
        self._current: asyncio.Task[None] | None = None
        self._current_spec: RunSpec | None = None
        self._stop: asyncio.Event | None = None
        self._queued: list[str] | None = None
        self.last: dict[str, Any] | None = None
        self.fired = 0

    def matches(self, paths: Sequence[str]) -> list[str]:
        return [p for p in paths if self._spec.match_file(p)]

    @property
    def busy(self) -> bool:
        return self._current is not None and not self._current.done()

    async def notify(self, landed: Sequence[str]) -> None:
        """A burst of paths landed on the host; start (or restart, queue, ignore) the run."""
        changed = self.matches(landed)
        if changed:
            await self._fire(changed)

    async def run_now(self) -> None:
        """Fire as if its paths had changed (the tray's "Run now"); the busy policy applies."""
        self._event("manual", "run asked for by hand")
        await self._fire([])

    async def _fire(self, changed: list[str]) -> None:
        if self.busy:
            policy = self.trigger.on_busy
            if policy is OnBusy.IGNORE:
                self._event("ignored", f"busy; ignored changes to {_show(changed)}")
                return
            if policy is OnBusy.QUEUE:
                self._queued = sorted(set(self._queued or []) | set(changed))
                self._event("queued", f"busy; one more run queued for {_show(changed)}")
                return
            self._event("restart", f"restarting for {_show(changed)}")
            await self.cancel()
        self._launch(changed)

    def _launch(self, changed: list[str]) -> None:
        self.fired += 1
        spec = RunSpec(
            host=self.host,
            pair=self.pair,
            shell=self.trigger.run,
            env=dict(self.trigger.env),
            timeout_s=self.trigger.timeout_s,
        )
        self._current_spec, self._stop = spec, asyncio.Event()
        self._current = asyncio.create_task(
            self._execute(spec, changed, self._stop), name=f"trigger {self.trigger.name}"
        )

    async def cancel(self) -> None:
        """Stop the current run's process group and wait for it to be gone."""
        if self._stop is not None:
            self._stop.set()
        if self._current is not None:
            await asyncio.gather(self._current, return_exceptions=True)

    async def close(self) -> None:
        self._queued = None
        await self.cancel()

    def snapshot(self) -> dict[str, Any]:
        return {
            "trigger": self.trigger.name,
            "pair": self.trigger.pair,
            "on": list(self.trigger.on),
            "running": self._current_spec.run_id if self.busy and self._current_spec else None,
            "queued": bool(self._queued),
            "fired": self.fired,
            "last": self.last,
        }

    async def _execute(self, spec: RunSpec, changed: list[str], stop: asyncio.Event) -> None:
        started = time.monotonic()
        async with record_run(
            spec.run_id,
            project=str(self.config.path),
            host=self.host.name,
            pair=self.pair.name,
            command=spec.display,
            trigger=self.trigger.name,
            changed=changed,
        ) as recorded:
            before = await self._reports_now() if self.trigger.auto_fetch else None
            failed: TetherError | None = None
            try:
                await start(self.link, spec)
                self._event(
                    "started",
                    f"run {spec.run_id} for {_show(changed)}",
                    run=spec.run_id,
                    latency_ms=round((time.monotonic() - started) * 1000, 1),
                )
                recorded.outcome = await follow(self.link, spec, recorded.write, stop=stop)
            except TetherError as exc:  # no outcome: the record ends as "error"
                failed = exc
        outcome = recorded.outcome
        if failed is not None:
            self._event("error", f"run {spec.run_id}: {failed.one_line()}", level="error")
            self.last = {"run": spec.run_id, "reason": "error", "error": failed.one_line()}
        elif outcome is not None:
            self.last = {
                "run": spec.run_id,
                "reason": outcome.reason,
                "status": outcome.status,
                "duration_s": round(outcome.duration_s, 3),
            }
            self._event(
                "finished",
                f"run {spec.run_id} {outcome.reason} with status "
                f"{outcome.status} in {outcome.duration_s:.1f}s",
                run=spec.run_id,
                status=outcome.status,
            )
        if outcome is not None and outcome.reason != "stopped" and self.trigger.fetch:
            await self._fetch(spec)
        if outcome is not None and outcome.reason != "stopped" and before is not None:
            await self._fetch_reports(spec, before)
        if self._queued and not stop.is_set():
            queued, self._queued = self._queued, None
            self._launch(queued)

    async def _reports_now(self) -> list[Report] | None:
        """The reports on this trigger's host (``auto_fetch``); None when they cannot be listed."""
        tables = tables_for(self.config, self.pair.host)
        try:
            return (await list_host(await self.link.wait_agent(30), tables)).reports
        except TetherError as exc:
            self._event("error", f"auto-fetch: {exc.one_line()}", level="error")
            return None

    async def _fetch_reports(self, spec: RunSpec, before: list[Report]) -> None:
        """Pull the report folders the run created or changed; nothing older, nothing pushed."""
        after = await self._reports_now()
        if after is None:
            return
        changed = changed_since(before, after)
        try:
            agent = await self.link.wait_agent(30)
            pulled = [await pull_report(self.config, agent, r) for r in changed]
        except TetherError as exc:
            self._event("error", f"auto-fetch after {spec.run_id}: {exc.one_line()}", level="error")
            return
        names = ", ".join(f"{p.report.kind}/{p.report.folder}" for p in pulled) or "none new"
        whole = sum(p.ok for p in pulled)
        self._event(
            "fetched", f"auto-fetch: {whole}/{len(pulled)} report(s) ({names})", run=spec.run_id
        )

    async def _fetch(self, spec: RunSpec) -> None:
        """Bring the trigger's artifacts back; a failure is reported, never fatal to the runner."""
        try:
            await fetch(self.config, self.link, self.pair, self.trigger.fetch)
        except TetherError as exc:
            self._event("error", f"fetch after {spec.run_id}: {exc.one_line()}", level="error")
            return
        results = await asyncio.to_thread(_results_in, self.pair.local, self.trigger.fetch)
        self._event("fetched", f"fetched {', '.join(self.trigger.fetch)}", run=spec.run_id)
        if self._on_fetched is not None:
            await self._on_fetched(self.trigger, spec, results)

    def _event(self, kind: str, message: str, **extra: Any) -> None:
        log.info("trigger %s: %s", self.trigger.name, message)
        if self._on_event is not None:
            self._on_event(
                {
                    "kind": f"trigger.{kind}",
                    "trigger": self.trigger.name,
                    "message": message,
                    **extra,
                }
            )


def _results_in(local: Path, fetched: Sequence[str]) -> list[Path]:
    """The ``*.tether.json`` results files among the fetched paths (folders searched whole);
    it walks the disk, so it runs off the event loop."""
    found = [path for rel in fetched for path in sorted((local / rel).glob("**/*.tether.json"))]
    found += [local / rel for rel in fetched if rel.endswith(".tether.json")]
    return [path for path in found if path.is_file()]


def _show(paths: Sequence[str]) -> str:
    return ", ".join(paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
