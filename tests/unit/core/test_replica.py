"""The replica's rules (ringkv.core.replica): fencing, the caller's clock,
records held to the client's limits, and the answer for each record."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ringkv.core import replica
from ringkv.core.errors import InvalidArgument, StaleMemberTable
from ringkv.core.hlc import LOGICAL_BITS, HybridLogicalClock, Version
from ringkv.core.records import Mutation, Outcome, Record, ReplicaAck, resolve
from ringkv.core.replica import ReplicaRules

PROPERTY = settings(max_examples=300, deadline=None)
NOW_MS = 1_700_000_000_000
FENCE = (5, 2)


def record(key: bytes = b"k", at_ms: int = NOW_MS, node: str = "n1") -> Record:
    return Record(key, b"v", Version(at_ms << LOGICAL_BITS, node))


def rules(fence: tuple[int, int] | None = FENCE) -> tuple[ReplicaRules, HybridLogicalClock]:
    clock = HybridLogicalClock("n2")
    return ReplicaRules(clock, None if fence is None else lambda: fence), clock


fences = st.tuples(st.integers(0, 6), st.integers(0, 6))


@PROPERTY
@given(mine=fences, theirs=fences)
def test_a_call_is_refused_exactly_when_the_replica_is_on_a_newer_table(
    mine: tuple[int, int], theirs: tuple[int, int]
) -> None:
    refused = replica.refusal(mine, theirs)
    assert (refused is not None) == (mine > theirs)
    if refused is not None:
        assert refused.metadata["epoch"] == str(mine[0])


def test_a_write_is_persisted_as_one_mutation_per_record_or_hint() -> None:
    rules_, _ = rules()
    records = [record(b"a"), record(b"b")]
    assert rules_.write(records, fence=FENCE, caller_clock=0, hint_for=None, now_ms=NOW_MS) == [
        Mutation(r) for r in records
    ]
    assert rules_.write(records, fence=(6, 0), caller_clock=0, hint_for="n3", now_ms=NOW_MS) == [
        Mutation(r, hint_for="n3") for r in records
    ]


def test_a_write_planned_on_an_older_table_is_refused_but_its_clock_is_observed() -> None:
    rules_, clock = rules()
    caller_clock = (NOW_MS + 5) << LOGICAL_BITS
    refused = rules_.write(
        [record()], fence=(5, 1), caller_clock=caller_clock, hint_for=None, now_ms=NOW_MS
    )
    assert isinstance(refused, StaleMemberTable)
    assert clock.last >= caller_clock


def test_a_replica_fenced_by_nothing_admits_every_table() -> None:
    rules_, _ = rules(fence=None)
    assert rules_.admit((0, 0), 0) is None


@pytest.mark.parametrize(
    ("records", "hint_for", "reason"),
    [
        ([record(b"ok"), record(b"\xff")], None, "INVALID_UTF8"),
        ([record(at_ms=0)], None, "INVALID_VERSION"),
        ([record(at_ms=NOW_MS + 25 * 3600 * 1000)], None, "VERSION_IN_FUTURE"),
        ([record()], "bad id,=", None),
    ],
)
def test_a_write_no_member_could_have_sent_is_refused_whole_before_the_clock_moves(
    records: list[Record], hint_for: str | None, reason: str | None
) -> None:
    rules_, clock = rules()
    with pytest.raises(InvalidArgument) as raised:
        rules_.write(
            records,
            fence=FENCE,
            caller_clock=(NOW_MS + 9) << LOGICAL_BITS,
            hint_for=hint_for,
            now_ms=NOW_MS,
        )
    if reason is not None:
        assert raised.value.reason == reason
    assert clock.last == 0


@PROPERTY
@given(
    held_ms=st.none() | st.integers(NOW_MS - 5, NOW_MS + 5),
    sent_ms=st.integers(NOW_MS - 5, NOW_MS + 5),
)
def test_each_record_is_answered_held_or_beaten_by_the_newer_timestamp(
    held_ms: int | None, sent_ms: int
) -> None:
    held = None if held_ms is None else record(at_ms=held_ms, node="n0")
    sent = record(at_ms=sent_ms, node="n1")
    (answer,) = replica.answers([sent], [resolve(Mutation(sent), held)], NOW_MS)
    assert isinstance(answer, ReplicaAck)
    beaten = held is not None and held.version > sent.version
    assert answer.newer == (held.version.timestamp if beaten and held is not None else 0)
    assert answer.replaced_live == (held is not None)


def test_a_record_that_could_not_be_stored_fails_alone() -> None:
    failure = OSError("disk")
    first, second = record(b"a"), record(b"b")
    answers = replica.answers([first, second], [failure, resolve(Mutation(second), None)], NOW_MS)
    assert answers[0] is failure
    assert answers[1] == ReplicaAck(replaced_live=False, newer=0)
    assert resolve(Mutation(second), None).outcome is Outcome.APPLIED
