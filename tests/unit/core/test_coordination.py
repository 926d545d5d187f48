"""The request machines of ringkv.core.coordination, driven event by event."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ringkv.core.consistency import Consistency
from ringkv.core.coordination import (
    MAX_STAMPS,
    Call,
    Hint,
    Plan,
    ReadRequest,
    Repair,
    Restamper,
    WriteRequest,
    Written,
    plan,
    stamp,
)
from ringkv.core.errors import (
    DeadlineExceeded,
    StaleMemberTable,
    StorageFull,
    Unavailable,
)
from ringkv.core.hlc import LOGICAL_BITS, HybridLogicalClock, Version
from ringkv.core.quorum import ReplicaSets, Target
from ringkv.core.records import Record, ReplicaAck

KEY = b"k"
NODES = ("a", "b", "c", "d", "e")
REPLICAS = ReplicaSets(("a", "b", "c"))


def rec(timestamp: int, node: str = "a") -> Record:
    return Record(KEY, b"v%d" % timestamp, Version(timestamp, node))


def planner(
    level: Consistency,
    down: frozenset[str] = frozenset(),
    sets: ReplicaSets = REPLICAS,
    first: str | None = None,
) -> Plan:
    return plan(level, sets, NODES, lambda node: node not in down, first=first)


def restamper(now_ms: int = 1) -> Restamper:
    return Restamper(HybridLogicalClock("a"), lambda: now_ms, lambda: True)


def write(
    level: Consistency = Consistency.QUORUM,
    down: frozenset[str] = frozenset(),
    record: Record | None = None,
) -> WriteRequest:
    return WriteRequest(
        record or rec(10),
        level,
        lambda: planner(level, down),
        node_id="a",
        restamper=restamper(),
    )


def by_node(calls: list[Call]) -> dict[str, Call]:
    return {call.target.node_id: call for call in calls}


# -- planning ------------------------------------------------------------------


def test_a_plan_refuses_before_anything_is_sent_when_too_few_replicas_are_live() -> None:
    with pytest.raises(Unavailable) as refused:
        planner(Consistency.QUORUM, frozenset({"b", "c"}))
    assert refused.value.reason == "NOT_ENOUGH_REPLICAS"


def test_a_plan_puts_the_local_node_first_and_lists_stand_ins_only_where_they_count() -> None:
    sloppy = planner(Consistency.ONE, frozenset({"d"}), first="c")
    assert sloppy.targets[0] == Target("c")
    assert sloppy.stand_ins == ("e",)
    assert planner(Consistency.QUORUM).stand_ins == ()


# -- writes --------------------------------------------------------------------


def test_a_write_finishes_once_a_quorum_acknowledged_and_hints_the_down_replica() -> None:
    request = write(down=frozenset({"c"}))
    calls = by_node(request.start().calls)
    assert set(calls) == {"a", "b"}
    assert not request.answered(calls["a"].id, ReplicaAck(replaced_live=False)).hints
    ready = request.answered(calls["b"].id, ReplicaAck(replaced_live=True))
    assert request.finished
    assert ready.hints == [Hint("c", rec(10))]
    assert request.result() == Written(rec(10), replaced_live=True)


def test_a_call_that_fails_after_the_level_was_met_leaves_a_hint() -> None:
    request = write()
    calls = by_node(request.start().calls)
    request.answered(calls["a"].id, ReplicaAck(False))
    assert request.answered(calls["b"].id, ReplicaAck(False)).hints == []
    ready = request.failed(calls["c"].id, Unavailable("down"))
    assert ready.hints == [Hint("c", rec(10))]


def test_a_write_that_meets_a_newer_version_is_stamped_past_it_and_sent_again() -> None:
    newer = (50 << LOGICAL_BITS) + 3
    request = write()
    calls = by_node(request.start().calls)
    request.answered(calls["a"].id, ReplicaAck(False))
    again = by_node(request.answered(calls["b"].id, ReplicaAck(False, newer=newer)).calls)
    assert not request.finished
    assert set(again) == {"a", "b", "c"}
    restamped = again["a"].record
    assert restamped is not None and restamped.version.timestamp > newer
    # The first round's late answer no longer counts.
    request.answered(calls["c"].id, ReplicaAck(False))
    assert not request.finished
    request.answered(again["b"].id, ReplicaAck(False))
    request.answered(again["c"].id, ReplicaAck(False))
    assert request.result().record == restamped


def test_a_write_that_keeps_meeting_newer_versions_gives_up() -> None:
    request = write(Consistency.ALL)
    calls = request.start().calls
    for _ in range(MAX_STAMPS):
        next_calls = []
        for call in calls:
            next_calls += request.answered(call.id, ReplicaAck(False, newer=1 << 40)).calls
        calls = next_calls
    assert not calls
    with pytest.raises(DeadlineExceeded) as uncertain:
        request.result()
    assert uncertain.value.reason == "WRITE_UNCERTAIN"


def test_a_node_that_may_no_longer_stamp_leaves_the_write_uncertain() -> None:
    request = WriteRequest(
        rec(10),
        Consistency.ALL,
        lambda: planner(Consistency.ALL),
        node_id="a",
        restamper=Restamper(HybridLogicalClock("a"), lambda: 1, lambda: False),
    )
    for call in request.start().calls:
        request.answered(call.id, ReplicaAck(False, newer=99))
    with pytest.raises(DeadlineExceeded) as uncertain:
        request.result()
    assert uncertain.value.reason == "WRITE_UNCERTAIN"


def test_a_refused_member_table_plans_the_write_again() -> None:
    plans = iter([planner(Consistency.QUORUM), planner(Consistency.QUORUM, frozenset({"a"}))])
    request = WriteRequest(
        rec(10), Consistency.QUORUM, lambda: next(plans), node_id="z", restamper=restamper()
    )
    calls = by_node(request.start().calls)
    replanned = by_node(request.failed(calls["a"].id, StaleMemberTable("newer table")).calls)
    assert set(replanned) == {"b", "c"}
    request.answered(calls["b"].id, ReplicaAck(False))  # the old plan's
    assert not request.finished
    request.answered(replanned["b"].id, ReplicaAck(False))
    request.answered(replanned["c"].id, ReplicaAck(False))
    assert request.result().record == rec(10)


def test_a_write_refused_everywhere_for_a_full_disk_says_so() -> None:
    request = write()
    for call in request.start().calls:
        request.failed(call.id, StorageFull("full"))
    with pytest.raises(StorageFull):
        request.result()


def test_a_write_past_its_deadline_may_or_may_not_become_visible() -> None:
    request = write()
    calls = request.start().calls
    request.answered(calls[0].id, ReplicaAck(False))
    request.expired()
    with pytest.raises(DeadlineExceeded) as uncertain:
        request.result()
    assert uncertain.value.reason == "WRITE_UNCERTAIN"


def test_a_stand_in_replaces_a_replica_whose_call_failed_at_a_sloppy_level() -> None:
    level = Consistency.ONE
    request = WriteRequest(
        rec(10), level, lambda: planner(level), node_id="a", restamper=restamper()
    )
    calls = by_node(request.start().calls)
    stand_in = request.failed(calls["b"].id, Unavailable("down")).calls
    assert [c.target for c in stand_in] == [Target("d", stands_in_for="b")]
    # The stand-in failed too: the next one stands in for the same replica.
    again = request.failed(stand_in[0].id, Unavailable("down")).calls
    assert [c.target for c in again] == [Target("e", stands_in_for="b")]
    assert request.failed(calls["c"].id, Unavailable("down")).calls == []
    request.answered(again[0].id, ReplicaAck(False))
    assert request.finished


def test_stamping_passes_the_local_copy_and_counts_expiry_from_the_version() -> None:
    clock = HybridLogicalClock("a")
    local = rec(1000 << LOGICAL_BITS)
    record = stamp(clock, 5, KEY, b"v", tombstone=False, ttl_ms=100, local=local)
    assert record.version > local.version
    assert record.expires_at_ms == 1000 + 100


# -- reads ---------------------------------------------------------------------


def read(level: Consistency = Consistency.QUORUM, sets: ReplicaSets = REPLICAS) -> ReadRequest:
    return ReadRequest(KEY, level, lambda: planner(level, sets=sets, first="a"), node_id="a")


def test_a_read_asks_just_enough_replicas_and_one_more_for_each_failure() -> None:
    request = read()
    first = request.start().calls
    assert [c.target.node_id for c in first] == ["a", "b"]
    assert [c.target.node_id for c in request.failed(first[1].id, Unavailable("x")).calls] == ["c"]


def test_a_read_during_a_membership_change_asks_both_rings() -> None:
    request = read(sets=ReplicaSets(("a", "b", "c"), ("a", "b", "d")))
    assert {c.target.node_id for c in request.start().calls} == {"a", "b", "c", "d"}


def test_a_read_returns_the_newest_and_repairs_the_stale_replica() -> None:
    request = read()
    a, b = request.start().calls
    request.answered(a.id, rec(5))
    ready = request.answered(b.id, rec(7, "b"))
    assert request.result() == rec(7, "b")
    assert ready.repairs == [Repair("a", rec(7, "b"))]


def test_a_linearizable_read_writes_the_winner_back_before_it_answers() -> None:
    request = read(Consistency.LINEARIZABLE)
    a, b = request.start().calls
    request.answered(a.id, None)
    back = request.answered(b.id, rec(7, "b")).calls
    assert {c.target.node_id for c in back} == {"a", "b", "c"}
    assert all(c.record == rec(7, "b") for c in back)
    assert not request.finished
    request.answered(back[0].id, ReplicaAck(False))
    # A replica holding a newer version does not make the write-back restamp.
    request.answered(back[1].id, ReplicaAck(False, newer=1 << 40))
    assert request.result() == rec(7, "b")


def test_an_answer_that_arrives_after_the_read_finished_is_repaired_if_stale() -> None:
    request = read(sets=ReplicaSets(("a", "b", "c"), ("a", "b", "c")))
    calls = by_node(request.start().calls)
    request.answered(calls["a"].id, rec(7))
    request.answered(calls["b"].id, rec(7))
    assert request.finished
    assert request.answered(calls["c"].id, rec(3)).repairs == [Repair("c", rec(7))]


def test_a_read_fails_when_too_few_replicas_answer() -> None:
    request = read()
    for call in request.start().calls:
        for more in request.failed(call.id, Unavailable("down")).calls:
            request.failed(more.id, Unavailable("down"))
    with pytest.raises(Unavailable) as failed:
        request.result()
    assert failed.value.reason == "NOT_ENOUGH_REPLICAS"


# -- properties ----------------------------------------------------------------


@given(
    level=st.sampled_from([Consistency.QUORUM, Consistency.ALL, Consistency.LINEARIZABLE]),
    outcomes=st.lists(st.sampled_from(["ok", "newer", "fail"]), min_size=10, max_size=10),
)
def test_a_write_succeeds_only_with_the_level_met_by_replicas_holding_its_final_version(
    level: Consistency, outcomes: list[str]
) -> None:
    request = write(level)
    pending = list(request.start().calls)
    held: dict[Version, set[str]] = {}
    answers = iter(outcomes)
    while pending and not request.finished:
        call = pending.pop(0)
        assert call.record is not None
        outcome = next(answers, "ok")
        if outcome == "fail":
            pending += request.failed(call.id, Unavailable("down")).calls
            continue
        held.setdefault(call.record.version, set()).add(call.target.node_id)
        newer = 1 << 30 if outcome == "newer" else 0
        pending += request.answered(call.id, ReplicaAck(False, newer=newer)).calls
    if not request.finished:
        request.expired()
    try:
        written = request.result()
    except (Unavailable, DeadlineExceeded):
        return
    needed = 3 if level is Consistency.ALL else 2
    assert len(held[written.record.version]) >= needed
