"""Tests for ringkv.core.records: liveness, preconditions and last-writer-wins."""

from __future__ import annotations

import functools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ringkv.core.hlc import Version
from ringkv.core.records import (
    EXPECT_ABSENT,
    EXPECT_ANY,
    NO_EXPIRY,
    ApplyResult,
    Mutation,
    Outcome,
    Record,
    resolve,
)

PROPERTY = settings(max_examples=200, deadline=None)

NOW = 1_700_000_000_000
KEY = b"k"


def record(
    timestamp: int = 10,
    node_id: str = "n1",
    *,
    value: bytes = b"v",
    tombstone: bool = False,
    expires_at_ms: int = NO_EXPIRY,
) -> Record:
    return Record(
        KEY,
        b"" if tombstone else value,
        Version(timestamp, node_id),
        tombstone=tombstone,
        expires_at_ms=expires_at_ms,
    )


def test_constants() -> None:
    assert NO_EXPIRY == 0
    assert EXPECT_ANY is None
    assert EXPECT_ABSENT == -1


def test_record_defaults() -> None:
    r = Record(KEY, b"v", Version(1, "n1"))
    assert r.tombstone is False
    assert r.expires_at_ms == NO_EXPIRY


# --- Record.is_live ---------------------------------------------------------


def test_value_without_expiry_is_live_forever() -> None:
    r = record()
    assert r.is_live(0)
    assert r.is_live(NOW)
    assert r.is_live(1 << 62)


def test_tombstone_is_never_live() -> None:
    assert not record(tombstone=True).is_live(0)
    assert not record(tombstone=True).is_live(NOW)
    # Even a tombstone with an expiry in the future.
    assert not record(tombstone=True, expires_at_ms=NOW + 1000).is_live(NOW)


@pytest.mark.parametrize(
    ("now_ms", "live"),
    [
        (NOW - 1_000, True),
        (NOW - 1, True),
        (NOW, False),  # the expiry instant itself is already expired
        (NOW + 1, False),
        (NOW + 1_000, False),
    ],
)
def test_expiry_boundary(now_ms: int, live: bool) -> None:
    assert record(expires_at_ms=NOW).is_live(now_ms) is live


def test_empty_value_is_live() -> None:
    """An empty value is a value, not a tombstone."""
    assert record(value=b"").is_live(NOW)


@given(
    expires_at_ms=st.integers(min_value=0, max_value=1 << 50),
    now_ms=st.integers(min_value=0, max_value=1 << 50),
    tombstone=st.booleans(),
)
@PROPERTY
def test_is_live_rule(expires_at_ms: int, now_ms: int, tombstone: bool) -> None:
    r = record(tombstone=tombstone, expires_at_ms=expires_at_ms)
    expected = not tombstone and (expires_at_ms == 0 or now_ms < expires_at_ms)
    assert r.is_live(now_ms) is expected


# --- Mutation.precondition_holds ---------------------------------------------


LIVE = record(timestamp=42)
EXPIRED = record(timestamp=42, expires_at_ms=NOW)
EXPIRING_LATER = record(timestamp=42, expires_at_ms=NOW + 1)
TOMBSTONE = record(timestamp=42, tombstone=True)


def mutation(expected: int | None, *, now_ms: int = NOW, timestamp: int = 100) -> Mutation:
    return Mutation(record(timestamp=timestamp, node_id="w"), expected=expected, now_ms=now_ms)


def test_mutation_defaults_are_unconditional() -> None:
    m = Mutation(record())
    assert m.expected is EXPECT_ANY
    assert m.now_ms == 0


@pytest.mark.parametrize("current", [None, LIVE, EXPIRED, EXPIRING_LATER, TOMBSTONE])
def test_expect_any_accepts_anything(current: Record | None) -> None:
    assert mutation(EXPECT_ANY).precondition_holds(current)


@pytest.mark.parametrize(
    ("current", "holds"),
    [
        (None, True),
        (TOMBSTONE, True),
        (EXPIRED, True),  # an expired value counts as absent
        (EXPIRING_LATER, False),
        (LIVE, False),
    ],
    ids=["missing", "tombstone", "expired", "expiring-later", "live"],
)
def test_expect_absent(current: Record | None, holds: bool) -> None:
    assert mutation(EXPECT_ABSENT).precondition_holds(current) is holds


@pytest.mark.parametrize(
    ("current", "expected", "holds"),
    [
        (LIVE, 42, True),
        (EXPIRING_LATER, 42, True),
        (LIVE, 41, False),
        (LIVE, 43, False),
        (None, 42, False),
        (TOMBSTONE, 42, False),  # the tombstone's own timestamp does not match
        (EXPIRED, 42, False),  # nor does an expired value's
    ],
    ids=[
        "live-match",
        "expiring-later-match",
        "live-lower",
        "live-higher",
        "missing",
        "tombstone",
        "expired",
    ],
)
def test_expect_exact_timestamp(current: Record | None, expected: int, holds: bool) -> None:
    assert mutation(expected).precondition_holds(current) is holds


def test_exact_precondition_ignores_node_id() -> None:
    """The request's version field carries the timestamp only."""
    current = record(timestamp=42, node_id="some-other-node")
    assert mutation(42).precondition_holds(current)


def test_liveness_is_judged_at_the_mutations_time() -> None:
    current = record(timestamp=42, expires_at_ms=NOW)
    assert mutation(42, now_ms=NOW - 1).precondition_holds(current)
    assert not mutation(42, now_ms=NOW).precondition_holds(current)
    assert not mutation(EXPECT_ABSENT, now_ms=NOW - 1).precondition_holds(current)
    assert mutation(EXPECT_ABSENT, now_ms=NOW).precondition_holds(current)


# --- resolve -------------------------------------------------------------------


def test_resolve_applies_to_a_missing_key() -> None:
    m = mutation(EXPECT_ANY)
    assert resolve(m, None) == ApplyResult(Outcome.APPLIED, None)


def test_resolve_applies_a_newer_version() -> None:
    current = record(timestamp=10)
    result = resolve(mutation(EXPECT_ANY, timestamp=11), current)
    assert result == ApplyResult(Outcome.APPLIED, current)


def test_resolve_older_version_is_stale() -> None:
    current = record(timestamp=10)
    result = resolve(mutation(EXPECT_ANY, timestamp=9), current)
    assert result == ApplyResult(Outcome.STALE, current)


def test_resolve_equal_version_is_stale() -> None:
    current = record(timestamp=10, node_id="w")
    result = resolve(Mutation(record(timestamp=10, node_id="w", value=b"other")), current)
    assert result.outcome is Outcome.STALE
    assert result.previous is current


def test_resolve_equal_timestamp_is_decided_by_node_id() -> None:
    current = record(timestamp=10, node_id="n2")
    assert resolve(Mutation(record(timestamp=10, node_id="n3")), current).outcome is Outcome.APPLIED
    assert resolve(Mutation(record(timestamp=10, node_id="n1")), current).outcome is Outcome.STALE


def test_resolve_a_tombstone_wins_when_newer() -> None:
    current = record(timestamp=10)
    delete = Mutation(record(timestamp=11, tombstone=True))
    assert resolve(delete, current) == ApplyResult(Outcome.APPLIED, current)


def test_resolve_a_value_loses_to_a_newer_tombstone() -> None:
    current = record(timestamp=11, tombstone=True)
    assert resolve(Mutation(record(timestamp=10)), current).outcome is Outcome.STALE


def test_resolve_checks_the_precondition_before_staleness() -> None:
    """A conditional write that is both stale and mismatched reports the mismatch."""
    current = record(timestamp=50)
    stale_and_mismatched = mutation(49, timestamp=10)
    assert resolve(stale_and_mismatched, current) == ApplyResult(
        Outcome.PRECONDITION_FAILED, current
    )
    stale_absent = mutation(EXPECT_ABSENT, timestamp=10)
    assert resolve(stale_absent, current).outcome is Outcome.PRECONDITION_FAILED


def test_resolve_stale_even_when_the_precondition_holds() -> None:
    current = record(timestamp=50)
    same_version = Mutation(record(timestamp=50, value=b"other"), expected=50, now_ms=NOW)
    assert resolve(same_version, current) == ApplyResult(Outcome.STALE, current)
    assert resolve(mutation(50, timestamp=49), current).outcome is Outcome.STALE


def test_resolve_conditional_write_applies_on_match() -> None:
    current = record(timestamp=50)
    assert resolve(mutation(50, timestamp=51), current) == ApplyResult(Outcome.APPLIED, current)


def test_resolve_expect_absent_over_an_expired_value_applies() -> None:
    current = record(timestamp=50, expires_at_ms=NOW)
    result = resolve(mutation(EXPECT_ABSENT, timestamp=60), current)
    assert result == ApplyResult(Outcome.APPLIED, current)
    assert not result.previous_was_live(NOW)


def test_resolve_precondition_failure_on_missing_key() -> None:
    assert resolve(mutation(42), None) == ApplyResult(Outcome.PRECONDITION_FAILED, None)


records = st.builds(
    Record,
    key=st.just(KEY),
    value=st.binary(max_size=4),
    version=st.builds(Version, st.integers(0, 20), st.sampled_from(["n1", "n2", "n3"])),
    tombstone=st.booleans(),
    expires_at_ms=st.sampled_from([NO_EXPIRY, NOW - 1, NOW, NOW + 1]),
)
expectations = st.one_of(
    st.none(), st.just(EXPECT_ABSENT), st.integers(0, 20), st.integers(min_value=1)
)


@given(
    new=records,
    current=st.one_of(st.none(), records),
    expected=expectations,
    now_ms=st.sampled_from([0, NOW - 1, NOW, NOW + 1]),
)
@PROPERTY
def test_resolve_rule(
    new: Record, current: Record | None, expected: int | None, now_ms: int
) -> None:
    m = Mutation(new, expected=expected, now_ms=now_ms)
    result = resolve(m, current)
    assert result.previous is current
    if not m.precondition_holds(current):
        assert result.outcome is Outcome.PRECONDITION_FAILED
    elif current is None or new.version > current.version:
        assert result.outcome is Outcome.APPLIED
    else:
        assert result.outcome is Outcome.STALE


# --- ApplyResult.previous_was_live ----------------------------------------------


@pytest.mark.parametrize(
    ("previous", "live"),
    [
        (None, False),
        (LIVE, True),
        (TOMBSTONE, False),
        (EXPIRED, False),
        (EXPIRING_LATER, True),
    ],
    ids=["none", "live", "tombstone", "expired", "expiring-later"],
)
@pytest.mark.parametrize("outcome", list(Outcome))
def test_previous_was_live(previous: Record | None, live: bool, outcome: Outcome) -> None:
    assert ApplyResult(outcome, previous).previous_was_live(NOW) is live


def test_previous_was_live_uses_the_given_time() -> None:
    result = ApplyResult(Outcome.APPLIED, record(expires_at_ms=NOW))
    assert result.previous_was_live(NOW - 1)
    assert not result.previous_was_live(NOW)


# --- convergence: last-writer-wins is order independent ---------------------------


def apply_all(mutations: list[Mutation], start: Record | None) -> Record | None:
    def step(stored: Record | None, m: Mutation) -> Record | None:
        result = resolve(m, stored)
        assert result.previous is stored
        return m.record if result.outcome is Outcome.APPLIED else stored

    return functools.reduce(step, mutations, start)


def _write(
    version: Version, value: bytes, tombstone: bool, expires_at_ms: int, now_ms: int
) -> Mutation:
    record = Record(
        KEY,
        b"" if tombstone else value,
        version,
        tombstone=tombstone,
        expires_at_ms=expires_at_ms,
    )
    return Mutation(record, now_ms=now_ms)


# Unconditional writes to one key, each under its own version (as the HLC
# guarantees), mixing values, deletes and expiring values.
unconditional_writes = st.lists(
    st.builds(
        _write,
        version=st.builds(Version, st.integers(0, 30), st.sampled_from(["n1", "n2", "n3", "n4"])),
        value=st.binary(max_size=3),
        tombstone=st.booleans(),
        expires_at_ms=st.sampled_from([NO_EXPIRY, NOW - 1, NOW, NOW + 1]),
        now_ms=st.sampled_from([0, NOW]),
    ),
    min_size=1,
    max_size=12,
    unique_by=lambda m: m.record.version,
)


@given(writes=unconditional_writes, data=st.data())
@PROPERTY
def test_any_order_of_unconditional_writes_converges_to_the_newest(
    writes: list[Mutation], data: st.DataObject
) -> None:
    newest = max((m.record for m in writes), key=lambda r: r.version)
    # Two replicas receive the same writes in different orders.
    first = data.draw(st.permutations(writes), label="first")
    second = data.draw(st.permutations(writes), label="second")
    assert apply_all(first, None) == newest
    assert apply_all(second, None) == newest
    # Replays and duplicates (as in anti-entropy or retries) change nothing.
    replayed = data.draw(st.lists(st.sampled_from(writes), max_size=8), label="replayed")
    assert apply_all([*first, *replayed], None) == newest


@given(writes=unconditional_writes, data=st.data())
@PROPERTY
def test_convergence_from_an_existing_record(writes: list[Mutation], data: st.DataObject) -> None:
    existing = record(timestamp=15, node_id="n0", value=b"old")
    assert all(m.record.version != existing.version for m in writes)
    order = data.draw(st.permutations(writes), label="order")
    expected = max([existing, *(m.record for m in writes)], key=lambda r: r.version)
    assert apply_all(order, existing) == expected
