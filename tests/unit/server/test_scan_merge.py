"""Scanning a span of several replicas a page at a time: replica pages
(``scan_pages``) merged by ``ringkv.core.scan`` give each key's newest
visible version exactly once, whatever the page sizes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ringkv.core.errors import InvalidArgument
from ringkv.core.hlc import Version
from ringkv.core.records import Mutation, Record
from ringkv.core.ring import TOKEN_SPACE
from ringkv.core.scan import (
    ReplicaPage,
    decode_cursor,
    encode_cursor,
    merge_pages,
    take_visible,
)
from ringkv.core.tokens import token_of
from ringkv.server.data.scan_pages import scan_page
from ringkv.storage.memory import MemoryEngine

NOW_MS = 1_000_000

# One replica's copy of a key: (key number, timestamp, tombstone, expired).
copies = st.tuples(st.integers(0, 40), st.integers(1, 5), st.booleans(), st.booleans())


def record(number: int, timestamp: int, tombstone: bool, expired: bool) -> Record:
    return Record(
        key=f"p/{number}".encode() if number % 5 else f"q/{number}".encode(),
        value=b"" if tombstone else f"{number}@{timestamp}".encode(),
        version=Version(timestamp, "n1"),
        tombstone=tombstone,
        expires_at_ms=NOW_MS - 1 if expired else 0,
    )


def full_scan(
    engines: list[MemoryEngine], prefix: bytes, replica_limit: int, page_limit: int
) -> list[Record]:
    """The scan a coordinator runs over one span covering every token."""
    found: list[Record] = []
    position = 0
    while position < TOKEN_SPACE:
        pages = []
        for engine in engines:
            records, last = scan_page(engine, position, TOKEN_SPACE, replica_limit, prefix)
            pages.append(ReplicaPage(records, TOKEN_SPACE - 1 if last is None else last))
        merged, covered_to = merge_pages(pages)
        taken, covered_to = take_visible(merged, covered_to, NOW_MS, page_limit, 1 << 20)
        found.extend(taken)
        position = covered_to + 1
    return found


@settings(max_examples=200, deadline=None)
@given(
    replicas=st.lists(st.lists(copies, max_size=30), min_size=1, max_size=3),
    replica_limit=st.integers(1, 7),
    page_limit=st.integers(1, 7),
)
def test_each_keys_newest_visible_version_once(
    replicas: list[list[tuple[int, int, bool, bool]]], replica_limit: int, page_limit: int
) -> None:
    engines = []
    newest: dict[bytes, Record] = {}
    for held in replicas:
        engine = MemoryEngine()
        for copy in held:
            stored = record(*copy)
            engine.apply([Mutation(stored)])
        for stored in engine.scan(0, TOKEN_SPACE):
            if stored.key not in newest or stored.version > newest[stored.key].version:
                newest[stored.key] = stored
        engines.append(engine)

    found = full_scan(engines, b"p/", replica_limit, page_limit)

    expected = {key: r for key, r in newest.items() if key.startswith(b"p/") and r.is_live(NOW_MS)}
    assert [r.key for r in found] == sorted(expected, key=lambda k: (token_of(k), k))
    assert {r.key: r for r in found} == expected


def test_merging_stops_at_the_least_covered_token() -> None:
    low, high = sorted(
        (record(1, 1, False, False), record(2, 1, False, False)), key=lambda r: token_of(r.key)
    )
    newer_low = Record(low.key, b"", Version(2, "n2"), tombstone=True)
    merged, covered_to = merge_pages(
        [
            ReplicaPage([low, high], TOKEN_SPACE - 1),
            ReplicaPage([newer_low], token_of(low.key)),
        ]
    )
    assert covered_to == token_of(low.key)
    assert merged == [newer_low]


def test_cursors_round_trip_and_garbage_is_refused() -> None:
    assert decode_cursor(b"") is None
    assert decode_cursor(encode_cursor(12345)) == 12345
    with pytest.raises(InvalidArgument):
        decode_cursor(b"\x07" * 9)
