"""The Engine contract, run against every engine: MemoryEngine and LmdbEngine."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from ringkv.core.records import ApplyResult, Mutation, Outcome, Record
from ringkv.core.tokens import MAX_TOKEN, token_of
from ringkv.core.validation import MAX_KEY_BYTES
from ringkv.storage.codec import INLINE_KEY_BYTES
from ringkv.storage.engine import Engine

from .helpers import (
    ENGINE_KINDS,
    FULL_RANGE,
    by_version,
    hint,
    in_scan_order,
    make_engine,
    put,
    rec,
    scan_all,
)

APPLIED = Outcome.APPLIED
STALE = Outcome.STALE


def apply_one(engine: Engine, record: Record) -> ApplyResult:
    return apply_mutation(engine, put(record))


def apply_mutation(engine: Engine, mutation: Mutation) -> ApplyResult:
    results = engine.apply([mutation])
    assert len(results) == 1
    return results[0]


# --- get and put -------------------------------------------------------------


def test_get_of_missing_key_is_none(engine: Engine) -> None:
    assert engine.get(b"missing") is None
    apply_one(engine, rec(b"present", 1))
    assert engine.get(b"missing") is None
    assert engine.get(b"presen") is None
    assert engine.get(b"present\x00") is None


@pytest.mark.parametrize(
    "record",
    [
        pytest.param(rec(b"plain", 1, b"hello"), id="plain"),
        pytest.param(rec(b"empty-value", 7, b""), id="empty-value"),
        pytest.param(rec(b"\x00\xff\x00key", 2, b"\x00\x01\xfe\xff" * 3), id="binary"),
        pytest.param(rec(b"big", 3, bytes(range(256)) * 400), id="100KB-value"),
        pytest.param(rec(b"gone", 4, tombstone=True), id="tombstone"),
        pytest.param(rec(b"ttl", 5, b"short-lived", expires_at_ms=1_700_000_000_123), id="expiry"),
        pytest.param(rec(b"max", (1 << 63) - 1, b"v", expires_at_ms=(1 << 63) - 1), id="max-ints"),
        pytest.param(rec(b"zero", 0, b"v"), id="zero-timestamp"),
        pytest.param(
            rec(b"node", 9, b"v", node="n\u00f6de-\u6771\u4eac-\U0001f600"), id="unicode-node"
        ),
        pytest.param(rec(b"no-node", 9, b"v", node=""), id="empty-node"),
        pytest.param(rec("k\u00e9y-\u00fc".encode(), 9, b"v"), id="utf8-key"),
        pytest.param(rec(b"", 9, b"v"), id="empty-key"),
    ],
)
def test_put_then_get_round_trips_the_record(engine: Engine, record: Record) -> None:
    assert apply_one(engine, record) == ApplyResult(APPLIED, None)

    assert engine.get(record.key) == record
    assert scan_all(engine) == [record]
    assert engine.stats().records == 1


def test_keys_up_to_the_validated_limit_are_stored(engine: Engine) -> None:
    """LMDB keys hold at most 511 bytes; longer keys are stored by digest."""
    sizes = [size for size in (1, 100, 503, 504, 1024, 2048) if size < MAX_KEY_BYTES]
    for size in [*sizes, MAX_KEY_BYTES]:
        key = (b"%d:" % size).ljust(size, b"k")
        record = rec(key, 1, b"v")
        assert apply_one(engine, record).outcome is APPLIED
        assert engine.get(key) == record


def test_expired_values_are_still_returned_by_get(engine: Engine) -> None:
    record = rec(b"k", 1, b"old", expires_at_ms=10)
    apply_one(engine, record)  # stored even though long expired

    assert engine.get(b"k") == record


# --- versions ----------------------------------------------------------------


def test_newer_version_wins_and_reports_the_previous(engine: Engine) -> None:
    first = rec(b"k", 10, b"one")
    second = rec(b"k", 11, b"two")
    third = rec(b"k", 1_000, b"three", expires_at_ms=5)

    assert apply_one(engine, first) == ApplyResult(APPLIED, None)
    assert apply_one(engine, second) == ApplyResult(APPLIED, first)
    assert apply_one(engine, third) == ApplyResult(APPLIED, second)

    assert engine.get(b"k") == third
    assert engine.stats().records == 1


def test_node_id_breaks_timestamp_ties(engine: Engine) -> None:
    from_a = rec(b"k", 10, b"a", node="node-a")
    from_b = rec(b"k", 10, b"b", node="node-b")

    assert apply_one(engine, from_a).outcome is APPLIED
    assert apply_one(engine, from_b) == ApplyResult(APPLIED, from_a)
    assert apply_one(engine, from_a) == ApplyResult(STALE, from_b)
    assert engine.get(b"k") == from_b


@pytest.mark.parametrize(
    "loser",
    [
        pytest.param(rec(b"k", 9, b"older"), id="older-timestamp"),
        pytest.param(rec(b"k", 10, b"same-version-other-value"), id="equal-version"),
        pytest.param(rec(b"k", 10, b"x", node="node-0"), id="equal-timestamp-smaller-node"),
        pytest.param(rec(b"k", 0, tombstone=True), id="older-tombstone"),
        pytest.param(rec(b"k", 10, tombstone=True), id="equal-version-tombstone"),
    ],
)
def test_older_or_equal_version_is_stale_and_changes_nothing(engine: Engine, loser: Record) -> None:
    winner = rec(b"k", 10, b"winner", expires_at_ms=123)
    apply_one(engine, winner)
    before = engine.stats().records

    assert apply_one(engine, loser) == ApplyResult(STALE, winner)

    assert engine.get(b"k") == winner
    assert scan_all(engine) == [winner]
    assert engine.stats().records == before


def test_tombstones_are_stored_and_returned(engine: Engine) -> None:
    live = rec(b"k", 1, b"v")
    tombstone = rec(b"k", 2, tombstone=True)
    apply_one(engine, live)

    assert apply_one(engine, tombstone) == ApplyResult(APPLIED, live)
    stored = engine.get(b"k")
    assert stored == tombstone
    assert stored is not None
    assert stored.tombstone
    assert stored.value == b""
    assert scan_all(engine) == [tombstone]
    assert engine.stats().records == 1

    # The tombstone beats older writes, and loses to newer ones.
    assert apply_one(engine, rec(b"k", 1, b"late")) == ApplyResult(STALE, tombstone)
    revived = rec(b"k", 3, b"again")
    assert apply_one(engine, revived) == ApplyResult(APPLIED, tombstone)
    assert engine.get(b"k") == revived


def test_tombstone_of_a_missing_key_is_stored(engine: Engine) -> None:
    tombstone = rec(b"never-written", 5, tombstone=True)

    assert apply_one(engine, tombstone) == ApplyResult(APPLIED, None)
    assert engine.get(b"never-written") == tombstone
    assert engine.stats().records == 1


# --- batches -----------------------------------------------------------------


def test_empty_batch_does_nothing(engine: Engine) -> None:
    assert engine.apply([]) == []
    assert engine.stats().records == 0


def test_mutations_of_one_key_in_a_batch_apply_in_order(engine: Engine) -> None:
    v1 = rec(b"k", 1, b"one")
    v2 = rec(b"k", 2, b"two")
    v3 = rec(b"k", 3, tombstone=True)
    v4 = rec(b"k", 4, b"four")

    results = engine.apply(
        [
            put(v1),  # applied: nothing stored yet
            put(v2),  # sees v1, written earlier in this batch
            put(v1),  # stale against v2
            put(v3),  # deletes v2
            put(rec(b"k", 2, b"late")),  # stale against the tombstone
            put(v4),  # revives the key
            put(rec(b"k", 4, b"tie")),  # equal version: stale
        ]
    )

    assert results == [
        ApplyResult(APPLIED, None),
        ApplyResult(APPLIED, v1),
        ApplyResult(STALE, v2),
        ApplyResult(APPLIED, v2),
        ApplyResult(STALE, v3),
        ApplyResult(APPLIED, v3),
        ApplyResult(STALE, v4),
    ]
    assert engine.get(b"k") == v4
    assert engine.stats().records == 1


def test_batch_results_follow_the_mutations_across_keys(engine: Engine) -> None:
    a1 = rec(b"a", 1)
    b1 = rec(b"b", 1)
    apply_one(engine, a1)

    c1 = rec(b"c", 1)
    b2 = rec(b"b", 2)
    results = engine.apply(
        [
            put(rec(b"a", 0)),  # stale, and stale only itself
            put(b1),
            put(c1),
            put(rec(b"a", 1, b"tie")),  # equal version: stale
            put(b2),
        ]
    )

    assert results == [
        ApplyResult(STALE, a1),
        ApplyResult(APPLIED, None),
        ApplyResult(APPLIED, None),
        ApplyResult(STALE, a1),
        ApplyResult(APPLIED, b1),
    ]
    assert engine.get(b"a") == a1
    assert engine.get(b"b") == b2
    assert engine.get(b"c") == c1
    assert scan_all(engine) == in_scan_order([a1, b2, c1])


# --- hints -------------------------------------------------------------------

OTHER = "node-b"
THIRD = "node-c"


def test_a_hint_is_held_apart_from_the_record(engine: Engine) -> None:
    held = rec(b"k", 5, b"for-b")

    assert apply_mutation(engine, hint(held, OTHER)) == ApplyResult(APPLIED, None)

    assert engine.get(b"k") is None
    assert engine.get_hints(b"k") == [held]
    assert scan_all(engine) == []
    assert engine.stats().records == 0


def test_get_hints_of_a_key_without_hints_is_empty(engine: Engine) -> None:
    assert engine.get_hints(b"missing") == []
    apply_one(engine, rec(b"record-only", 1))
    apply_mutation(engine, hint(rec(b"hinted", 1), OTHER))

    assert engine.get_hints(b"record-only") == []
    assert engine.get_hints(b"missing") == []
    assert engine.get_hints(b"hinte") == []
    assert engine.get_hints(b"hinted\x00") == []


@pytest.mark.parametrize(
    "held",
    [
        pytest.param(rec(b"k", 1, b"hello"), id="plain"),
        pytest.param(rec(b"k", 7, b""), id="empty-value"),
        pytest.param(rec(b"k", 3, bytes(range(256)) * 400), id="100KB-value"),
        pytest.param(rec(b"k", 4, tombstone=True), id="tombstone"),
        pytest.param(rec(b"k", 5, b"v", expires_at_ms=10), id="expired"),
        pytest.param(rec(b"k", 9, b"v", node="n\u00f6de-\U0001f600"), id="unicode-writer"),
        pytest.param(rec(b"", 9, b"v"), id="empty-key"),
        pytest.param(rec(b"\x00\xff", 9, b"v"), id="binary-key"),
    ],
)
def test_hints_round_trip(engine: Engine, held: Record) -> None:
    assert apply_mutation(engine, hint(held, OTHER)) == ApplyResult(APPLIED, None)
    assert engine.get_hints(held.key) == [held]
    assert engine.get(held.key) is None


def test_hints_for_different_nodes_of_one_key_coexist(engine: Engine) -> None:
    for_b = rec(b"k", 5, b"b")
    for_c = rec(b"k", 3, b"c")  # older than the hint for b, and applied all the same
    same = rec(b"k", 5, b"b")

    assert apply_mutation(engine, hint(for_b, OTHER)) == ApplyResult(APPLIED, None)
    assert apply_mutation(engine, hint(for_c, THIRD)) == ApplyResult(APPLIED, None)
    # The same record for a third node is a third hint.
    assert apply_mutation(engine, hint(same, "node-d")) == ApplyResult(APPLIED, None)

    assert by_version(engine.get_hints(b"k")) == by_version([for_b, for_c, same])


@pytest.mark.parametrize(
    ("first", "second"),
    [
        pytest.param("node-b", "node-bb", id="prefix-ids"),
        pytest.param("b", "c", id="one-char"),
        pytest.param("n\u00f6de", "node", id="unicode-id"),
    ],
)
def test_hints_for_node_ids_that_look_alike_stay_apart(
    engine: Engine, first: str, second: str
) -> None:
    one = rec(b"k", 1, first.encode())
    two = rec(b"k", 2, second.encode())
    engine.apply([hint(one, first), hint(two, second)])

    assert by_version(engine.get_hints(b"k")) == [one, two]
    # Each is compared with its own node's hint only.
    assert apply_mutation(engine, hint(rec(b"k", 0), first)) == ApplyResult(STALE, one)
    assert apply_mutation(engine, hint(rec(b"k", 1), second)) == ApplyResult(STALE, two)


def test_a_newer_hint_replaces_the_older_one_for_that_node(engine: Engine) -> None:
    v1 = rec(b"k", 1, b"one")
    v2 = rec(b"k", 2, b"two")
    v3 = rec(b"k", 3, tombstone=True)

    assert apply_mutation(engine, hint(v1, OTHER)) == ApplyResult(APPLIED, None)
    assert apply_mutation(engine, hint(v2, OTHER)) == ApplyResult(APPLIED, v1)
    assert engine.get_hints(b"k") == [v2]
    assert apply_mutation(engine, hint(v3, OTHER)) == ApplyResult(APPLIED, v2)
    assert engine.get_hints(b"k") == [v3]


@pytest.mark.parametrize(
    "loser",
    [
        pytest.param(rec(b"k", 9, b"older"), id="older-timestamp"),
        pytest.param(rec(b"k", 10, b"same-version-other-value"), id="equal-version"),
        pytest.param(rec(b"k", 10, b"x", node="node-0"), id="equal-timestamp-smaller-node"),
        pytest.param(rec(b"k", 0, tombstone=True), id="older-tombstone"),
    ],
)
def test_an_older_or_equal_hint_is_stale_and_changes_nothing(engine: Engine, loser: Record) -> None:
    winner = rec(b"k", 10, b"winner", expires_at_ms=123)
    apply_mutation(engine, hint(winner, OTHER))

    assert apply_mutation(engine, hint(loser, OTHER)) == ApplyResult(STALE, winner)
    assert engine.get_hints(b"k") == [winner]


def test_node_id_of_the_version_breaks_ties_between_hints(engine: Engine) -> None:
    from_a = rec(b"k", 10, b"a", node="node-a")
    from_z = rec(b"k", 10, b"z", node="node-z")

    assert apply_mutation(engine, hint(from_a, OTHER)) == ApplyResult(APPLIED, None)
    assert apply_mutation(engine, hint(from_z, OTHER)) == ApplyResult(APPLIED, from_a)
    assert apply_mutation(engine, hint(from_a, OTHER)) == ApplyResult(STALE, from_z)
    assert engine.get_hints(b"k") == [from_z]


def test_records_and_hints_of_one_key_are_independent(engine: Engine) -> None:
    r5 = rec(b"k", 5, b"record-5")
    h1 = rec(b"k", 1, b"hint-1")
    h9 = rec(b"k", 9, b"hint-9")
    r7 = rec(b"k", 7, b"record-7")

    assert apply_one(engine, r5) == ApplyResult(APPLIED, None)
    # Older than the record, but compared with the (missing) hint only.
    assert apply_mutation(engine, hint(h1, OTHER)) == ApplyResult(APPLIED, None)
    assert apply_mutation(engine, hint(h9, OTHER)) == ApplyResult(APPLIED, h1)
    # Older than the hint, but compared with the record only.
    assert apply_one(engine, r7) == ApplyResult(APPLIED, r5)
    assert apply_one(engine, rec(b"k", 6)) == ApplyResult(STALE, r7)

    assert engine.get(b"k") == r7
    assert engine.get_hints(b"k") == [h9]
    assert scan_all(engine) == [r7]
    assert engine.stats().records == 1


def test_a_batch_of_records_and_hints_applies_in_order(engine: Engine) -> None:
    r1 = rec(b"k", 1, b"r1")
    h2 = rec(b"k", 2, b"h2")
    h3 = rec(b"k", 3, b"h3")
    other = rec(b"other", 4, b"o")

    results = engine.apply(
        [
            hint(h2, OTHER),
            put(r1),
            hint(h3, OTHER),  # sees h2, written earlier in this batch
            hint(h2, OTHER),  # stale against h3
            hint(h2, THIRD),
            put(rec(b"k", 1, b"tie")),  # stale against r1, not against a hint
            hint(other, OTHER),
        ]
    )

    assert results == [
        ApplyResult(APPLIED, None),
        ApplyResult(APPLIED, None),
        ApplyResult(APPLIED, h2),
        ApplyResult(STALE, h3),
        ApplyResult(APPLIED, None),
        ApplyResult(STALE, r1),
        ApplyResult(APPLIED, None),
    ]
    assert engine.get(b"k") == r1
    assert by_version(engine.get_hints(b"k")) == [h2, h3]
    assert engine.get_hints(b"other") == [other]
    assert engine.get(b"other") is None


def long_key(size: int, tail: bytes = b"") -> bytes:
    return (b"%d:" % size).ljust(size - len(tail), b"k") + tail


LONG_KEYS = [
    long_key(INLINE_KEY_BYTES),  # the longest key stored inline
    long_key(INLINE_KEY_BYTES + 1),  # the shortest stored by digest
    long_key(1000, b"1"),
    long_key(1000, b"2"),  # differs from the one before in its last byte only
    long_key(1000, b"2") + b"3",  # has the one before as its prefix
    long_key(MAX_KEY_BYTES),
]


def test_hints_for_long_keys_stay_apart(engine: Engine) -> None:
    """Keys over INLINE_KEY_BYTES are stored by digest; their hints keep the whole key."""
    assert len(set(LONG_KEYS)) == len(LONG_KEYS)
    expected: dict[bytes, list[Record]] = {}
    for index, key in enumerate(LONG_KEYS):
        held = [rec(key, index, b"%d-b" % index), rec(key, 100 + index, b"%d-c" % index)]
        results = engine.apply([hint(held[0], OTHER), hint(held[1], THIRD)])
        assert results == [ApplyResult(APPLIED, None)] * 2
        expected[key] = held

    for key, held in expected.items():
        hints = engine.get_hints(key)
        assert by_version(hints) == held
        assert all(h.key == key for h in hints)
        assert engine.get(key) is None
    assert engine.get_hints(long_key(1000)) == []

    # Versions are compared per (key, node) for long keys too.
    key = LONG_KEYS[3]
    assert apply_mutation(engine, hint(rec(key, 0), OTHER)) == ApplyResult(STALE, expected[key][0])


def test_a_long_key_with_a_long_node_id_fits(engine: Engine) -> None:
    """The longest inline key with the longest valid (64 character) node id."""
    key = long_key(INLINE_KEY_BYTES)
    node = "n" * 64
    held = rec(key, 1, b"v")

    assert apply_mutation(engine, hint(held, node)) == ApplyResult(APPLIED, None)
    assert engine.get_hints(key) == [held]


PREFIX_KEYS = [b"", b"a", b"ab", b"abc", b"ab\x00", b"ab\x00\x00", b"abd", b"b"]


def _hint_every_prefix_key(engine: Engine) -> dict[bytes, list[Record]]:
    expected: dict[bytes, list[Record]] = {}
    for index, key in enumerate(PREFIX_KEYS):
        held = [rec(key, index + 1, b"b:" + key), rec(key, index + 50, b"bb:" + key)]
        # Node ids that are prefixes of each other, too.
        engine.apply([hint(held[0], "node-b"), hint(held[1], "node-bb")])
        expected[key] = held
    return expected


def test_hints_for_keys_that_are_prefixes_of_each_other_stay_apart(engine: Engine) -> None:
    expected = _hint_every_prefix_key(engine)

    for key, held in expected.items():
        assert by_version(engine.get_hints(key)) == held, key
    assert engine.get_hints(b"abcd") == []


def test_hints_stay_apart_even_when_tokens_collide(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every key under one token: only the key's length prefix keeps "ab" from "abc"."""
    monkeypatch.setattr("ringkv.storage.codec.token_of", lambda key: 7)
    expected = _hint_every_prefix_key(engine)
    long_keys = LONG_KEYS[1:4]
    for index, key in enumerate(long_keys):
        long_hint = rec(key, index + 1, b"long")
        engine.apply([hint(long_hint, "node-b")])
        expected[key] = [long_hint]

    for key, held in expected.items():
        assert by_version(engine.get_hints(key)) == held, key
    assert engine.get_hints(b"abcd") == []


# --- stats -------------------------------------------------------------------


def test_stats_count_records(engine: Engine) -> None:
    empty = engine.stats()
    assert empty.records == 0

    engine.apply([put(rec(b"k%d" % i, 1, b"x" * 100)) for i in range(50)])
    assert engine.stats().records == 50
    assert engine.stats().bytes_used > 0

    # Overwrites, stale writes and hints add no record.
    engine.apply([put(rec(b"k%d" % i, 2)) for i in range(10)])
    engine.apply([put(rec(b"k%d" % i, 0)) for i in range(10)])
    engine.apply([hint(rec(b"new%d" % i, 1), "node-b") for i in range(10)])
    engine.apply([hint(rec(b"k%d" % i, 5), "node-b") for i in range(10)])
    assert engine.stats().records == 50

    # Tombstones and expired values are records too.
    engine.apply([put(rec(b"k%d" % i, 3, tombstone=True)) for i in range(5)])
    engine.apply([put(rec(b"t%d" % i, 1, tombstone=True)) for i in range(5)])
    engine.apply([put(rec(b"e%d" % i, 1, expires_at_ms=1)) for i in range(5)])
    assert engine.stats().records == 60


# --- scan --------------------------------------------------------------------

SCAN_KEYS = 3000
SCAN_CHUNK = 512  # LmdbEngine reads scans in chunks of this many records
SCAN_RECORDS = [
    rec(b"key-%05d" % i, 1 + i % 7, b"value-%d" % i, tombstone=i % 11 == 0, expires_at_ms=i % 3)
    for i in range(SCAN_KEYS)
]
SORTED = in_scan_order(SCAN_RECORDS)
TOKENS = [token_of(r.key) for r in SORTED]


@pytest.fixture(scope="module", params=ENGINE_KINDS)
def populated(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Engine]:
    """An engine holding SCAN_RECORDS; the scan tests only read it."""
    kind: str = request.param
    engine = make_engine(kind, tmp_path_factory.mktemp("scan") / "lmdb")
    for start in range(0, SCAN_KEYS, 700):
        engine.apply([put(r) for r in SCAN_RECORDS[start : start + 700]])
    yield engine
    engine.close()


def expected_in(start: int, end: int) -> list[Record]:
    return [r for r, token in zip(SORTED, TOKENS, strict=True) if start <= token < end]


def test_scan_tokens_are_distinct() -> None:
    # The index-based ranges below assume no two test keys share a token.
    assert len(set(TOKENS)) == SCAN_KEYS


def test_scan_of_the_full_range_returns_everything_in_token_order(populated: Engine) -> None:
    records = list(populated.scan(*FULL_RANGE))

    assert records == SORTED
    assert [token_of(r.key) for r in records] == sorted(TOKENS)
    assert populated.stats().records == SCAN_KEYS


def test_scan_of_random_ranges(populated: Engine) -> None:
    rng = random.Random(20_241_126)
    for _ in range(60):
        start, end = sorted(rng.randrange(1 << 64) for _ in range(2))
        assert list(populated.scan(start, end)) == expected_in(start, end), (start, end)


def test_scan_ranges_between_key_tokens(populated: Engine) -> None:
    rng = random.Random(7)
    for _ in range(40):
        first, last = sorted(rng.sample(range(SCAN_KEYS), 2))
        # The start token is inclusive, the end token exclusive.
        assert list(populated.scan(TOKENS[first], TOKENS[last])) == SORTED[first:last]
        shifted = list(populated.scan(TOKENS[first] + 1, TOKENS[last] + 1))
        assert shifted == SORTED[first + 1 : last + 1]


@pytest.mark.parametrize(
    "count",
    [
        SCAN_CHUNK - 1,
        SCAN_CHUNK,
        SCAN_CHUNK + 1,
        2 * SCAN_CHUNK - 1,
        2 * SCAN_CHUNK,
        2 * SCAN_CHUNK + 1,
        3 * SCAN_CHUNK + 100,
        SCAN_KEYS - 13,
    ],
)
def test_scan_ranges_spanning_chunk_boundaries(populated: Engine, count: int) -> None:
    first = 13
    last = first + count
    end = TOKENS[last] if last < SCAN_KEYS else 1 << 64

    records = list(populated.scan(TOKENS[first], end))

    assert len(records) == count
    assert records == SORTED[first:last]


def test_scan_edges_of_the_ring(populated: Engine) -> None:
    assert list(populated.scan(0, TOKENS[0])) == []
    assert list(populated.scan(0, TOKENS[0] + 1)) == SORTED[:1]
    assert list(populated.scan(TOKENS[-1], 1 << 64)) == SORTED[-1:]
    assert list(populated.scan(TOKENS[-1] + 1, 1 << 64)) == []
    assert list(populated.scan(0, MAX_TOKEN)) == SORTED  # no test key has the largest token
    assert list(populated.scan(MAX_TOKEN, 1 << 64)) == []
    assert list(populated.scan(0, TOKENS[-1])) == SORTED[:-1]


@pytest.mark.parametrize("index", [0, 1, 511, 512, 1500, SCAN_KEYS - 1])
def test_scan_of_one_token(populated: Engine, index: int) -> None:
    token = TOKENS[index]
    assert list(populated.scan(token, token + 1)) == [SORTED[index]]


def test_scan_of_empty_and_inverted_ranges(populated: Engine) -> None:
    for token in (0, TOKENS[0], TOKENS[1000], MAX_TOKEN):
        assert list(populated.scan(token, token)) == []
    assert list(populated.scan(TOKENS[2000], TOKENS[1000])) == []
    assert list(populated.scan(MAX_TOKEN, 0)) == []


def test_scan_bounds_hold_for_the_empty_key(engine: Engine) -> None:
    # The engine key of b"" is its token alone: exactly the bound of that token.
    empty = rec(b"", 1, b"empty")
    other = rec(b"\x00", 1, b"nul")
    engine.apply([put(empty), put(other)])
    token = token_of(b"")

    assert list(engine.scan(token, token + 1)) == [empty]
    assert empty not in list(engine.scan(0, token))
    assert empty not in list(engine.scan(token + 1, 1 << 64))
    assert scan_all(engine) == in_scan_order([empty, other])


def test_scan_returns_only_the_newest_version_of_each_key(engine: Engine) -> None:
    keys = [b"k%04d" % i for i in range(1200)]
    engine.apply([put(rec(k, 1, b"old")) for k in keys])
    newest = [rec(k, 2, b"new") if i % 2 else rec(k, 3, tombstone=True) for i, k in enumerate(keys)]
    engine.apply([put(r) for r in newest])
    engine.apply([put(rec(k, 0, b"stale")) for k in keys])

    assert scan_all(engine) == in_scan_order(newest)
    assert engine.stats().records == len(keys)


def test_engines_agree_on_every_scan(tmp_path: Path) -> None:
    engines = [make_engine(kind, tmp_path / kind) for kind in ENGINE_KINDS]
    try:
        for engine in engines:
            engine.apply([put(r) for r in SCAN_RECORDS])
        rng = random.Random(99)
        for _ in range(30):
            start, end = sorted(rng.randrange(1 << 64) for _ in range(2))
            scans = [list(engine.scan(start, end)) for engine in engines]
            assert scans[0] == scans[1]
    finally:
        for engine in engines:
            engine.close()


# --- hinted handoff: listing and dropping hints ----------------------------------------


def delivered(record: Record, node: str) -> Mutation:
    """The mutation that drops a hint its node acknowledged."""
    return Mutation(record=record, hint_for=node, delivered=True)


def test_scan_hints_lists_every_hint_with_its_node(engine: Engine) -> None:
    long_key = b"L" * 600
    held = {
        (OTHER, rec(b"a", 1)),
        (THIRD, rec(b"a", 2)),
        (OTHER, rec(long_key, 3, b"long")),
        (THIRD, rec(b"b", 4, tombstone=True)),
    }
    engine.apply([hint(record, node) for node, record in held])
    engine.apply([put(rec(b"a", 9))])

    assert set(engine.scan_hints()) == held
    assert engine.stats().hints == len(held)
    assert engine.stats().records == 1


def test_a_delivered_hint_is_dropped_only_if_it_is_still_that_version(engine: Engine) -> None:
    old, new = rec(b"k", 1, b"old"), rec(b"k", 2, b"new")
    engine.apply([hint(old, OTHER), hint(new, OTHER), hint(old, THIRD)])

    # A newer hint arrived after the old one was sent: it stays.
    assert apply_mutation(engine, delivered(old, OTHER)).outcome is STALE
    assert by_version(engine.get_hints(b"k")) == [old, new]
    # The version that was sent is the one held: it goes, and only for that node.
    assert apply_mutation(engine, delivered(new, OTHER)).outcome is APPLIED
    assert engine.get_hints(b"k") == [old]
    assert list(engine.scan_hints()) == [(THIRD, old)]
    assert apply_mutation(engine, delivered(old, THIRD)).outcome is APPLIED
    assert engine.stats().hints == 0
    assert apply_mutation(engine, delivered(old, THIRD)).outcome is STALE


# --- purge: dropping records for good (tombstone GC) ---------------------------


def test_purge_removes_the_records_of_the_keys_and_counts_them(engine: Engine) -> None:
    kept = rec(b"kept", 1)
    engine.apply([put(rec(b"a", 1)), put(rec(b"b", 2, tombstone=True)), put(kept)])

    # Missing and repeated keys are not counted twice.
    assert engine.purge([b"a", b"b", b"missing", b"a"]) == 2

    assert engine.get(b"a") is None
    assert engine.get(b"b") is None
    assert scan_all(engine) == [kept]
    assert engine.stats().records == 1
    assert engine.purge([]) == 0


def test_purge_leaves_hints_alone(engine: Engine) -> None:
    held = rec(b"k", 5, b"for-b")
    engine.apply([put(rec(b"k", 1)), hint(held, OTHER)])

    assert engine.purge([b"k"]) == 1

    assert engine.get(b"k") is None
    assert engine.get_hints(b"k") == [held]
    assert engine.stats().hints == 1


def test_a_purged_key_forgets_its_version(engine: Engine) -> None:
    """Why tombstones get a grace period: after a purge an older write is new again."""
    engine.apply([put(rec(b"k", 9, tombstone=True))])
    engine.purge([b"k"])

    older = rec(b"k", 1, b"late")
    assert apply_one(engine, older) == ApplyResult(APPLIED, None)
    assert engine.get(b"k") == older


def test_purge_finds_long_keys_stored_by_digest(engine: Engine) -> None:
    records = [rec(key, index + 1) for index, key in enumerate(LONG_KEYS)]
    engine.apply([put(r) for r in records])
    gone = LONG_KEYS[2:4]  # differ in their last byte only; LONG_KEYS[4] extends LONG_KEYS[3]

    assert engine.purge(gone) == 2

    for record in records:
        assert engine.get(record.key) == (None if record.key in gone else record)
    assert scan_all(engine) == in_scan_order(r for r in records if r.key not in gone)


def test_purge_keeps_keys_apart_when_tokens_collide(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("ringkv.storage.codec.token_of", lambda key: 7)
    keys = [*PREFIX_KEYS, *LONG_KEYS[1:4]]
    engine.apply([put(rec(key, 1)) for key in keys])

    assert engine.purge([b"ab", LONG_KEYS[2]]) == 2

    assert [key for key in keys if engine.get(key) is None] == [b"ab", LONG_KEYS[2]]
    assert engine.stats().records == len(keys) - 2


def test_purge_with_expected_versions_spares_records_written_since(engine: Engine) -> None:
    old_a, old_b, old_c = rec(b"a", 1, tombstone=True), rec(b"b", 1), rec(b"c", 1)
    engine.apply([put(old_a), put(old_b), put(old_c)])
    newer_b = rec(b"b", 2, b"rewritten")
    tie_c = rec(b"c", 1, b"x", node="node-z")  # same timestamp, another node: another version
    engine.apply([put(newer_b), put(tie_c)])

    removed = engine.purge(
        [b"a", b"b", b"c", b"missing"],
        expected=[old_a.version, old_b.version, old_c.version, old_a.version],
    )

    assert removed == 1
    assert engine.get(b"a") is None
    assert engine.get(b"b") == newer_b
    assert engine.get(b"c") == tie_c


def test_purge_with_a_wrong_number_of_versions_removes_nothing(engine: Engine) -> None:
    record = rec(b"a", 1)
    engine.apply([put(record)])

    with pytest.raises(ValueError, match="2 keys got 1 expected"):
        engine.purge([b"a", b"b"], expected=[record.version])

    assert engine.get(b"a") == record
