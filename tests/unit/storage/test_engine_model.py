"""Property: every engine's records and hints end as a simple last-writer-wins model says."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ringkv.core.hlc import Version
from ringkv.core.records import ApplyResult, Mutation, Outcome, Record

from .helpers import ENGINE_KINDS, FULL_RANGE, by_version, fresh_engine, in_scan_order

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
    # Mostly records; hints for node ids that are prefixes of each other, too.
    hint_for=st.sampled_from((None, None, None, "n1", "n3", "n33")),
)
batches = st.lists(st.lists(mutations, max_size=5), max_size=6)


class Model:
    """Each key's winning record, and each (key, node)'s winning hint, in dicts.

    Written independently of ringkv.core.records.
    """

    def __init__(self) -> None:
        self.records: dict[bytes, Record] = {}
        self.hints: dict[tuple[bytes, str], Record] = {}

    def apply(self, mutation: Mutation) -> ApplyResult:
        record = mutation.record
        if mutation.hint_for is None:
            return self._store(self.records, record.key, record)
        return self._store(self.hints, (record.key, mutation.hint_for), record)

    @staticmethod
    def _store(store: dict[Any, Record], slot: object, record: Record) -> ApplyResult:
        current = store.get(slot)
        if current is not None and (current.version.timestamp, current.version.node_id) >= (
            record.version.timestamp,
            record.version.node_id,
        ):
            return ApplyResult(Outcome.STALE, current)
        store[slot] = record
        return ApplyResult(Outcome.APPLIED, current)

    def hints_of(self, key: bytes) -> list[Record]:
        return [record for (hinted, _), record in self.hints.items() if hinted == key]


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
            assert by_version(engine.get_hints(key)) == by_version(model.hints_of(key))
        # The record first, then the hints by node id: the first of equal versions wins.
        held = [
            [model.records.get(key)]
            + [r for (hinted, _), r in sorted(model.hints.items()) if hinted == key]
            for key in KEYS
        ]
        newest = [
            max((r for r in versions if r is not None), key=lambda r: r.version, default=None)
            for versions in held
        ]
        assert engine.newest(list(KEYS)) == newest
        # A key asked for twice is answered twice.
        assert engine.newest(list(KEYS) * 2) == newest * 2
        assert list(engine.scan(*FULL_RANGE)) == in_scan_order(model.records.values())
        assert engine.stats().records == len(model.records)
