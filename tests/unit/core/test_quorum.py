"""Quorum arithmetic: targets, sloppy stand-ins, fail-fast and read repair choices."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ringkv.core.consistency import Consistency
from ringkv.core.errors import Unavailable
from ringkv.core.hlc import Version
from ringkv.core.quorum import (
    ReplicaSets,
    Target,
    check_reachable,
    met,
    newest,
    required_replies,
    sloppy,
    stale_replicas,
    targets,
)
from ringkv.core.records import Record

NODES = ("a", "b", "c", "d", "e")


def rec(timestamp: int, node: str = "n") -> Record:
    return Record(b"k", b"v%d" % timestamp, Version(timestamp, node))


@pytest.mark.parametrize(
    ("level", "n", "needed"),
    [
        (Consistency.ONE, 3, 1),
        (Consistency.QUORUM, 1, 1),
        (Consistency.QUORUM, 2, 2),
        (Consistency.QUORUM, 3, 2),
        (Consistency.QUORUM, 5, 3),
        (Consistency.ALL, 3, 3),
        (Consistency.LINEARIZABLE, 3, 2),
        (Consistency.LINEARIZABLE, 4, 3),
    ],
)
def test_required_replies(level: Consistency, n: int, needed: int) -> None:
    assert required_replies(level, n) == needed


def test_default_level_has_no_quorum() -> None:
    with pytest.raises(ValueError, match="DEFAULT"):
        required_replies(Consistency.DEFAULT, 3)


def test_all_live_targets_are_the_preference_list() -> None:
    chosen = targets(NODES, 3, lambda _: True, Consistency.QUORUM)
    assert chosen == [Target("a"), Target("b"), Target("c")]


def test_a_down_replica_gets_the_next_live_stand_in_at_one() -> None:
    live = {"a", "c", "e"}
    chosen = targets(NODES, 3, live.__contains__, Consistency.ONE)
    assert chosen == [Target("a"), Target("c"), Target("e", stands_in_for="b")]


def test_quorum_of_two_replicas_uses_stand_ins() -> None:
    """RF 2: a strict quorum is both replicas, so one node down would refuse every write."""
    live = {"a", "c"}
    chosen = targets(NODES, 2, live.__contains__, Consistency.QUORUM)
    assert chosen == [Target("a"), Target("c", stands_in_for="b")]


@pytest.mark.parametrize(
    ("level", "n"),
    [(Consistency.QUORUM, 3), (Consistency.QUORUM, 5), (Consistency.ALL, 3), (Consistency.ALL, 2)]
    + [(Consistency.LINEARIZABLE, n) for n in (1, 2, 3)],
)
def test_strict_levels_never_use_stand_ins(level: Consistency, n: int) -> None:
    live = {"a", "c", "d", "e"}
    chosen = targets(NODES, n, live.__contains__, level)
    assert chosen == [Target(node) for node in NODES[:n] if node in live]


@given(
    n=st.integers(1, 5),
    level=st.sampled_from([Consistency.QUORUM, Consistency.ALL, Consistency.LINEARIZABLE]),
    write_live=st.sets(st.sampled_from(NODES)),
    read_live=st.sets(st.sampled_from(NODES)),
)
def test_strict_quorums_of_one_key_always_meet(
    n: int, level: Consistency, write_live: set[str], read_live: set[str]
) -> None:
    """Where stand-ins do not count, any write quorum and read quorum share a replica,
    whatever each side of a partition sees as live: a QUORUM read sees every QUORUM
    write that completed before it."""
    if sloppy(level, n):
        return
    sets = ReplicaSets(NODES[:n])
    wrote = {
        t.stands_in_for or t.node_id for t in targets(NODES, n, write_live.__contains__, level)
    }
    read = {t.stands_in_for or t.node_id for t in targets(NODES, n, read_live.__contains__, level)}
    if met(level, sets, wrote) and met(level, sets, read):
        assert wrote & read


def test_stand_ins_run_out() -> None:
    live = {"a", "d"}
    chosen = targets(NODES, 3, live.__contains__, Consistency.ONE)
    assert chosen == [Target("a"), Target("d", stands_in_for="b")]


@given(
    live=st.sets(st.sampled_from(NODES)),
    n=st.integers(1, 5),
    level=st.sampled_from([Consistency.ONE, Consistency.QUORUM, Consistency.ALL]),
)
def test_targets_are_distinct_live_and_at_most_n(
    live: set[str], n: int, level: Consistency
) -> None:
    chosen = targets(NODES, n, live.__contains__, level)
    nodes = [t.node_id for t in chosen]
    assert len(nodes) == len(set(nodes)) <= n
    assert all(node in live for node in nodes)
    real = [t.node_id for t in chosen if t.stands_in_for is None]
    assert real == [node for node in NODES[:n] if node in live]
    for t in chosen:
        if t.stands_in_for is not None:
            assert t.stands_in_for in NODES[:n]
            assert t.stands_in_for not in live
            assert t.node_id not in NODES[:n]


def test_fail_fast_says_how_many_are_reachable() -> None:
    sets = ReplicaSets(("a", "b", "c"))
    check_reachable(Consistency.QUORUM, sets, {"a", "c"})
    with pytest.raises(Unavailable, match="QUORUM needs 2 of 3 replicas, only 1 reachable") as e:
        check_reachable(Consistency.QUORUM, sets, {"c", "x"})
    assert e.value.metadata == {"needed": "2", "reachable": "1"}


def test_during_a_change_both_sets_must_be_reachable() -> None:
    sets = ReplicaSets(("a", "b", "c"), ("a", "b", "d"))
    check_reachable(Consistency.QUORUM, sets, {"a", "c", "d"})
    with pytest.raises(Unavailable, match="only 1 reachable"):
        check_reachable(Consistency.QUORUM, sets, {"b", "c"})


def test_joint_quorum_needs_the_level_in_both_sets() -> None:
    sets = ReplicaSets(("a", "b", "c"), ("a", "b", "d"))
    assert sets.all() == ("a", "b", "c", "d")
    assert sets.pending() == ("d",)
    assert not met(Consistency.QUORUM, sets, {"a", "c"})  # only a of the upcoming set
    assert met(Consistency.QUORUM, sets, {"a", "c", "d"})
    assert met(Consistency.QUORUM, sets, {"a", "b"})
    assert met(Consistency.QUORUM, ReplicaSets(("a", "b", "c")), {"b", "c"})


_RINGS = st.lists(st.sampled_from(NODES), min_size=1, max_size=5, unique=True)


@given(
    old=_RINGS,
    new=_RINGS,
    level=st.sampled_from([Consistency.QUORUM, Consistency.ALL, Consistency.LINEARIZABLE]),
    first=st.sets(st.sampled_from(NODES)),
    second=st.sets(st.sampled_from(NODES)),
    second_ring=st.sampled_from(["old", "joint", "new"]),
)
def test_a_joint_quorum_meets_every_quorum_of_either_ring(  # noqa: PLR0917 (hypothesis)
    old: list[str],
    new: list[str],
    level: Consistency,
    first: set[str],
    second: set[str],
    second_ring: str,
) -> None:
    """Whatever ring the other coordinator used, before, during or after the
    change, a request made during it shares a replica with it."""
    joint = ReplicaSets(tuple(old), tuple(new))
    other = {
        "old": ReplicaSets(tuple(old)),
        "joint": joint,
        "new": ReplicaSets(tuple(new)),
    }[second_ring]
    if met(level, joint, first) and met(level, other, second):
        assert first & second


def test_newest_wins_and_ties_break_by_node() -> None:
    assert newest([None, rec(1), rec(3), rec(2)]) == rec(3)
    assert newest([rec(5, "a"), rec(5, "b")]) == rec(5, "b")
    assert newest([None, None]) is None


def test_stale_replicas_are_older_or_empty() -> None:
    replies = {"a": rec(3), "b": rec(1), "c": None}
    assert stale_replicas(replies, rec(3)) == ["b", "c"]
    assert stale_replicas({"a": None}, None) == []
