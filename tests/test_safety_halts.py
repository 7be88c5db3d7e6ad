"""A pair's identity, the big-deletion guard and stored halts, through `tether sync` against a
real sshd (the daemon's side of the same rules is in tests/test_daemon_halts.py)."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import FILES, fill, sync, tree, wipe, write


def retarget(tmp: Path, remote: Path, mode: str) -> None:
    config = tmp / "tether.toml"
    text = config.read_text()
    old = text.split('remote = "', 1)[1].split('"', 1)[0]
    config.write_text(text.replace(f'remote = "{old}"', f'remote = "{remote}"').replace(
        'mode = "two-way"', f'mode = "{mode}"'))  # fmt: skip


def test_two_way_retarget_to_an_existing_folder_deletes_nothing(sync_project) -> None:
    tmp, local, remote, _ = sync_project
    fill(local)
    assert sync(tmp)[0] == 0 and tree(remote) == tree(local)
    other = tmp / "B"
    write(other / "only-in-b.txt", "b")
    retarget(tmp, other, "two-way")
    code, report = sync(tmp)
    assert code == 0 and report["deleted"] == 0, report
    assert "first sync" in report["notice"]
    assert all((local / n).exists() for n in FILES)  # the files B lacks stay here ...
    assert all((other / n).exists() for n in FILES)  # ... and are copied there
    assert (local / "only-in-b.txt").read_text() == "b"
    assert tree(remote) == {k: v for k, v in tree(local).items() if k != "only-in-b.txt"}
    code, report = sync(tmp)  # now B's own base: an ordinary sync, no notice
    assert code == 0 and report["notice"] == "" and report["copied"] == 0


def test_push_retarget_to_a_missing_folder_creates_it(sync_project) -> None:
    tmp, local, _remote, configure = sync_project
    configure("push")
    fill(local)
    assert sync(tmp)[0] == 0
    fresh = tmp / "new" / "place"
    retarget(tmp, fresh, "push")
    code, report = sync(tmp)
    assert code == 0 and report["status"] == "ok", report
    assert tree(fresh) == tree(local)


def test_accept_empty_fills_the_empty_side_and_deletes_nothing(sync_project) -> None:
    tmp, local, remote, _ = sync_project
    fill(local)
    assert sync(tmp)[0] == 0
    wipe(remote)
    assert sync(tmp)[1]["status"] == "halted-root-emptied"
    code, report = sync(tmp, "--accept-empty")
    assert code == 0 and report["deleted"] == 0, report
    assert all((local / n).exists() for n in FILES)
    assert tree(remote) == tree(local)


def test_most_of_a_side_deleted_halts_until_accepted(sync_project) -> None:
    tmp, local, remote, _ = sync_project
    fill(local)
    assert sync(tmp)[0] == 0
    wipe(remote)
    write(remote / "new.txt", "one new file")  # rm -rf * plus one new file: not "empty"
    code, report = sync(tmp)
    assert code == 1 and report["status"] == "halted-big-deletion", report
    assert "--accept-deletes" in report["message"]
    assert all((local / n).exists() for n in FILES)
    code, report = sync(tmp)  # the halt is kept; the same plan halts again
    assert code == 1 and report["status"] == "halted-big-deletion"
    code, report = sync(tmp, "--accept-deletes")
    assert code == 0 and report["deleted"] >= len(FILES), report
    assert tree(local) == tree(remote) == {"new.txt": "one new file"}


def test_an_accepted_plan_that_changed_is_judged_again(sync_project) -> None:
    tmp, local, remote, _ = sync_project
    fill(local, [*FILES, "g.txt", "h.txt"])
    assert sync(tmp)[0] == 0
    wipe(remote)
    write(remote / "keep.txt", "k")
    assert sync(tmp)[1]["status"] == "halted-big-deletion"
    from tether.sync.state import StateStore, pair_key

    with StateStore() as store:  # `tether resume` accepted the plan it was shown ...
        assert store.accept_halt(pair_key(tmp / "tether.toml", "code"))
    write(remote / "a.txt", "x:a.txt")  # ... but meanwhile the deletions changed
    code, report = sync(tmp)
    assert code == 1 and report["status"] == "halted-big-deletion", report
    assert all((local / n).exists() for n in FILES)
