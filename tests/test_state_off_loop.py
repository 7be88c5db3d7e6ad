"""The sync engine never uses the state database on the event loop, nor works out a plan or a new
base there: for 100,000 paths each takes about a second, and in the daemon the other pairs, the
tunnels and the control API share the loop. Every kind of sync (first, with a conflict,
incremental, halted, accepted) against a real sshd, with each call's thread noted."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from tether.config import load_config
from tether.sync import engine
from tether.sync.engine import SyncReport, sync_pair
from tether.sync.safety import PairStatus
from tether.transport.endpoints import SSH

from tests.helpers import write
from tests.sshd import SshServer
from tests.store_threads import on_this_thread, record_store_threads, record_threads

FILES = [f"f{i}.txt" for i in range(6)]


def test_every_kind_of_sync_keeps_sqlite_off_the_loop(
    sshd: SshServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TETHER_STATE_DIR", str(tmp_path / "state"))
    local, remote = tmp_path / "local", tmp_path / "remote"
    local.mkdir()
    remote.mkdir()
    (tmp_path / "tether.toml").write_text(
        sshd.toml_host()
        + f'\n[pairs.code]\nhost = "test"\nlocal = "local"\nremote = "{remote}"\n'
        + 'mode = "two-way"\n'
    )
    calls = record_store_threads(monkeypatch)
    record_threads(monkeypatch, engine, ["reconcile", "next_base"], calls)

    def sync(**kw: object) -> SyncReport:
        config = load_config(tmp_path / "tether.toml")
        return asyncio.run(sync_pair(config, config.pair("code"), SSH, **kw))  # type: ignore[arg-type]

    for name in FILES:
        write(local / name, name)
    assert sync().status is PairStatus.OK  # a first sync: identity adopted, base saved
    write(local / "f0.txt", "mine")
    write(remote / "f0.txt", "theirs")
    assert sync().conflicts  # a conflict recorded
    write(local / "f1.txt", "edited")
    report = sync(local_paths=["f1.txt"])  # incremental: the base read in scope
    assert report.scope == ["f1.txt"] and (remote / "f1.txt").read_text() == "edited"
    for name in FILES:
        (remote / name).unlink()
    assert sync().halted  # most of a side deleted: the halt is stored
    assert sync(accept_deletes=True).status is PairStatus.OK

    used = {name for name, _ in calls}
    assert on_this_thread(calls) == []
    assert {"__init__", "save_base", "load_base_scope", "record_halt", "accept_halt"} <= used
    assert {"reconcile", "next_base"} <= used
