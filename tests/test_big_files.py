"""Big files through `tether sync` over a real sshd: bounded memory both ways (this process and
both agents), sparse files kept sparse, changed files sent as deltas, a delta that does not
rebuild the file dropped for a whole send, and a link cut in the middle of a big transfer."""

from __future__ import annotations

import hashlib
import os
import random
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from tether.sync.blocks import RECORD
from tether.sync.reconcile import Side
from tether.transport.agent_client import AgentClient

from tests.faultproxy import FaultProxy
from tests.helpers import sync, write_project
from tests.sshd import SshServer

MiB = 1 << 20


def digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while data := fh.read(MiB):
            h.update(data)
    return h.hexdigest()


def write_random(path: Path, size: int, seed: int = 1) -> None:
    """``size`` pseudo-random bytes (no block repeats), written 4 MiB at a time."""
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fh:
        for i in range(0, size, 4 * MiB):
            fh.write(rng.randbytes(min(4 * MiB, size - i)))


def peak_rss(pid: int) -> int:
    """The process's peak resident size in bytes (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


class Watch:
    """Wraps the engine's apply: after it, each agent's peak RSS; bytes moved per agent op."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from tether.sync import apply as apply_mod

        self.agent_peaks: list[int] = []
        self.sent: dict[str, int] = {}
        self.received: dict[str, int] = {}
        real_apply, real_call = apply_mod.apply_plan, AgentClient.call
        watch = self

        async def watching(actions: Any, sides: Any, **kw: Any) -> Any:
            outcome = await real_apply(actions, sides, **kw)
            local = sides[Side.LOCAL]._agent
            clients = [sides[Side.REMOTE].client] + ([local.client] if local else [])
            watch.agent_peaks += [peak_rss(c.info["pid"]) for c in clients]
            return outcome

        async def counting(self: AgentClient, op: str, blob: Any = None, **args: Any) -> Any:
            parts = [blob] if isinstance(blob, bytes) else list(blob or ())
            watch.sent[op] = watch.sent.get(op, 0) + sum(len(p) for p in parts)
            reply = await real_call(self, op, blob, **args)
            watch.received[op] = watch.received.get(op, 0) + len(reply.get("blob", b""))
            return reply

        monkeypatch.setattr("tether.sync.engine.apply_plan", watching)
        monkeypatch.setattr(AgentClient, "call", counting)

    def moved(self, mode: str) -> int:
        """File bytes that crossed the link: written to the host, or read from it."""
        return self.sent.get("write", 0) if mode == "push" else self.received.get("read", 0)


@pytest.mark.parametrize("mode", ["push", "pull"])
def test_a_big_transfer_holds_a_few_chunk_windows_not_the_file(
    sync_project, monkeypatch, mode
) -> None:
    """256 MiB either way: this process allocates a few windows at most (tracemalloc), and
    neither agent (the host's, this machine's writer) grows by the file either (peak RSS)."""
    tmp, local, remote, configure = sync_project
    configure(mode)
    size = 256 * MiB
    source = (local if mode == "push" else remote) / "data" / "big.bin"
    write_random(source, size)
    if mode == "pull":
        local.mkdir(exist_ok=True)
    watch = Watch(monkeypatch)
    tracemalloc.start()
    try:
        code, report = sync(tmp)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert code == 0, report
    target = (remote if mode == "push" else local) / "data" / "big.bin"
    assert digest(target) == digest(source)
    # a transfer keeps 8 chunks of 1 MiB in flight: a few such windows at most
    assert peak < 32 * MiB, f"{peak / MiB:.0f} MiB allocated for a 256 MiB file"
    assert watch.agent_peaks and max(watch.agent_peaks) < 120 * MiB, watch.agent_peaks


@pytest.mark.parametrize("mode", ["push", "pull"])
def test_a_sparse_file_stays_sparse_and_its_holes_are_not_sent(
    sync_project, monkeypatch, mode
) -> None:
    tmp, local, remote, configure = sync_project
    configure(mode)
    source = (local if mode == "push" else remote) / "sparse.img"
    source.parent.mkdir(parents=True, exist_ok=True)
    size = 1 << 30
    with source.open("wb") as fh:
        for offset in (0, 300 * MiB, 700 * MiB + 12345):
            fh.seek(offset)
            fh.write(os.urandom(MiB))
        fh.truncate(size)  # it ends in a hole
    if source.stat().st_blocks * 512 > 16 * MiB:
        pytest.skip("this filesystem does not keep holes")
    watch = Watch(monkeypatch)
    code, report = sync(tmp)
    assert code == 0, report
    target = (remote if mode == "push" else local) / "sparse.img"
    assert target.stat().st_size == size
    assert digest(target) == digest(source)
    assert target.stat().st_blocks * 512 <= 16 * MiB, "the holes were filled"
    moved = watch.moved(mode)
    assert moved <= 8 * MiB, f"{moved / MiB:.0f} MiB moved for 3 MiB of data"


@pytest.mark.parametrize("mode", ["push", "pull"])
def test_a_sparse_file_changed_in_its_data_stays_sparse_after_the_delta(
    sync_project, monkeypatch, mode
) -> None:
    """The delta copies the receiver's own blocks; where those lie in a hole, the rebuilt file
    keeps the hole instead of writing zeros."""
    tmp, local, remote, configure = sync_project
    configure(mode)
    source = (local if mode == "push" else remote) / "disk.img"
    source.parent.mkdir(parents=True, exist_ok=True)
    with source.open("wb") as fh:
        for offset in (0, 100 * MiB, 200 * MiB + 12345):
            fh.seek(offset)
            fh.write(os.urandom(MiB))
        fh.truncate(256 * MiB)
    if source.stat().st_blocks * 512 > 16 * MiB:
        pytest.skip("this filesystem does not keep holes")
    code, report = sync(tmp)
    assert code == 0, report
    with source.open("r+b") as fh:
        fh.seek(100 * MiB + 1000)
        fh.write(os.urandom(100_000))
    watch = Watch(monkeypatch)
    code, report = sync(tmp)
    assert code == 0, report
    target = (remote if mode == "push" else local) / "disk.img"
    assert digest(target) == digest(source)
    assert "signature" in watch.sent  # it went as a delta
    assert target.stat().st_blocks * 512 <= 16 * MiB, "the delta filled the holes"


@pytest.mark.parametrize("mode", ["push", "pull"])
def test_a_changed_big_file_goes_as_a_delta(sync_project, monkeypatch, mode) -> None:
    """A rewritten middle and an append cost about what changed; the result is exact."""
    tmp, local, remote, configure = sync_project
    configure(mode)
    source = (local if mode == "push" else remote) / "log.csv"
    write_random(source, 32 * MiB, seed=3)
    code, report = sync(tmp)
    assert code == 0, report
    with source.open("r+b") as fh:
        fh.seek(10 * MiB + 777)
        fh.write(os.urandom(200_000))
        fh.seek(0, os.SEEK_END)
        fh.write(os.urandom(MiB))
    watch = Watch(monkeypatch)
    code, report = sync(tmp)
    assert code == 0, report
    target = (remote if mode == "push" else local) / "log.csv"
    assert digest(target) == digest(source)
    moved = watch.moved(mode)
    assert moved < 2 * MiB, f"{moved / MiB:.1f} MiB moved for 1.2 MiB changed"
    code, report = sync(tmp)
    assert report["plan"] == []


@pytest.mark.parametrize("mode", ["push", "pull"])
def test_a_delta_that_does_not_rebuild_the_file_is_sent_whole(
    sync_project, monkeypatch, mode
) -> None:
    """The host's signature lies (two blocks swapped): the rebuilt file fails its digest, is
    dropped, and the file goes whole; what lands is exact and nothing staged is left."""
    tmp, local, remote, configure = sync_project
    configure(mode)
    source = (local if mode == "push" else remote) / "model.bin"
    write_random(source, 12 * MiB, seed=5)
    code, report = sync(tmp)
    assert code == 0, report
    with source.open("r+b") as fh:
        fh.seek(5 * MiB)
        fh.write(b"new weights" * 1000)
    real = AgentClient.signature

    async def swapped(self: AgentClient, root: str, path: str, block: int) -> Any:
        raw, entry = await real(self, root, path, block)
        n = RECORD.size
        raw = raw[n : 2 * n] + raw[:n] + raw[2 * n :]
        return raw, entry

    monkeypatch.setattr(AgentClient, "signature", swapped)
    watch = Watch(monkeypatch)
    code, report = sync(tmp)
    assert code == 0, report
    target = (remote if mode == "push" else local) / "model.bin"
    assert digest(target) == digest(source)
    moved = watch.moved(mode)
    assert moved >= 12 * MiB  # sent whole after the delta failed
    assert list(target.parent.glob(".*.tmp")) == []


def test_a_link_cut_mid_transfer_leaves_no_partial_file_and_the_rerun_lands_it(
    private_sshd: SshServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TETHER_STATE_DIR", str(tmp_path / "state"))
    proxy = FaultProxy(private_sshd.port).start()
    try:
        local, remote = write_project(tmp_path, private_sshd, port=proxy.port, mode="push")
        write_random(local / "ckpt.bin", 200 * MiB, seed=9)

        cut = threading.Event()

        def cut_midway() -> None:  # 40 MiB staged on the host: the link goes down
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                staged = [p.stat().st_size for p in remote.glob(".ckpt.bin.*.tmp")]
                if staged and max(staged) >= 40 * MiB:
                    proxy.cut()
                    cut.set()
                    return
                time.sleep(0.002)

        threading.Thread(target=cut_midway, daemon=True).start()
        from tether.cli.main import main

        config = str(local / "tether.toml")
        code = main(["--config", config, "sync", "--json"])
        assert cut.is_set() and code == 69
        assert not (remote / "ckpt.bin").exists()
        deadline = time.monotonic() + 20  # the host's agent sees the cut and drops its temp
        while list(remote.glob(".*.tmp")) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert list(remote.glob(".*.tmp")) == []
        assert main(["--config", config, "sync", "--json"]) == 0
        assert digest(remote / "ckpt.bin") == digest(local / "ckpt.bin")
    finally:
        proxy.stop()


def test_progress_shows_each_big_file_bytes_rate_and_eta(sync_project, monkeypatch, capsys) -> None:
    """The engine reports a big file's bytes as they move (not only when it lands), and the
    plain progress prints per file: bytes done of its size, rate, time left; and the total."""
    from tether.cli.commands.sync import _PlainProgress
    from tether.sync.engine import Progress

    tmp, local, _remote, configure = sync_project
    configure("push")
    write_random(local / "big.bin", 20 * MiB)
    seen: list[tuple[str, int, int]] = []
    monkeypatch.setattr(Progress, "file_bytes", lambda self, *args: seen.append(args))
    code, report = sync(tmp)
    assert code == 0, report
    dones = [done for path, done, size in seen if path == "big.bin" and size == 20 * MiB]
    assert len(dones) >= 10 and dones == sorted(dones) and dones[-1] == 20 * MiB

    plain = _PlainProgress()
    plain.transfer_started(2, 30 * MiB)
    plain.last = float("-inf")  # due for a line now
    plain.file_bytes("ckpt/model.pt", 5 * MiB, 20 * MiB)
    err = capsys.readouterr().err.splitlines()
    assert err[-2].startswith("  0/2 files, 5.2 MB/31.5 MB, ") and err[-2].endswith(" left")
    assert err[-1].startswith("  ckpt/model.pt: 5.2 MB/21.0 MB, ") and "/s, " in err[-1]


@pytest.mark.parametrize("mode", ["push", "pull"])
def test_an_appended_big_file_sends_only_its_tail(sync_project, monkeypatch, mode) -> None:
    """The receiver copies its own file and gets the tail: no signature, about 1 MiB moved
    (a growing log pushed, or a results file growing on the host pulled)."""
    tmp, local, remote, configure = sync_project
    configure(mode)
    source = (local if mode == "push" else remote) / "train.log"
    write_random(source, 12 * MiB, seed=7)
    code, report = sync(tmp)
    assert code == 0, report
    with source.open("ab") as fh:
        fh.write(os.urandom(MiB + 123))
    watch = Watch(monkeypatch)
    code, report = sync(tmp)
    assert code == 0, report
    assert digest((remote if mode == "push" else local) / "train.log") == digest(source)
    assert "signature" not in watch.sent
    assert watch.moved(mode) < MiB + 160 * 1024  # the tail, and the probe of the old end
    assert sync(tmp)[1]["plan"] == []


@pytest.mark.parametrize("mode", ["push", "pull"])
def test_a_rewrite_that_keeps_the_old_end_is_not_taken_for_an_append(
    sync_project, monkeypatch, mode
) -> None:
    """Same last bytes where the receiver's copy ends, a longer file, another start: it goes as
    a delta (the start's digest gives it away before the tail is sent), and lands exact."""
    tmp, local, remote, configure = sync_project
    configure(mode)
    source = (local if mode == "push" else remote) / "data.bin"
    write_random(source, 12 * MiB, seed=8)
    code, report = sync(tmp)
    assert code == 0, report
    with source.open("r+b") as fh:
        fh.seek(MiB)
        fh.write(os.urandom(1000))
        fh.seek(0, os.SEEK_END)
        fh.write(os.urandom(MiB))
    watch = Watch(monkeypatch)
    code, report = sync(tmp)
    assert code == 0, report
    target = (remote if mode == "push" else local) / "data.bin"
    assert digest(target) == digest(source)
    assert list(target.parent.glob(".*.tmp")) == []
    assert "signature" in watch.sent
    assert watch.moved(mode) < MiB + 256 * 1024  # the tail once, the changed block
    assert sync(tmp)[1]["plan"] == []


def hashed_by_scan(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the files the local scan reads to hash, as it hashes them."""
    from tether.sync import scan

    seen: list[str] = []
    real = scan.hash_file

    def spy(path: str) -> str:
        seen.append(os.path.basename(path))
        return real(path)

    monkeypatch.setattr(scan, "hash_file", spy)
    return seen


def test_a_big_file_changed_here_only_is_hashed_as_it_is_sent(sync_project, monkeypatch) -> None:
    """Not read once by the scan and again by the delta: the transfer's digest of what it read
    (checked by the host) is what the base and the digest cache keep."""
    tmp, local, remote, configure = sync_project
    configure("push")
    source = local / "weights.bin"
    write_random(source, 12 * MiB, seed=9)
    code, report = sync(tmp)
    assert code == 0, report
    with source.open("r+b") as fh:
        fh.seek(6 * MiB)
        fh.write(os.urandom(5000))
    hashed = hashed_by_scan(monkeypatch)
    code, report = sync(tmp)
    assert code == 0, report
    assert digest(remote / "weights.bin") == digest(source)
    assert "weights.bin" not in hashed
    code, report = sync(tmp)
    assert report["plan"] == []  # the learned digest is the file's: nothing differs


def test_a_big_file_changed_alike_on_both_sides_is_compared_not_conflicted(sync_project) -> None:
    """Both sides changed: the scan must hash it, and equal bytes are no conflict."""
    tmp, local, remote, configure = sync_project
    configure("two-way")
    write_random(local / "same.bin", 12 * MiB, seed=10)
    code, report = sync(tmp)
    assert code == 0, report
    edit = os.urandom(5000)
    for side in (local, remote):
        with (side / "same.bin").open("r+b") as fh:
            fh.seek(3 * MiB)
            fh.write(edit)
    code, report = sync(tmp)
    assert code == 0, report
    assert report["conflicts"] == [] and report["plan"] == []
    assert digest(local / "same.bin") == digest(remote / "same.bin")


def test_a_host_file_that_grows_again_during_a_tail_pull_lands_whole_and_current(
    sync_project, monkeypatch
) -> None:
    """The host's log grows once more between the scan and the hash of its start: the tail pull
    sees the new size, stages nothing, and the same sync rescans and lands the file as it now
    is."""
    tmp, local, remote, configure = sync_project
    configure("pull")
    source = remote / "train.log"
    write_random(source, 12 * MiB, seed=11)
    code, report = sync(tmp)
    assert code == 0, report
    with source.open("ab") as fh:
        fh.write(os.urandom(MiB))
    real = AgentClient.digest_prefix
    grown: list[int] = []

    async def growing(self: AgentClient, root: str, path: str, length: int) -> Any:
        if not grown:
            with source.open("ab") as fh:
                grown.append(fh.write(os.urandom(4096)))
        return await real(self, root, path, length)

    monkeypatch.setattr(AgentClient, "digest_prefix", growing)
    code, report = sync(tmp)
    assert grown, "the tail pull was not tried"
    assert code == 0, report
    assert digest(local / "train.log") == digest(source)
    assert list(local.glob(".*.tmp")) == []
