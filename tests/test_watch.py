"""daemon/watch.py: coalescing on a scripted source (no file timing), then a real folder."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tether.sync.watch import (
    FORCE_POLLING_ENV,
    LocalWatcher,
    ManualSource,
    count_dirs,
    inotify_budget,
)

from tests.helpers import eventually, run


async def next_batch(watcher: LocalWatcher, timeout_s: float = 2.0) -> frozenset[str]:
    return await asyncio.wait_for(watcher.__anext__(), timeout_s)


async def nothing_before_a_marker(watcher: LocalWatcher, src: ManualSource) -> None:
    """Nothing else was on its way: a marker pushed now comes alone in the next batch (batches
    keep their order, so anything still pending would come before it or with it)."""
    src.push("created", "marker")
    assert await next_batch(watcher) == {"marker"}


def ready_batches(watcher: LocalWatcher) -> int:
    """Batches the watcher has closed (their quiet time ended) and nobody has taken yet."""
    return len(watcher._ready)


async def collect_until(
    watcher: LocalWatcher, done: Callable[[set[str]], bool], timeout_s: float = 5.0
) -> list[frozenset[str]]:
    """Batches until their union satisfies ``done``."""
    batches: list[frozenset[str]] = []
    seen: set[str] = set()
    deadline = time.monotonic() + timeout_s
    while not done(seen):
        left = deadline - time.monotonic()
        assert left > 0, f"timed out; saw {sorted(seen)}"
        batch = await next_batch(watcher, left)
        batches.append(batch)
        seen |= batch
    return batches


# -- scripted source: coalescing and filtering ----------------------------------------------------


def test_burst_is_one_batch_with_each_path_once(tmp_path: Path) -> None:
    async def main() -> None:
        src = ManualSource()
        async with LocalWatcher(tmp_path, source=src, coalesce_ms=20) as w:
            assert w.mode == "manual"
            for _ in range(3):
                src.push("created", "a.py")
                src.push("modified", "a.py")
                src.push("closed", "a.py")
            src.push("modified", str(tmp_path / "sub" / "b.py"))  # absolute → relative
            assert await next_batch(w) == {"a.py", "sub/b.py"}
            await nothing_before_a_marker(w, src)

    run(main())


def test_quiet_gap_splits_batches(tmp_path: Path) -> None:
    async def main() -> None:
        src = ManualSource()
        async with LocalWatcher(tmp_path, source=src, coalesce_ms=10) as w:
            src.push("created", "one")
            assert await next_batch(w) == {"one"}
            src.push("created", "two")
            assert await next_batch(w) == {"two"}

    run(main())


def test_constant_stream_still_flushes_by_max_delay(tmp_path: Path) -> None:
    async def main() -> None:
        src = ManualSource()
        async with LocalWatcher(tmp_path, source=src, coalesce_ms=30, max_delay_ms=60) as w:

            async def stream() -> None:
                for i in range(60):  # an event every 5 ms for ~300 ms: never 30 ms quiet
                    src.push("modified", f"f{i}")
                    await asyncio.sleep(0.005)  # kept: the stream's pace is what is tested

            feeder = asyncio.create_task(stream())
            started = time.monotonic()
            first = await next_batch(w)
            waited = time.monotonic() - started
            assert "f0" in first
            assert waited < 0.25, f"first batch took {waited:.3f} s despite max_delay_ms=60"
            rest = await collect_until(w, lambda seen: "f59" in seen)
            await feeder
            assert len(rest) >= 2  # the stream was cut into several batches
            assert set().union(first, *rest) == {f"f{i}" for i in range(60)}

    run(main())


def test_slow_consumer_gets_waiting_batches_merged(tmp_path: Path) -> None:
    async def main() -> None:
        src = ManualSource()
        async with LocalWatcher(tmp_path, source=src, coalesce_ms=5) as w:
            src.push("created", "x")
            await eventually(lambda: ready_batches(w) == 1, 5, "x's batch closes")
            src.push("created", "y")
            await eventually(lambda: ready_batches(w) == 2, 5, "y's batch closes too")
            assert await next_batch(w) == {"x", "y"}

    run(main())


def test_what_is_reported(tmp_path: Path) -> None:
    async def main() -> None:
        src = ManualSource()
        async with LocalWatcher(tmp_path, source=src, coalesce_ms=5) as w:
            src.push("moved", "old.txt", "new/name.txt")
            src.push("moved", "d1", "d2", is_dir=True)
            src.push("created", "newdir", is_dir=True)
            src.push("deleted", "gone", is_dir=True)
            src.push("modified", "somedir", is_dir=True)  # a child's side effect: dropped
            src.push("opened", "read-only.txt")
            src.push("closed_no_write", "read-only.txt")
            src.push("created", "/elsewhere/outside.txt")
            src.push("created", "../escape.txt")
            src.push("modified", str(tmp_path), is_dir=True)
            assert await next_batch(w) == {
                "old.txt",
                "new/name.txt",
                "d1",
                "d2",
                "newdir",
                "gone",
            }
            src.push("deleted", str(tmp_path), is_dir=True)
            assert await next_batch(w) == {"."}

    run(main())


def test_ignored_paths_and_paths_under_ignored_folders_are_dropped(tmp_path: Path) -> None:
    calls: list[tuple[str, bool]] = []

    def ignore(path: str, is_dir: bool) -> bool:
        calls.append((path, is_dir))
        return path.endswith(".log") or (is_dir and path.split("/")[-1] == "build")

    async def main() -> None:
        src = ManualSource()
        async with LocalWatcher(tmp_path, source=src, ignore=ignore, coalesce_ms=5) as w:
            src.push("modified", "run.log")
            src.push("created", "build", is_dir=True)
            src.push("created", "build/obj/x.o")
            src.push("moved", "keep.txt", "keep.log")  # the kept end is still reported
            src.push("modified", "src/build.py")
            assert await next_batch(w) == {"keep.txt", "src/build.py"}

    run(main())
    assert ("build", True) in calls  # folders are tested as folders


def test_suppress_plain_paths_for_a_window(tmp_path: Path) -> None:
    async def main() -> None:
        src = ManualSource()
        async with LocalWatcher(tmp_path, source=src, coalesce_ms=5) as w:
            w.suppress(["written.txt"], ttl_s=0.2)
            src.push("modified", "written.txt")
            src.push("modified", "other.txt")
            assert await next_batch(w) == {"other.txt"}
            await asyncio.sleep(0.25)  # kept: the suppression's ttl_s (0.2 s) runs out
            src.push("modified", "written.txt")
            assert await next_batch(w) == {"written.txt"}

    run(main())


def test_suppress_with_fingerprints_keeps_a_users_later_edit(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"synced")
    st = target.stat()

    async def main() -> None:
        src = ManualSource()
        async with LocalWatcher(tmp_path, source=src, coalesce_ms=5) as w:
            w.suppress({"out.bin": (st.st_size, st.st_mtime_ns), ".out.bin.tmp": None}, 5.0)
            src.push("moved", ".out.bin.tmp", "out.bin")  # the engine's own rename: silent
            src.push("modified", "out.bin")
            src.push("created", "marker")
            assert await next_batch(w) == {"marker"}
            target.write_bytes(b"the user edited this right after")  # no longer what was written
            src.push("modified", "out.bin")
            assert await next_batch(w) == {"out.bin"}

    run(main())


class RecordingSource(ManualSource):
    """Notes the thread that stopped it (it must not be the loop's)."""

    def __init__(self) -> None:
        super().__init__()
        self.stop_thread: threading.Thread | None = None

    def stop(self) -> None:
        self.stop_thread = threading.current_thread()
        super().stop()


def test_cancel_stops_the_source_off_the_loop_and_reraises(tmp_path: Path) -> None:
    src = RecordingSource()

    async def consume() -> None:
        async with LocalWatcher(tmp_path, source=src) as w:
            async for _ in w:
                pass

    async def main() -> None:
        task = asyncio.create_task(consume())
        await eventually(lambda: src.started, 5, "the watcher starts its source")
        assert src.started and not src.stopped
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(main())
    assert src.stopped
    assert src.stop_thread is not None and src.stop_thread is not threading.main_thread()


def test_lazy_iteration_without_context_manager_stops_on_cancel(tmp_path: Path) -> None:
    src = RecordingSource()

    async def consume(w: LocalWatcher, got: list[frozenset[str]]) -> None:
        async for batch in w:
            got.append(batch)

    async def main() -> None:
        w = LocalWatcher(tmp_path, source=src, coalesce_ms=5)
        got: list[frozenset[str]] = []
        task = asyncio.create_task(consume(w, got))
        await eventually(lambda: src.started, 5, "the first iteration starts the watcher")
        src.push("created", "a")
        await eventually(lambda: got, 5, "a's batch reaches the consumer")
        assert got == [{"a"}]
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert src.stopped

    run(main())


def test_close_ends_iteration(tmp_path: Path) -> None:
    async def main() -> None:
        src = ManualSource()
        w = LocalWatcher(tmp_path, source=src)
        async with w:
            waiting = asyncio.create_task(w.__anext__())
            await eventually(lambda: w._waiter is not None, 5, "the iterator waits for a batch")
            await w.aclose()
            with pytest.raises(StopAsyncIteration):
                await waiting
            src.push("created", "late")  # after close: ignored, no error
        assert src.stopped

    run(main())


# -- choosing the backend -------------------------------------------------------------------------


def make_dirs(root: Path, n: int) -> None:
    for i in range(n):
        (root / f"d{i:03}" / "inner").mkdir(parents=True)


def test_count_dirs_counts_every_folder_and_stops_early(tmp_path: Path) -> None:
    make_dirs(tmp_path, 10)
    (tmp_path / "link").symlink_to(tmp_path / "d000")
    assert count_dirs(tmp_path) == 21  # the root, 10 folders, 10 inner ones; no symlink
    assert count_dirs(tmp_path, stop_after=5) == 6
    assert inotify_budget(8192) == 8192 - 2048
    assert inotify_budget(1_000_000) == 1_000_000 - 4096


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify is Linux's")
def test_too_many_folders_for_inotify_falls_back_to_polling_with_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(FORCE_POLLING_ENV, raising=False)
    make_dirs(tmp_path, 10)  # 21 folders; a limit of 20 leaves a budget of 15

    async def main() -> None:
        async with LocalWatcher(tmp_path, inotify_limit=20, poll_interval_s=0.05) as w:
            assert w.mode == "polling"
            assert len(w.warnings) == 1
            assert "sudo sysctl fs.inotify.max_user_watches=524288" in w.warnings[0]
            assert "/etc/sysctl.d/" in w.warnings[0]
        async with LocalWatcher(tmp_path, inotify_limit=1000) as w:
            assert w.mode == "inotify" and w.warnings == []
        async with LocalWatcher(tmp_path, inotify_limit=20, force_polling=False) as w:
            assert w.mode == "inotify" and w.warnings == []  # the argument wins over the check

    run(main())


def test_force_polling_argument_beats_env_beats_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def mode(**kwargs: Any) -> str:
        async with LocalWatcher(tmp_path, poll_interval_s=0.05, **kwargs) as w:
            return w.mode

    native = run(mode(force_polling=False))
    assert native != "polling"
    monkeypatch.setenv(FORCE_POLLING_ENV, "1")
    assert run(mode()) == "polling"
    assert run(mode(force_polling=False)) == native
    monkeypatch.setenv(FORCE_POLLING_ENV, "0")
    assert run(mode(inotify_limit=1)) == native  # env says no polling: the check is skipped
    assert run(mode(force_polling=True)) == "polling"


# -- a real folder ------------------------------------------------------------------------------


@pytest.fixture(params=["native", "polling"])
def real_watcher(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[..., LocalWatcher]:
    root = tmp_path / "root"
    root.mkdir()
    polling = request.param == "polling"

    def make(**kwargs: Any) -> LocalWatcher:
        kwargs.setdefault("force_polling", polling)
        kwargs.setdefault("poll_interval_s", 0.05)
        return LocalWatcher(root, **kwargs)

    return make


def test_real_create_modify_delete_rename(real_watcher: Callable[..., LocalWatcher]) -> None:
    async def main() -> None:
        async with real_watcher() as w:
            root = w.root
            (root / "a.txt").write_text("one")
            await collect_until(w, lambda seen: "a.txt" in seen)
            (root / "a.txt").write_text("two, longer")
            await collect_until(w, lambda seen: "a.txt" in seen)
            (root / "a.txt").rename(root / "b.txt")
            await collect_until(w, lambda seen: {"a.txt", "b.txt"} <= seen)
            (root / "b.txt").unlink()
            await collect_until(w, lambda seen: "b.txt" in seen)

    run(main())


def test_real_nested_folders_and_folder_rename(real_watcher: Callable[..., LocalWatcher]) -> None:
    async def main() -> None:
        async with real_watcher() as w:
            root = w.root
            (root / "a" / "b" / "c").mkdir(parents=True)
            (root / "a" / "b" / "c" / "deep.txt").write_text("x")
            await collect_until(w, lambda seen: {"a", "a/b/c/deep.txt"} <= seen)
            (root / "a").rename(root / "z")
            await collect_until(w, lambda seen: {"a", "z"} <= seen)
            (root / "z" / "b" / "c" / "after.txt").write_text("y")  # watched at its new place
            await collect_until(w, lambda seen: "z/b/c/after.txt" in seen)

    run(main())


def test_real_many_files_come_in_few_batches(real_watcher: Callable[..., LocalWatcher]) -> None:
    async def main() -> None:
        async with real_watcher(coalesce_ms=20, max_delay_ms=200) as w:
            names = {f"f{i:03}.txt" for i in range(200)}
            for name in names:
                (w.root / name).write_text(name)
            batches = await collect_until(w, lambda seen: names <= seen)
            assert len(batches) <= 6, [len(b) for b in batches]

    run(main())


def test_real_ignored_files_are_never_reported(real_watcher: Callable[..., LocalWatcher]) -> None:
    def ignore(path: str, is_dir: bool) -> bool:
        return path.endswith(".log") or (is_dir and path == "build")

    async def main() -> None:
        async with real_watcher(ignore=ignore) as w:
            root = w.root
            (root / "build" / "obj").mkdir(parents=True)
            (root / "build" / "obj" / "x.o").write_text("obj")
            (root / "run.log").write_text("log")
            (root / "sub").mkdir()
            (root / "sub" / "deep.log").write_text("log")
            (root / "done.txt").write_text("last")  # reported after everything written before
            batches = await collect_until(w, lambda seen: "done.txt" in seen)
            seen = set().union(*batches)
            assert not {p for p in seen if p.endswith(".log") or p.startswith("build")}, seen

    run(main())


def test_real_suppressed_write_is_not_echoed(real_watcher: Callable[..., LocalWatcher]) -> None:
    """The engine's recipe: register first, write a temporary file, set its mtime, rename."""

    async def main() -> None:
        async with real_watcher() as w:
            root = w.root
            data, mtime_ns = b"from the remote", 1_600_000_000_123_456_789
            tmp, final = root / ".f.tether-tmp", root / "f.txt"
            w.suppress([tmp.name], ttl_s=5.0)  # nobody else writes tether's temporary names
            w.suppress({"f.txt": (len(data), mtime_ns)}, ttl_s=5.0)
            tmp.write_bytes(data)
            os.utime(tmp, ns=(mtime_ns, mtime_ns))
            os.replace(tmp, final)
            (root / "marker").write_text("")  # reported after everything written before
            batches = await collect_until(w, lambda seen: "marker" in seen)
            assert not {"f.txt", tmp.name} & set().union(*batches)
            final.write_bytes(b"edited by the user")  # still in the window, but not ours
            await collect_until(w, lambda seen: "f.txt" in seen)

    run(main())


def test_suppress_before_write_real(real_watcher: Callable[..., LocalWatcher]) -> None:
    async def main() -> None:
        async with real_watcher() as w:
            root = w.root
            w.suppress(["g.txt"], ttl_s=1.0)
            (root / "g.txt").write_text("the engine wrote this")
            (root / "marker").write_text("")
            batches = await collect_until(w, lambda seen: "marker" in seen)
            assert "g.txt" not in set().union(*batches)

    run(main())
