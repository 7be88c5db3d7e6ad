"""Settle one recorded conflict: keep the local version, the remote one, or both.

A conflict left the winner's version at the path and the other version at its conflict copy
(on both sides in two-way, on the losing side in push/pull). Keeping the winner deletes the copy;
keeping the other version moves the copy back over the path (copying it across first where that
side has no copy); keeping both just forgets the record. Every change names the entry it expects,
and a sync afterwards records the result as the new base.
"""

from __future__ import annotations

import asyncio

from ..config import Config, PairConfig
from ..errors import UsageError
from .endpoint import Connector, Endpoint
from .engine import sync_pair
from .entry import Entry
from .ignore import IgnoreRules
from .reconcile import Side
from .scan import scan_local
from .sides import AgentSide, LocalSide, OpFailed
from .state import ConflictRecord, StateStore, off_loop, pair_key
from .transfer import SourceChanged, copy_file

KEEP_CHOICES = ("local", "remote", "both")


async def _entries(
    pair: PairConfig, client: Endpoint, paths: list[str]
) -> dict[Side, dict[str, Entry]]:
    local = await asyncio.to_thread(
        scan_local, pair.local, IgnoreRules(defaults=()), {}, paths=paths
    )
    remote = await client.scan(pair.remote, paths=paths)
    return {Side.LOCAL: local.entries, Side.REMOTE: remote.entries}


async def resolve(
    config: Config,
    pair: PairConfig,
    record: ConflictRecord,
    keep: str,
    connector: Connector,
) -> None:
    """Settle ``record`` by keeping ``keep``'s version, then sync the pair to record it."""
    if keep not in KEEP_CHOICES:
        raise UsageError(f"--keep must be one of {', '.join(KEEP_CHOICES)}")
    async with off_loop() as store:
        if keep == "both" or not record.copy:
            await store.run(StateStore.drop_conflict, record.pair, record.path)
            return
        async with connector.remote(config, pair) as client:
            await _keep_one(pair, record, keep, client, connector)
            await store.run(StateStore.drop_conflict, record.pair, record.path)
            await sync_pair(config, pair, connector, client=client, store=store)


async def _keep_one(
    pair: PairConfig, record: ConflictRecord, keep: str, client: Endpoint, connector: Connector
) -> None:
    """Leave ``keep``'s version at the path on both sides, and no conflict copy."""
    winner = Side(record.winner)
    copy_sides = {Side(s) for s in record.copy_sides}
    sides: dict[Side, LocalSide | AgentSide] = {
        Side.LOCAL: LocalSide(pair.local, connector.spawn_local),
        Side.REMOTE: AgentSide(client, pair.remote, "remote"),
    }
    try:
        found = await _entries(pair, client, [record.path, record.copy])
        if Side(keep) is winner:
            for side in copy_sides:
                entry = found[side].get(record.copy)
                if entry is not None:
                    await sides[side].delete(record.copy, entry)
        else:
            source = next(iter(copy_sides))
            kept = found[source].get(record.copy)
            if kept is None:
                raise UsageError(f"the conflict copy {record.copy} is gone; nothing to keep")
            for side in Side:
                current = found[side].get(record.path)
                if side in copy_sides:
                    entry = found[side][record.copy]
                    if current is not None:
                        await sides[side].delete(record.path, current)
                    await sides[side].rename(record.copy, record.path, entry)
                else:
                    await copy_file(
                        sides[source], sides[side], record.copy, record.path, kept, current
                    )
    except (OpFailed, SourceChanged) as exc:
        raise UsageError(
            f"cannot resolve {record.path}: {exc}", "run `tether sync` and try again"
        ) from None
    finally:
        await sides[Side.LOCAL].close()


def find_record(
    store: StateStore, config: Config, path: str, pair: str | None
) -> tuple[PairConfig, ConflictRecord]:
    pairs = [config.pair(pair)] if pair else list(config.pairs.values())
    for p in pairs:
        for record in store.conflicts(pair_key(config.path, p.name)):
            if record.path == path or record.copy == path:
                return p, record
    raise UsageError(f"no recorded conflict at {path!r}", "list them with `tether conflicts`")
