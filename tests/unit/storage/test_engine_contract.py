"""The Engine contract, run against every engine: MemoryEngine and LmdbEngine."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from ringkv.core.records import EXPECT_ABSENT, ApplyResult, Outcome, Record
from ringkv.core.tokens import MAX_TOKEN, token_of
from ringkv.core.validation import MAX_KEY_BYTES
from ringkv.storage.engine import Engine

from .helpers import ENGINE_KINDS, FULL_RANGE, in_scan_order, make_engine, put, rec, scan_all

APPLIED = Outcome.APPLIED
STALE = Outcome.STALE
FAILED = Outcome.PRECONDITION_FAILED


def apply_one(
    engine: Engine, record: Record, expected: int | None = None, now_ms: int = 0
) -> ApplyResult:
    results = engine.apply([put(record, expected, now_ms)])
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
    apply_one(engine, record, now_ms=1_000_000)  # stored even though already expired

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


# --- preconditions -----------------------------------------------------------


def test_expect_absent_applies_to_a_missing_key(engine: Engine) -> None:
    record = rec(b"k", 1)
    assert apply_one(engine, record, EXPECT_ABSENT) == ApplyResult(APPLIED, None)
    assert engine.get(b"k") == record


def test_expect_absent_fails_on_a_live_value_and_writes_nothing(engine: Engine) -> None:
    live = rec(b"k", 1, b"live", expires_at_ms=100)
    apply_one(engine, live)

    result = apply_one(engine, rec(b"k", 2, b"new"), EXPECT_ABSENT, now_ms=99)

    assert result == ApplyResult(FAILED, live)
    assert engine.get(b"k") == live


def test_expect_absent_applies_over_a_tombstone(engine: Engine) -> None:
    tombstone = rec(b"k", 1, tombstone=True)
    apply_one(engine, tombstone)
    record = rec(b"k", 2, b"new")

    assert apply_one(engine, record, EXPECT_ABSENT) == ApplyResult(APPLIED, tombstone)
    assert engine.get(b"k") == record


@pytest.mark.parametrize("now_ms", [100, 101, 1 << 50])
def test_expect_absent_treats_an_expired_value_as_absent(engine: Engine, now_ms: int) -> None:
    expired = rec(b"k", 1, b"old", expires_at_ms=100)
    apply_one(engine, expired)
    record = rec(b"k", 2, b"new")

    assert apply_one(engine, record, EXPECT_ABSENT, now_ms) == ApplyResult(APPLIED, expired)
    assert engine.get(b"k") == record


def test_expected_timestamp_applies_when_it_matches(engine: Engine) -> None:
    current = rec(b"k", 41, b"old", node="node-z")
    apply_one(engine, current)
    record = rec(b"k", 42, b"new")

    # Only the timestamp is compared, not the node id.
    assert apply_one(engine, record, expected=41) == ApplyResult(APPLIED, current)
    assert engine.get(b"k") == record


@pytest.mark.parametrize("expected", [0, 40, 42, 1 << 62])
def test_expected_timestamp_mismatch_fails_and_writes_nothing(
    engine: Engine, expected: int
) -> None:
    current = rec(b"k", 41, b"old")
    apply_one(engine, current)

    result = apply_one(engine, rec(b"k", 50, b"new"), expected=expected)

    assert result == ApplyResult(FAILED, current)
    assert engine.get(b"k") == current
    assert engine.stats().records == 1


def test_expected_timestamp_fails_on_a_missing_key(engine: Engine) -> None:
    assert apply_one(engine, rec(b"k", 5), expected=1) == ApplyResult(FAILED, None)
    assert engine.get(b"k") is None
    assert engine.stats().records == 0


def test_expected_timestamp_fails_on_a_tombstone_of_that_timestamp(engine: Engine) -> None:
    tombstone = rec(b"k", 7, tombstone=True)
    apply_one(engine, tombstone)

    assert apply_one(engine, rec(b"k", 8), expected=7) == ApplyResult(FAILED, tombstone)
    assert engine.get(b"k") == tombstone


@pytest.mark.parametrize(
    ("now_ms", "outcome"),
    [(99, APPLIED), (100, FAILED), (101, FAILED)],
)
def test_expected_timestamp_sees_an_expired_value_as_absent(
    engine: Engine, now_ms: int, outcome: Outcome
) -> None:
    current = rec(b"k", 7, b"ttl", expires_at_ms=100)
    apply_one(engine, current)
    record = rec(b"k", 8, b"new")

    assert apply_one(engine, record, expected=7, now_ms=now_ms) == ApplyResult(outcome, current)
    assert engine.get(b"k") == (record if outcome is APPLIED else current)


def test_precondition_is_checked_before_the_version(engine: Engine) -> None:
    current = rec(b"k", 10, b"current")
    apply_one(engine, current)

    # Precondition fails and the version is stale: the precondition is reported.
    assert apply_one(engine, rec(b"k", 5), expected=3) == ApplyResult(FAILED, current)
    # Precondition holds but the version is stale.
    assert apply_one(engine, rec(b"k", 5), expected=10) == ApplyResult(STALE, current)
    assert apply_one(engine, rec(b"k", 5), EXPECT_ABSENT, now_ms=0) == ApplyResult(FAILED, current)
    assert engine.get(b"k") == current


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
            put(v1, EXPECT_ABSENT),  # applied: nothing stored yet
            put(v2, expected=1),  # sees v1, written earlier in this batch
            put(v1),  # stale against v2
            put(rec(b"k", 9), EXPECT_ABSENT),  # v2 is live
            put(v3, expected=2),  # deletes v2
            put(v4, EXPECT_ABSENT),  # the tombstone counts as absent
            put(rec(b"k", 4, b"tie")),  # equal version: stale
        ]
    )

    assert results == [
        ApplyResult(APPLIED, None),
        ApplyResult(APPLIED, v1),
        ApplyResult(STALE, v2),
        ApplyResult(FAILED, v2),
        ApplyResult(APPLIED, v2),
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
            put(rec(b"a", 2), expected=99),  # fails, and fails only itself
            put(b1),
            put(c1, EXPECT_ABSENT),
            put(rec(b"a", 0)),  # stale
            put(b2, expected=1),
        ]
    )

    assert results == [
        ApplyResult(FAILED, a1),
        ApplyResult(APPLIED, None),
        ApplyResult(APPLIED, None),
        ApplyResult(STALE, a1),
        ApplyResult(APPLIED, b1),
    ]
    assert engine.get(b"a") == a1
    assert engine.get(b"b") == b2
    assert engine.get(b"c") == c1
    assert scan_all(engine) == in_scan_order([a1, b2, c1])


# --- stats -------------------------------------------------------------------


def test_stats_count_records(engine: Engine) -> None:
    empty = engine.stats()
    assert empty.records == 0

    engine.apply([put(rec(b"k%d" % i, 1, b"x" * 100)) for i in range(50)])
    assert engine.stats().records == 50
    assert engine.stats().bytes_used > 0

    # Overwrites, stale writes and failed preconditions add no record.
    engine.apply([put(rec(b"k%d" % i, 2)) for i in range(10)])
    engine.apply([put(rec(b"k%d" % i, 0)) for i in range(10)])
    engine.apply([put(rec(b"new%d" % i, 1), expected=5) for i in range(10)])
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
