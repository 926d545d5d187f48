"""The request machines of ringkv.core.coordination, driven event by event."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ringkv.core.consistency import Consistency
from ringkv.core.coordination import (
    MAX_STAMPS,
    Call,
    Hint,
    Plan,
    PlanDiverged,
    ReadRequest,
    Repair,
    Restamper,
    WriteRequest,
    Written,
    group_by_plan,
    plan,
    shared_planner,
    stamp,
)
from ringkv.core.errors import (
    DeadlineExceeded,
    RingkvError,
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
        [record or rec(10)],
        level,
        lambda _: planner(level, down),
        node_id="a",
        restamper=restamper(),
    )


def acks(replaced_live: bool, newer: int = 0) -> tuple[ReplicaAck]:
    """A replica's answer to a call that wrote one record."""
    return (ReplicaAck(replaced_live, newer),)


def only(request: WriteRequest) -> Written:
    """The outcome of a request that wrote one record; raises its error."""
    (outcome,) = request.result()
    if isinstance(outcome, RingkvError):
        raise outcome
    return outcome


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
    assert not request.answered(calls["a"].id, acks(replaced_live=False)).hints
    ready = request.answered(calls["b"].id, acks(replaced_live=True))
    assert request.finished
    assert ready.hints == [Hint("c", rec(10))]
    assert only(request) == Written(rec(10), replaced_live=True)


def test_a_call_that_fails_after_the_level_was_met_leaves_a_hint() -> None:
    request = write()
    calls = by_node(request.start().calls)
    request.answered(calls["a"].id, acks(False))
    assert request.answered(calls["b"].id, acks(False)).hints == []
    ready = request.failed(calls["c"].id, Unavailable("down"))
    assert ready.hints == [Hint("c", rec(10))]


def test_a_write_that_meets_a_newer_version_is_stamped_past_it_and_sent_again() -> None:
    newer = (50 << LOGICAL_BITS) + 3
    request = write()
    calls = by_node(request.start().calls)
    request.answered(calls["a"].id, acks(False))
    again = by_node(request.answered(calls["b"].id, acks(False, newer=newer)).calls)
    assert not request.finished
    assert set(again) == {"a", "b", "c"}
    restamped = again["a"].records[0]
    assert restamped is not None and restamped.version.timestamp > newer
    # The first round's late answer no longer counts.
    request.answered(calls["c"].id, acks(False))
    assert not request.finished
    request.answered(again["b"].id, acks(False))
    request.answered(again["c"].id, acks(False))
    assert only(request).record == restamped


def test_a_write_that_keeps_meeting_newer_versions_gives_up() -> None:
    request = write(Consistency.ALL)
    calls = request.start().calls
    for _ in range(MAX_STAMPS):
        next_calls = []
        for call in calls:
            next_calls += request.answered(call.id, acks(False, newer=1 << 40)).calls
        calls = next_calls
    assert not calls
    with pytest.raises(DeadlineExceeded) as uncertain:
        only(request)
    assert uncertain.value.reason == "WRITE_UNCERTAIN"


def test_a_node_that_may_no_longer_stamp_leaves_the_write_uncertain() -> None:
    request = WriteRequest(
        [rec(10)],
        Consistency.ALL,
        lambda _: planner(Consistency.ALL),
        node_id="a",
        restamper=Restamper(HybridLogicalClock("a"), lambda: 1, lambda: False),
    )
    for call in request.start().calls:
        request.answered(call.id, acks(False, newer=99))
    with pytest.raises(DeadlineExceeded) as uncertain:
        only(request)
    assert uncertain.value.reason == "WRITE_UNCERTAIN"


def test_a_refused_member_table_plans_the_write_again() -> None:
    plans = iter([planner(Consistency.QUORUM), planner(Consistency.QUORUM, frozenset({"a"}))])
    request = WriteRequest(
        [rec(10)], Consistency.QUORUM, lambda _: next(plans), node_id="z", restamper=restamper()
    )
    calls = by_node(request.start().calls)
    replanned = by_node(request.failed(calls["a"].id, StaleMemberTable("newer table")).calls)
    assert set(replanned) == {"b", "c"}
    request.answered(calls["b"].id, acks(False))  # the old plan's
    assert not request.finished
    request.answered(replanned["b"].id, acks(False))
    request.answered(replanned["c"].id, acks(False))
    assert only(request).record == rec(10)


def test_a_write_refused_everywhere_for_a_full_disk_says_so() -> None:
    request = write()
    for call in request.start().calls:
        request.failed(call.id, StorageFull("full"))
    with pytest.raises(StorageFull):
        only(request)


def test_a_write_past_its_deadline_may_or_may_not_become_visible() -> None:
    request = write()
    calls = request.start().calls
    request.answered(calls[0].id, acks(False))
    request.expired()
    with pytest.raises(DeadlineExceeded) as uncertain:
        only(request)
    assert uncertain.value.reason == "WRITE_UNCERTAIN"


def test_a_stand_in_replaces_a_replica_whose_call_failed_at_a_sloppy_level() -> None:
    level = Consistency.ONE
    request = WriteRequest(
        [rec(10)], level, lambda _: planner(level), node_id="a", restamper=restamper()
    )
    calls = by_node(request.start().calls)
    stand_in = request.failed(calls["b"].id, Unavailable("down")).calls
    assert [c.target for c in stand_in] == [Target("d", stands_in_for="b")]
    # The stand-in failed too: the next one stands in for the same replica.
    again = request.failed(stand_in[0].id, Unavailable("down")).calls
    assert [c.target for c in again] == [Target("e", stands_in_for="b")]
    assert request.failed(calls["c"].id, Unavailable("down")).calls == []
    request.answered(again[0].id, acks(False))
    assert request.finished


def test_stamping_passes_the_local_copy_and_counts_expiry_from_the_version() -> None:
    clock = HybridLogicalClock("a")
    local = rec(1000 << LOGICAL_BITS)
    record = stamp(clock, 5, KEY, b"v", tombstone=False, ttl_ms=100, local=local)
    assert record.version > local.version
    assert record.expires_at_ms == 1000 + 100


# -- writes of many records ---------------------------------------------------


def test_records_on_one_plan_go_in_one_call_per_replica_and_each_finishes_on_its_own() -> None:
    first, second = rec(10), replace(rec(11), key=b"k2")
    request = WriteRequest(
        [first, second],
        Consistency.QUORUM,
        lambda _: planner(Consistency.QUORUM),
        node_id="a",
        restamper=restamper(),
    )
    calls = by_node(request.start().calls)
    assert set(calls) == {"a", "b", "c"}
    assert all(call.records == (first, second) for call in calls.values())
    newer = (50 << LOGICAL_BITS) + 3
    request.answered(calls["a"].id, (ReplicaAck(False), ReplicaAck(True)))
    beaten = (ReplicaAck(True), ReplicaAck(False, newer=newer))
    again = by_node(request.answered(calls["b"].id, beaten).calls)
    # The first record is written; the second alone is stamped past the newer version.
    assert not request.finished
    (restamped,) = again["a"].records
    assert restamped.key == b"k2" and restamped.version.timestamp > newer
    request.answered(again["a"].id, acks(False))
    request.answered(again["b"].id, acks(False))
    assert request.result() == [Written(first, True), Written(restamped, False)]


def test_a_call_failing_after_its_round_met_the_level_hints_each_record_of_the_round() -> None:
    records = [rec(10), replace(rec(11), key=b"k2")]
    request = WriteRequest(
        records,
        Consistency.QUORUM,
        lambda _: planner(Consistency.QUORUM),
        node_id="a",
        restamper=restamper(),
    )
    calls = by_node(request.start().calls)
    request.answered(calls["a"].id, (ReplicaAck(False), ReplicaAck(False)))
    request.answered(calls["b"].id, (ReplicaAck(False), ReplicaAck(False)))
    assert request.finished
    ready = request.failed(calls["c"].id, Unavailable("down"))
    assert ready.hints == [Hint("c", records[0]), Hint("c", records[1])]


def test_a_new_table_that_gives_the_records_other_replicas_hands_them_back() -> None:
    moved = {"yes": False}

    def plan_for(key: bytes) -> Plan:
        if moved["yes"] and key == b"k2":
            return planner(Consistency.QUORUM, sets=ReplicaSets(("b", "c", "d")))
        return planner(Consistency.QUORUM)

    request = WriteRequest(
        [rec(10), replace(rec(11), key=b"k2")],
        Consistency.QUORUM,
        shared_planner(plan_for, plan_for(b"k")),
        node_id="a",
        restamper=restamper(),
    )
    calls = request.start().calls
    moved["yes"] = True
    assert request.failed(calls[0].id, StaleMemberTable("newer table")).calls == []
    assert request.finished
    assert all(isinstance(outcome, PlanDiverged) for outcome in request.result())


def test_a_record_stamped_again_is_planned_alone() -> None:
    """A finished record whose key a new table moved does not hold back the others."""
    moved = {"yes": False}

    def plan_for(key: bytes) -> Plan:
        if moved["yes"] and key == b"k2":
            return planner(Consistency.QUORUM, sets=ReplicaSets(("b", "c", "d")))
        return planner(Consistency.QUORUM)

    first, second = rec(10), replace(rec(11), key=b"k2")
    request = WriteRequest(
        [first, second],
        Consistency.QUORUM,
        shared_planner(plan_for, plan_for(b"k")),
        node_id="a",
        restamper=restamper(),
    )
    calls = by_node(request.start().calls)
    moved["yes"] = True
    newer = (50 << LOGICAL_BITS) + 3
    beaten = (ReplicaAck(False, newer=newer), ReplicaAck(False))
    request.answered(calls["a"].id, (ReplicaAck(False), ReplicaAck(False)))
    again = by_node(request.answered(calls["b"].id, beaten).calls)
    (restamped,) = again["a"].records
    assert restamped.key == b"k" and restamped.version.timestamp > newer
    request.answered(again["a"].id, acks(False))
    request.answered(again["b"].id, acks(False))
    assert request.result() == [Written(restamped, False), Written(second, False)]


def test_keys_are_grouped_by_what_their_plans_share() -> None:
    orders = {b"1": ("a", "b", "c", "d", "e"), b"2": ("c", "a", "b", "d", "e")}

    def plan_for(key: bytes) -> Plan:
        if key == b"x":
            raise Unavailable("too few replicas")
        order = orders.get(key, ("b", "c", "d", "e", "a"))
        return plan(Consistency.QUORUM, ReplicaSets(order[:3]), order, lambda _: True)

    groups, refused = group_by_plan([b"1", b"x", b"2", b"3"], plan_for)
    assert [members for _, members in groups] == [[0, 2], [3]]
    assert list(refused) == [1]


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
    assert all(c.records == (rec(7, "b"),) for c in back)
    assert not request.finished
    request.answered(back[0].id, acks(False))
    # A replica holding a newer version does not make the write-back restamp.
    request.answered(back[1].id, acks(False, newer=1 << 40))
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
    count=st.integers(1, 3),
    outcomes=st.lists(
        st.tuples(st.sampled_from(["ok", "newer", "fail"]), st.integers(0, 2)),
        min_size=10,
        max_size=10,
    ),
)
def test_each_record_is_written_only_with_the_level_met_by_replicas_holding_its_final_version(
    level: Consistency, count: int, outcomes: list[tuple[str, int]]
) -> None:
    records = [replace(rec(10 + i), key=b"k%d" % i) for i in range(count)]
    request = WriteRequest(
        records, level, lambda _: planner(level), node_id="a", restamper=restamper()
    )
    pending = list(request.start().calls)
    held: dict[tuple[bytes, Version], set[str]] = {}
    answers = iter(outcomes)
    while pending and not request.finished:
        call = pending.pop(0)
        outcome, beaten = next(answers, ("ok", 0))
        if outcome == "fail":
            pending += request.failed(call.id, Unavailable("down")).calls
            continue
        for record in call.records:
            held.setdefault((record.key, record.version), set()).add(call.target.node_id)
        answer = tuple(
            ReplicaAck(False, newer=1 << 30 if outcome == "newer" and i == beaten else 0)
            for i in range(len(call.records))
        )
        pending += request.answered(call.id, answer).calls
    if not request.finished:
        request.expired()
    needed = 3 if level is Consistency.ALL else 2
    for written in request.result():
        if isinstance(written, Written):
            assert len(held[written.record.key, written.record.version]) >= needed
        else:
            assert isinstance(written, (Unavailable, DeadlineExceeded))
