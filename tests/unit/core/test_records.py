"""Tests for ringkv.core.records: liveness, preconditions and last-writer-wins."""

from __future__ import annotations

import functools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ringkv.core import records as records_module
from ringkv.core.errors import PreconditionFailed
from ringkv.core.hlc import Version
from ringkv.core.records import (
    EXPECT_ABSENT,
    NO_EXPIRY,
    ApplyResult,
    Mutation,
    Outcome,
    Record,
    check_precondition,
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
    assert EXPECT_ABSENT == -1
    # None means unconditional; there is no EXPECT_ANY constant any more.
    assert not hasattr(records_module, "EXPECT_ANY")


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


# --- check_precondition ------------------------------------------------------


LIVE = record(timestamp=42)
EXPIRED = record(timestamp=42, expires_at_ms=NOW)
EXPIRING_LATER = record(timestamp=42, expires_at_ms=NOW + 1)
TOMBSTONE = record(timestamp=42, tombstone=True)


def holds(expected: int | None, current: Record | None, now_ms: int = NOW) -> bool:
    try:
        check_precondition(expected, current, now_ms)
    except PreconditionFailed:
        return False
    return True


def failure(expected: int | None, current: Record | None, now_ms: int = NOW) -> PreconditionFailed:
    with pytest.raises(PreconditionFailed) as raised:
        check_precondition(expected, current, now_ms)
    return raised.value


@pytest.mark.parametrize("current", [None, LIVE, EXPIRED, EXPIRING_LATER, TOMBSTONE])
@pytest.mark.parametrize("now_ms", [0, NOW, 1 << 62])
def test_no_expectation_is_unconditional(current: Record | None, now_ms: int) -> None:
    check_precondition(None, current, now_ms)  # raises nothing


@pytest.mark.parametrize(
    ("current", "expected_holds"),
    [
        (None, True),
        (TOMBSTONE, True),
        (EXPIRED, True),  # an expired value counts as absent
        (EXPIRING_LATER, False),
        (LIVE, False),
    ],
    ids=["missing", "tombstone", "expired", "expiring-later", "live"],
)
def test_expect_absent(current: Record | None, expected_holds: bool) -> None:
    assert holds(EXPECT_ABSENT, current) is expected_holds


@pytest.mark.parametrize(
    ("current", "expected", "expected_holds"),
    [
        (LIVE, 42, True),
        (EXPIRING_LATER, 42, True),
        (LIVE, 41, False),
        (LIVE, 43, False),
        (LIVE, 0, False),
        (None, 42, False),
        (None, 0, False),  # absent is not "version 0"
        (TOMBSTONE, 42, False),  # the tombstone's own timestamp does not match
        (EXPIRED, 42, False),  # nor does an expired value's
    ],
    ids=[
        "live-match",
        "expiring-later-match",
        "live-lower",
        "live-higher",
        "live-zero",
        "missing",
        "missing-zero",
        "tombstone",
        "expired",
    ],
)
def test_expect_exact_timestamp(
    current: Record | None, expected: int, expected_holds: bool
) -> None:
    assert holds(expected, current) is expected_holds


def test_a_zero_timestamp_matches_a_live_value_of_timestamp_zero() -> None:
    assert holds(0, record(timestamp=0))


def test_exact_precondition_ignores_node_id() -> None:
    """The request's version field carries the timestamp only."""
    current = record(timestamp=42, node_id="some-other-node")
    assert holds(42, current)


def test_liveness_is_judged_at_the_given_time() -> None:
    current = record(timestamp=42, expires_at_ms=NOW)
    assert holds(42, current, now_ms=NOW - 1)
    assert not holds(42, current, now_ms=NOW)
    assert not holds(EXPECT_ABSENT, current, now_ms=NOW - 1)
    assert holds(EXPECT_ABSENT, current, now_ms=NOW)


def test_mismatch_reports_the_expected_and_the_live_version() -> None:
    error = failure(41, LIVE)
    assert error.reason == "VERSION_MISMATCH"
    assert error.metadata == {"expected": "41", "actual": "42"}
    assert "41" in error.message
    assert "42" in error.message


def test_expect_absent_over_a_live_value_reports_its_version() -> None:
    error = failure(EXPECT_ABSENT, EXPIRING_LATER)
    assert error.reason == "VERSION_MISMATCH"
    assert error.metadata == {"expected": str(EXPECT_ABSENT), "actual": "42"}
    assert "absent" in error.message


@pytest.mark.parametrize(
    "current", [None, TOMBSTONE, EXPIRED], ids=["missing", "tombstone", "expired"]
)
def test_an_absent_key_is_reported_as_actual_zero(current: Record | None) -> None:
    """Tombstones and expired values report no version: they count as absent."""
    error = failure(42, current)
    assert error.metadata == {"expected": "42", "actual": "0"}
    assert "absent" in error.message


@given(
    current=st.one_of(
        st.none(),
        st.builds(
            Record,
            key=st.just(KEY),
            value=st.binary(max_size=4),
            version=st.builds(Version, st.integers(0, 20), st.sampled_from(["n1", "n2"])),
            tombstone=st.booleans(),
            expires_at_ms=st.sampled_from([NO_EXPIRY, NOW - 1, NOW, NOW + 1]),
        ),
    ),
    expected=st.one_of(st.none(), st.just(EXPECT_ABSENT), st.integers(0, 20)),
    now_ms=st.sampled_from([0, NOW - 1, NOW, NOW + 1]),
)
@PROPERTY
def test_check_precondition_rule(current: Record | None, expected: int | None, now_ms: int) -> None:
    live = (
        current is not None
        and not current.tombstone
        and (current.expires_at_ms == NO_EXPIRY or now_ms < current.expires_at_ms)
    )
    if expected is None:
        should_hold = True
    elif expected == EXPECT_ABSENT:
        should_hold = not live
    else:
        should_hold = live and current is not None and current.version.timestamp == expected
    assert holds(expected, current, now_ms) is should_hold
    if not should_hold:
        actual = current.version.timestamp if live and current is not None else 0
        error = failure(expected, current, now_ms)
        assert error.metadata == {"expected": str(expected), "actual": str(actual)}


# --- Mutation and resolve ---------------------------------------------------------


def mutation(timestamp: int = 100) -> Mutation:
    return Mutation(record(timestamp=timestamp, node_id="w"))


def test_mutation_defaults_to_the_nodes_own_replica() -> None:
    m = Mutation(record())
    assert m.hint_for is None
    assert Mutation(record(), hint_for="n2").hint_for == "n2"


def test_outcomes_are_only_applied_and_stale() -> None:
    assert set(Outcome) == {Outcome.APPLIED, Outcome.STALE}


def test_resolve_applies_to_a_missing_key() -> None:
    assert resolve(mutation(), None) == ApplyResult(Outcome.APPLIED, None)


def test_resolve_applies_a_newer_version() -> None:
    current = record(timestamp=10)
    result = resolve(mutation(timestamp=11), current)
    assert result == ApplyResult(Outcome.APPLIED, current)


def test_resolve_older_version_is_stale() -> None:
    current = record(timestamp=10)
    result = resolve(mutation(timestamp=9), current)
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


@pytest.mark.parametrize("current", [EXPIRED, TOMBSTONE], ids=["expired", "tombstone"])
def test_resolve_ignores_liveness(current: Record) -> None:
    """Expired values and tombstones still order writes by their version."""
    assert resolve(mutation(timestamp=41), current) == ApplyResult(Outcome.STALE, current)
    assert resolve(mutation(timestamp=43), current) == ApplyResult(Outcome.APPLIED, current)


def test_resolve_ignores_hint_for() -> None:
    """A hint is ordered against the hint it may replace exactly like a record."""
    current = record(timestamp=10)
    newer = Mutation(record(timestamp=11), hint_for="n2")
    older = Mutation(record(timestamp=9), hint_for="n2")
    assert resolve(newer, current) == ApplyResult(Outcome.APPLIED, current)
    assert resolve(older, current) == ApplyResult(Outcome.STALE, current)
    assert resolve(newer, None) == ApplyResult(Outcome.APPLIED, None)


records = st.builds(
    Record,
    key=st.just(KEY),
    value=st.binary(max_size=4),
    version=st.builds(Version, st.integers(0, 20), st.sampled_from(["n1", "n2", "n3"])),
    tombstone=st.booleans(),
    expires_at_ms=st.sampled_from([NO_EXPIRY, NOW - 1, NOW, NOW + 1]),
)


@given(
    new=records,
    current=st.one_of(st.none(), records),
    hint_for=st.one_of(st.none(), st.sampled_from(["n1", "n2"])),
)
@PROPERTY
def test_resolve_rule(new: Record, current: Record | None, hint_for: str | None) -> None:
    result = resolve(Mutation(new, hint_for=hint_for), current)
    assert result.previous is current
    if current is None or new.version > current.version:
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


def _write(version: Version, value: bytes, tombstone: bool, expires_at_ms: int) -> Mutation:
    record = Record(
        KEY,
        b"" if tombstone else value,
        version,
        tombstone=tombstone,
        expires_at_ms=expires_at_ms,
    )
    return Mutation(record)


# Writes to one key, each under its own version (as the HLC
# guarantees), mixing values, deletes and expiring values.
one_key_writes = st.lists(
    st.builds(
        _write,
        version=st.builds(Version, st.integers(0, 30), st.sampled_from(["n1", "n2", "n3", "n4"])),
        value=st.binary(max_size=3),
        tombstone=st.booleans(),
        expires_at_ms=st.sampled_from([NO_EXPIRY, NOW - 1, NOW, NOW + 1]),
    ),
    min_size=1,
    max_size=12,
    unique_by=lambda m: m.record.version,
)


@given(writes=one_key_writes, data=st.data())
@PROPERTY
def test_any_order_of_writes_converges_to_the_newest(
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


@given(writes=one_key_writes, data=st.data())
@PROPERTY
def test_convergence_from_an_existing_record(writes: list[Mutation], data: st.DataObject) -> None:
    existing = record(timestamp=15, node_id="n0", value=b"old")
    assert all(m.record.version != existing.version for m in writes)
    order = data.draw(st.permutations(writes), label="order")
    expected = max([existing, *(m.record for m in writes)], key=lambda r: r.version)
    assert apply_all(order, existing) == expected
