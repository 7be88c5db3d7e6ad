"""`tether sync` against a real sshd: modes, conflicts, deletions, links, killed syncs."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tether.cli.main import main

from tests.helpers import before_first_apply, sync, tree, write
from tests.sshd import SshServer

ROOT = Path(__file__).parents[1]


def count_scanner_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The files the local scanner hashes from now on (it keeps hashing them)."""
    from tether.sync import scan as scan_mod

    reads: list[str] = []
    real_hash_file = scan_mod.hash_file

    def counting(path: str) -> str:
        reads.append(path)
        return real_hash_file(path)

    monkeypatch.setattr("tether.sync.scan.hash_file", counting)
    return reads


def test_two_way_round_trip(sync_project, monkeypatch) -> None:
    tmp, local, remote, _ = sync_project
    monkeypatch.setattr("tether.sync.scan.RACY_NS", 0)  # cache digests of just-written files
    write(local / "a.txt", "one")
    write(local / "src" / "k.py", "print(1)")
    (local / "empty").mkdir()
    write(local / "run.sh", "#!/bin/sh\n")
    os.chmod(local / "run.sh", 0o755)
    os.symlink("src/k.py", local / "link.py")
    os.symlink("/etc/passwd", local / "escape")
    write(local / "ünïcødé ✓.txt", "u")
    write(local / "__pycache__" / "x.pyc", "junk")
    code, report = sync(tmp)
    assert code == 0, report
    want = tree(local)
    del want["escape"], want["__pycache__"], want["__pycache__/x.pyc"]
    assert tree(remote) == want
    assert os.stat(remote / "run.sh").st_mode & 0o111
    assert os.stat(remote / "a.txt").st_mtime_ns == os.stat(local / "a.txt").st_mtime_ns
    assert any(p["path"] == "escape" for p in report["problems"])

    # Edits on both sides, a deletion on each, a rename: all merged.
    write(remote / "src" / "k.py", "print(2)")
    write(local / "b.txt", "new local")
    (remote / "a.txt").unlink()
    (local / "ünïcødé ✓.txt").rename(local / "renamed.txt")
    code, report = sync(tmp)
    assert code == 0
    assert (local / "src" / "k.py").read_text() == "print(2)"
    assert not (local / "a.txt").exists()
    assert (remote / "b.txt").read_text() == "new local"
    assert (remote / "renamed.txt").exists() and not (remote / "ünïcødé ✓.txt").exists()

    # Nothing changed: nothing copied; once files pulled in are cached, nothing re-hashed.
    code, report = sync(tmp)
    assert report["plan"] == []
    code, report = sync(tmp)
    assert report["plan"] == [] and report["hashed"]["local"] == 0


def test_two_way_conflict_keeps_both(sync_project) -> None:
    tmp, local, remote, _ = sync_project
    write(local / "notes.md", "base")
    assert sync(tmp)[0] == 0
    now = time.time()
    write(local / "notes.md", "local edit", mtime=now - 100)
    write(remote / "notes.md", "remote edit", mtime=now)
    code, report = sync(tmp)
    assert code == 0 and report["status"] == "conflicts"
    assert (local / "notes.md").read_text() == "remote edit"
    copies = [p for p in os.listdir(local) if ".conflict-local-" in p]
    assert len(copies) == 1 and copies[0].endswith(".md")
    assert (local / copies[0]).read_text() == "local edit"
    assert (remote / copies[0]).read_text() == "local edit"
    assert tree(local) == tree(remote)
    # `tether conflicts` lists it; resolving with --keep local puts that version back.
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["--config", str(tmp / "tether.toml"), "conflicts", "--json"]) == 0
    listed = json.loads(buf.getvalue())
    assert [c["path"] for c in listed["conflicts"]] == ["notes.md"]
    with contextlib.redirect_stdout(io.StringIO()):
        rc = main(
            ["--config", str(tmp / "tether.toml"), "conflicts", "resolve", "notes.md",
             "--keep", "local"]
        )  # fmt: skip
    assert rc == 0
    assert (local / "notes.md").read_text() == "local edit"
    assert (remote / "notes.md").read_text() == "local edit"
    assert not [p for p in os.listdir(remote) if ".conflict-" in p]


def test_a_new_local_folder_losing_to_a_host_file_is_kept_and_the_sync_finishes(
    sync_project,
) -> None:
    """A folder made here and a file of the same name made on the host, both new: the folder
    steps aside as a conflict copy and its files, never hashed by the scan (nothing compared
    them), are copied from their new name. The digests read on the way belong to the scan's
    paths, so the base is complete; the sync used to stop with "refusing to save an invalid
    base" after it had moved and copied everything."""
    tmp, local, remote, _ = sync_project
    remote.mkdir()
    now = time.time()
    write(local / "a.txt" / "src" / "b.py", "local folder's file", mtime=now - 100)
    os.utime(local / "a.txt" / "src", (now - 100, now - 100))
    os.utime(local / "a.txt", (now - 100, now - 100))
    write(remote / "a.txt", "host file", mtime=now)
    code, report = sync(tmp)
    assert code == 0 and report["status"] == "conflicts", report
    copies = [p for p in os.listdir(local) if ".conflict-local-" in p]
    assert len(copies) == 1
    assert (local / copies[0] / "src" / "b.py").read_text() == "local folder's file"
    assert (local / "a.txt").read_text() == "host file"
    assert tree(local) == tree(remote)
    code, again = sync(tmp)  # the base holds the copies: nothing left to do
    assert code == 0 and again["status"] == "ok" and again["plan"] == [], again


def test_a_folder_conflict_copies_what_it_can_and_reports_the_rest(sync_project) -> None:
    """The losing folder holds a FIFO and a link leading out of the root: it steps aside whole,
    and only its files travel to the other side. The two others stay where the user has them,
    reported; neither is opened (a FIFO's read waits for a writer that never comes: the sync
    used to hang there) nor made on the host."""
    import threading

    tmp, local, remote, _ = sync_project
    remote.mkdir()
    now = time.time()
    write(local / "a.txt" / "f", "local folder's file", mtime=now - 100)
    os.symlink("/etc", local / "a.txt" / "out")
    os.mkfifo(local / "a.txt" / "fifo")
    os.utime(local / "a.txt", (now - 100, now - 100))
    write(remote / "a.txt", "host file", mtime=now)
    opened, done = threading.Event(), threading.Event()

    def free_a_reader() -> None:
        """If anything opens the FIFO to read, let it go (and remember): never a hang."""
        while not done.is_set():
            for fifo in local.glob("a*/fifo"):
                try:
                    os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
                    opened.set()
                except OSError:
                    pass  # no reader (ENXIO), or moved aside meanwhile
            done.wait(0.01)

    watcher = threading.Thread(target=free_a_reader)
    watcher.start()
    try:
        code, report = sync(tmp)
    finally:
        done.set()
        watcher.join()
    assert not opened.is_set(), "the sync opened the FIFO"
    assert code == 0 and report["status"] == "conflicts", report
    [copy] = [p for p in os.listdir(local) if ".conflict-local-" in p]
    assert (local / copy / "fifo").is_fifo() and os.readlink(local / copy / "out") == "/etc"
    assert tree(remote) == {"a.txt": "host file", copy: "/", f"{copy}/f": "local folder's file"}
    assert sorted(p["path"] for p in report["problems"]) == [f"{copy}/fifo", f"{copy}/out"]


def test_push_keeps_remote_edit_as_conflict_copy(sync_project) -> None:
    tmp, local, remote, configure = sync_project
    configure("push")
    write(local / "a.txt", "v1")
    assert sync(tmp)[0] == 0
    write(local / "a.txt", "local v2")
    write(remote / "a.txt", "remote v2")
    write(remote / "only-remote.txt", "stays")
    code, _report = sync(tmp)
    assert code == 0
    assert (remote / "a.txt").read_text() == "local v2"
    copies = [p for p in os.listdir(remote) if ".conflict-remote-" in p]
    assert [(remote / c).read_text() for c in copies] == ["remote v2"]
    assert (remote / "only-remote.txt").exists() and not (local / "only-remote.txt").exists()


def test_pull_and_mirror(sync_project) -> None:
    tmp, local, remote, configure = sync_project
    configure("pull")
    write(remote / "results" / "r.json", "{}")
    write(local / "local-only.txt", "mine")
    assert sync(tmp)[0] == 0
    assert (local / "results" / "r.json").read_text() == "{}"
    assert not (remote / "local-only.txt").exists()
    configure("mirror")
    write(remote / "stray.txt", "x")
    assert sync(tmp)[0] == 0
    assert tree(remote) == tree(local)


def test_emptied_root_halts_instead_of_deleting(sync_project) -> None:
    tmp, local, remote, _ = sync_project
    write(local / "a.txt", "keep me")
    write(local / "d" / "b.txt", "me too")
    assert sync(tmp)[0] == 0
    for p in sorted(remote.rglob("*"), reverse=True):
        p.rmdir() if p.is_dir() else p.unlink()
    code, report = sync(tmp)
    assert code == 1 and report["status"] == "halted-root-emptied"
    assert (local / "a.txt").read_text() == "keep me"
    remote.rmdir()
    code, report = sync(tmp)
    assert code == 1 and report["status"] == "halted-root-deleted"
    assert (local / "d" / "b.txt").exists()


def test_edit_between_scan_and_apply_is_not_clobbered(sync_project, monkeypatch) -> None:
    tmp, local, remote, configure = sync_project
    configure("push")
    write(local / "a.txt", "v1")
    assert sync(tmp)[0] == 0
    write(local / "a.txt", "v2")
    before_first_apply(monkeypatch, lambda: write(remote / "a.txt", "edited on the host meanwhile"))
    code, _report = sync(tmp)
    assert code == 0
    # The host's edit survived as a conflict copy; local's version landed after a rescan.
    assert (remote / "a.txt").read_text() == "v2"
    kept = [p for p in os.listdir(remote) if ".conflict-remote-" in p]
    assert [(remote / k).read_text() for k in kept] == ["edited on the host meanwhile"]


def test_a_new_local_file_is_read_once_and_its_digest_kept(sync_project, monkeypatch) -> None:
    """Files only this side has are hashed as they are read to be sent, not scanned twice."""
    import hashlib

    from tether.sync.state import StateStore, pair_key

    tmp, local, remote, configure = sync_project
    configure("push")
    monkeypatch.setattr("tether.sync.scan.RACY_NS", 0)
    scanner_reads = count_scanner_reads(monkeypatch)
    texts = {f"d/f{i}.txt": f"content {i}" * (i + 1) for i in range(12)}
    for rel, text in texts.items():
        write(local / rel, text)
    code, report = sync(tmp)
    assert code == 0, report
    assert scanner_reads == []  # nothing to compare with: no scan-time hashing
    assert report["hashed"]["local"] == 12  # each hashed once, as it was sent
    with StateStore() as store:
        key = pair_key(tmp / "tether.toml", "code")
        base, cache = store.load_base(key), store.load_digests(key)
    for rel, text in texts.items():
        digest = hashlib.sha256(text.encode()).hexdigest()
        assert base[rel].digest == digest and cache[rel][4] == digest
        assert (remote / rel).read_text() == text
    # Known now: the next sync reads nothing; an edit is hashed by the scan (base to compare).
    code, report = sync(tmp)
    assert report["plan"] == [] and report["hashed"]["local"] == 0
    write(local / "d/f0.txt", "edited")
    code, report = sync(tmp)
    assert code == 0 and report["hashed"]["local"] == 1
    assert scanner_reads == [str(local / "d/f0.txt")]
    assert (remote / "d/f0.txt").read_text() == "edited"


def test_an_apply_leaves_the_scan_it_was_planned_from_as_it_was(sync_project, monkeypatch) -> None:
    """What an apply learns (the digest of each new file, hashed as it was sent) comes back in its
    outcome and reaches the base and the digest cache once, after the apply: the scan the plan
    was made from is never rewritten by the apply's concurrent tasks."""
    import hashlib

    from tether.sync import apply as apply_mod
    from tether.sync import engine
    from tether.sync.state import StateStore, pair_key

    tmp, local, _remote, configure = sync_project
    configure("push")
    monkeypatch.setattr("tether.sync.scan.RACY_NS", 0)
    scans: list = []
    real_scan, real_apply = engine.scan_local, apply_mod.apply_plan

    def scanning(*args, **kw):
        scans.append(real_scan(*args, **kw))
        return scans[-1]

    def state() -> list:
        return [(dict(s.entries), dict(s.cache), s.hashed, dict(s.unhashed)) for s in scans]

    applies: list = []

    async def applying(actions, sides, **kw):
        before = state()
        outcome = await real_apply(actions, sides, **kw)
        applies.append((before, state(), outcome))
        return outcome

    monkeypatch.setattr(engine, "scan_local", scanning)
    monkeypatch.setattr(engine, "apply_plan", applying)
    texts = {f"f{i}.txt": f"new {i}" * (i + 1) for i in range(3)}
    for rel, text in texts.items():
        write(local / rel, text)
    code, report = sync(tmp)
    assert code == 0, report
    [(before, after, outcome)] = applies
    assert before and after == before
    digests = {rel: hashlib.sha256(text.encode()).hexdigest() for rel, text in texts.items()}
    assert outcome.learned == digests
    assert report["hashed"]["local"] == len(texts)
    with StateStore() as store:
        key = pair_key(tmp / "tether.toml", "code")
        base, cache = store.load_base(key), store.load_digests(key)
    assert {rel: base[rel].digest for rel in texts} == digests
    assert {rel: cache[rel][4] for rel in texts} == digests


def test_a_new_file_edited_before_it_is_read_is_rescanned(sync_project, monkeypatch) -> None:
    """An unhashed file whose size or mtime moved since the scan is not sent as scanned."""
    import hashlib

    from tether.sync.state import StateStore, pair_key

    tmp, local, remote, configure = sync_project
    configure("push")
    write(local / "new.txt", "first")
    applies = before_first_apply(monkeypatch, lambda: write(local / "new.txt", "second, longer"))
    code, report = sync(tmp)
    assert code == 0, report
    assert len(applies) == 2 and report["rounds"] == 2
    assert (remote / "new.txt").read_text() == "second, longer"
    with StateStore() as store:
        base = store.load_base(pair_key(tmp / "tether.toml", "code"))
    assert base["new.txt"].digest == hashlib.sha256(b"second, longer").hexdigest()


def test_pull_rescans_a_host_file_edited_before_it_is_read(sync_project, monkeypatch) -> None:
    """The host's small files are read in batches too; one edited since the host's scan fails
    on its own (``changed``), its neighbours land, and the next round brings the new version."""
    tmp, local, remote, configure = sync_project
    configure("pull")
    write(remote / "edited.txt", "first")
    write(remote / "steady.txt", "steady")
    applies = before_first_apply(
        monkeypatch, lambda: write(remote / "edited.txt", "second, longer")
    )
    code, report = sync(tmp)
    assert code == 0, report
    assert len(applies) == 2 and report["rounds"] == 2
    assert applies[0].changed == ["edited.txt"] and applies[0].files == 1  # steady.txt landed
    assert (local / "steady.txt").read_text() == "steady"
    assert (local / "edited.txt").read_text() == "second, longer"


def test_a_big_new_file_travels_in_chunks_hashed_once(sync_project, monkeypatch) -> None:
    """A new file past the batch size and the chunk size: read off the event loop, sent in
    pipelined chunks with the digest computed as it was read, and that digest kept."""
    import hashlib

    from tether.sync.state import StateStore, pair_key
    from tether.sync.wire import CHUNK

    tmp, local, remote, configure = sync_project
    configure("push")
    scanner_reads = count_scanner_reads(monkeypatch)
    data = os.urandom(2 * CHUNK + 12345)
    (local / "big.bin").write_bytes(data)
    code, report = sync(tmp)
    assert code == 0, report
    assert scanner_reads == [] and report["hashed"]["local"] == 1
    assert (remote / "big.bin").read_bytes() == data
    with StateStore() as store:
        base = store.load_base(pair_key(tmp / "tether.toml", "code"))
    assert base["big.bin"].digest == hashlib.sha256(data).hexdigest()


def test_one_shot_sync_to_a_host_that_is_down_exits_69(tmp_path: Path, monkeypatch, capsys) -> None:
    """The local scan starts before the link is up; a refused connection still ends the sync
    promptly with exit 69 and one line, and nothing is written on either side."""
    from tether.sync.state import StateStore, pair_key

    from tests.sshd import free_port

    monkeypatch.setenv("TETHER_STATE_DIR", str(tmp_path / "state"))
    down = SshServer(tmp_path / "s", free_port())
    down.prepare()  # keys and config, but no sshd listening
    local = tmp_path / "local"
    write(local / "a.txt", "kept")
    (tmp_path / "tether.toml").write_text(
        down.toml_host() + f'\n[pairs.code]\nhost = "test"\nlocal = "local"\n'
        f'remote = "{tmp_path / "remote"}"\nmode = "push"\n'
    )
    started = time.monotonic()
    code = main(["--config", str(tmp_path / "tether.toml"), "sync"])
    assert code == 69
    assert time.monotonic() - started < 30
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip()
    assert tree(local) == {"a.txt": "kept"} and not (tmp_path / "remote").exists()
    with StateStore() as store:
        assert store.load_base(pair_key(tmp_path / "tether.toml", "code")) == {}


def test_permission_denied_is_reported_and_the_rest_goes_on(sync_project) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads everything")
    tmp, local, remote, _ = sync_project
    write(local / "secret.txt", "no")
    os.chmod(local / "secret.txt", 0)
    write(local / "fine.txt", "yes")
    code, report = sync(tmp)
    assert code == 0 and (remote / "fine.txt").exists()
    assert [p["path"] for p in report["problems"]] == ["secret.txt"]


def test_gitignore_and_pair_ignore(sync_project) -> None:
    tmp, local, remote, configure = sync_project
    configure(ignore='["*.log", "!keep.log"]')
    write(local / ".gitignore", "build/\n")
    write(local / "sub" / ".gitignore", "/local-only.txt\n")
    write(local / "build" / "out.o", "x")
    write(local / "sub" / "local-only.txt", "x")
    write(local / "local-only.txt", "synced: the nested rule is anchored to sub/")
    write(local / "a.log", "x")
    write(local / "keep.log", "x")
    assert sync(tmp)[0] == 0
    got = set(tree(remote))
    assert {"local-only.txt", "keep.log", ".gitignore", "sub/.gitignore"} <= got
    assert not {"build", "sub/local-only.txt", "a.log"} & got


def test_killed_sync_leaves_no_partial_file_and_rerun_finishes(sync_project) -> None:
    tmp, local, remote, _ = sync_project
    for i in range(300):
        write(local / "big" / f"f{i:03}.bin", f"{i}" * 40_000)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "tether.cli.main", "--config", str(tmp / "tether.toml"), "sync"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if (
            remote.exists()
            and len(list((remote / "big").glob("*.bin")) if (remote / "big").exists() else []) > 5
        ):
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    landed = list((remote / "big").glob("*.bin")) if (remote / "big").exists() else []
    for p in landed:  # every visible file is whole
        assert p.read_text() == (local / "big" / p.name).read_text()
    code, report = sync(tmp)
    assert code == 0, report
    assert tree(remote) == tree(local)
    code, report = sync(tmp)
    assert report["plan"] == []


def test_host_modes_are_masked_with_the_local_umask(sync_project) -> None:
    """A folder the host made 0777 and files it made 0666/0777 land locally under the local
    umask (022 here): nobody else can write them, and the executable bit still travels."""
    tmp, local, remote, _configure = sync_project
    write(remote / "shared" / "data.txt", "d")
    write(remote / "shared" / "run.sh", "#!/bin/sh\n")
    os.chmod(remote / "shared" / "data.txt", 0o666)
    os.chmod(remote / "shared" / "run.sh", 0o777)
    os.chmod(remote / "shared", 0o777)
    old = os.umask(0o022)
    try:
        assert sync(tmp)[0] == 0
    finally:
        os.umask(old)
    modes = {
        name: stat.S_IMODE(os.stat(local / name).st_mode)
        for name in ("shared", "shared/data.txt", "shared/run.sh")
    }
    assert modes == {"shared": 0o755, "shared/data.txt": 0o644, "shared/run.sh": 0o755}
    assert sync(tmp)[1]["copied"] == 0  # the masked modes are not a change to send back
