"""Property: every engine ends in the state of a simple last-writer-wins model."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ringkv.core.hlc import Version
from ringkv.core.records import EXPECT_ABSENT, ApplyResult, Mutation, Outcome, Record

from .helpers import ENGINE_KINDS, FULL_RANGE, fresh_engine, in_scan_order

KEYS = (b"a", b"b", b"c", b"\x00", "\u00e9".encode())
NODES = ("n1", "n2")
TIMESTAMPS = st.integers(min_value=0, max_value=6)


@st.composite
def records(draw: st.DrawFn) -> Record:
    tombstone = draw(st.booleans())
    return Record(
        key=draw(st.sampled_from(KEYS)),
        value=b"" if tombstone else draw(st.binary(max_size=6)),
        version=Version(draw(TIMESTAMPS), draw(st.sampled_from(NODES))),
        tombstone=tombstone,
        expires_at_ms=0 if tombstone else draw(st.sampled_from([0, 0, 5, 10])),
    )


mutations = st.builds(
    Mutation,
    record=records(),
    expected=st.one_of(st.none(), st.just(EXPECT_ABSENT), TIMESTAMPS),
    now_ms=st.sampled_from([0, 4, 5, 6, 10, 11]),
)
batches = st.lists(st.lists(mutations, max_size=5), max_size=6)


class Model:
    """A dict of each key's winning record, written independently of ringkv.core.records."""

    def __init__(self) -> None:
        self.records: dict[bytes, Record] = {}

    def apply(self, mutation: Mutation) -> ApplyResult:
        record = mutation.record
        current = self.records.get(record.key)
        live = (
            current is not None
            and not current.tombstone
            and (current.expires_at_ms == 0 or mutation.now_ms < current.expires_at_ms)
        )
        if mutation.expected is None:
            holds = True
        elif mutation.expected == EXPECT_ABSENT:
            holds = not live
        else:
            holds = live and current is not None and current.version.timestamp == mutation.expected
        if not holds:
            return ApplyResult(Outcome.PRECONDITION_FAILED, current)
        if current is not None and (current.version.timestamp, current.version.node_id) >= (
            record.version.timestamp,
            record.version.node_id,
        ):
            return ApplyResult(Outcome.STALE, current)
        self.records[record.key] = record
        return ApplyResult(Outcome.APPLIED, current)


@pytest.mark.parametrize("kind", ENGINE_KINDS)
@settings(max_examples=200, deadline=None, database=None)
@given(batches=batches)
def test_engine_matches_the_model(kind: str, batches: list[list[Mutation]]) -> None:
    model = Model()
    with fresh_engine(kind) as engine:
        for batch in batches:
            expected_results = [model.apply(mutation) for mutation in batch]
            assert engine.apply(batch) == expected_results

        for key in KEYS:
            assert engine.get(key) == model.records.get(key)
        assert list(engine.scan(*FULL_RANGE)) == in_scan_order(model.records.values())
        assert engine.stats().records == len(model.records)
