"""The pure safety predicates and the pair identity's path rule, exhaustively on small values."""

from __future__ import annotations

import pytest
from tether.sync.identity import PairIdentity, remote_root
from tether.sync.safety import (
    BIG_DELETION_MIN,
    PairStatus,
    deletion_verdict,
    plan_fingerprint,
)


@pytest.mark.parametrize(
    ("deleting", "holding", "halts"),
    [
        (0, 0, False),
        (1, 2, False),  # one of two files: an everyday edit in a small tree
        (2, 2, False),  # a tiny tree wholly deleted: fewer than a handful
        (3, 5, False),
        (3, 3, False),
        (4, 4, True),  # rm -rf * of a small tree
        (4, 8, False),  # exactly half is not most
        (5, 8, True),
        (26, 27, True),  # all but one deleted (and one added)
        (26, 26, True),
        (10, 100, False),
        (51, 100, True),
        (50, 100, False),
    ],
)
def test_deletion_verdict(deleting: int, holding: int, halts: bool) -> None:
    verdict = deletion_verdict("local", deleting=deleting, holding=holding)
    assert (verdict is not None) is halts
    if verdict is not None:
        assert verdict[0] is PairStatus.HALTED_BIG_DELETION
        assert f"{deleting} of the {holding}" in verdict[1] and "local" in verdict[1]


def test_deletion_verdict_over_every_small_tree() -> None:
    """Every (deleting, holding) up to 40: halts exactly for 'most, and more than a handful'."""
    for holding in range(41):
        for deleting in range(holding + 1):
            verdict = deletion_verdict("remote", deleting=deleting, holding=holding)
            expected = deleting >= BIG_DELETION_MIN and deleting > holding / 2
            assert (verdict is not None) is expected, (deleting, holding)


def test_plan_fingerprint_names_exactly_the_deletions() -> None:
    a = plan_fingerprint([("local", "x"), ("local", "y")])
    assert a == plan_fingerprint([("local", "y"), ("local", "x")])
    assert a != plan_fingerprint([("local", "x"), ("local", "z")])
    assert a != plan_fingerprint([("remote", "x"), ("local", "y")])
    assert a != plan_fingerprint([("local", "x")])


@pytest.mark.parametrize(
    ("remote", "home", "resolved"),
    [
        ("~/src/k", "/home/u", "/home/u/src/k"),
        ("~", "/home/u", "/home/u"),
        ("src/k/", "/home/u", "/home/u/src/k"),
        ("/data/./k//", "/home/u", "/data/k"),
        ("~/src", None, "~/src"),
        ("~other/x", "/home/u", "~other/x"),
    ],
)
def test_remote_root(remote: str, home: str | None, resolved: str) -> None:
    assert remote_root(remote, home) == resolved


def test_identity_key_differs_for_any_part() -> None:
    base = PairIdentity("u@h:22", "/l", "/r")
    assert len({base.key(), PairIdentity("u@h:2222", "/l", "/r").key(),
                PairIdentity("u@h:22", "/l2", "/r").key(),
                PairIdentity("u@h:22", "/l", "/r2").key()}) == 4  # fmt: skip
