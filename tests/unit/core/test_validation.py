"""Tests for ringkv.core.validation: limits on keys, values and request fields."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ringkv.core.errors import InvalidArgument, ResourceExhausted, ValueTooLarge
from ringkv.core.hlc import LOGICAL_BITS, Version
from ringkv.core.records import EXPECT_ABSENT, Record
from ringkv.core.validation import (
    DEFAULT_MAX_VALUE_BYTES,
    MAX_KEY_BYTES,
    MAX_TTL_MS,
    Limits,
    expected_version,
    node_id,
    replica_record,
    ttl_ms,
)

PROPERTY = settings(max_examples=200, deadline=None)


def test_defaults() -> None:
    assert MAX_KEY_BYTES == 4096
    assert DEFAULT_MAX_VALUE_BYTES == 1 << 20
    limits = Limits()
    assert limits.max_key_bytes == MAX_KEY_BYTES
    assert limits.max_value_bytes == DEFAULT_MAX_VALUE_BYTES


# --- keys ------------------------------------------------------------------------


def test_key_is_returned_as_utf8() -> None:
    assert Limits().key("user:42") == b"user:42"
    assert Limits().key("ключ") == "ключ".encode()
    assert Limits().key("\x00") == b"\x00"


def test_empty_key_is_rejected() -> None:
    with pytest.raises(InvalidArgument) as info:
        Limits().key("")
    assert info.value.reason == "EMPTY_KEY"
    assert info.value.metadata == {}


@pytest.mark.parametrize(
    ("key", "size"),
    [
        ("a" * 4096, 4096),
        ("é" * 2048, 4096),  # 2 bytes each
        ("€" * 1365 + "a", 4096),  # 3 bytes each
        ("😀" * 1024, 4096),  # 4 bytes each
    ],
    ids=["ascii", "2-byte", "3-byte", "4-byte"],
)
def test_key_of_exactly_the_limit_is_accepted(key: str, size: int) -> None:
    encoded = Limits().key(key)
    assert len(encoded) == size
    assert encoded == key.encode("utf-8")


@pytest.mark.parametrize(
    ("key", "size"),
    [
        ("a" * 4097, 4097),
        ("é" * 2048 + "a", 4097),
        ("é" * 4096, 8192),  # 4096 characters, but too many bytes
        ("😀" * 1025, 4100),
        ("a" * 4095 + "é", 4097),  # a multi-byte character straddling the limit
    ],
    ids=["ascii", "2-byte-plus-one", "chars-at-limit", "4-byte", "straddling"],
)
def test_key_over_the_limit_is_rejected(key: str, size: int) -> None:
    with pytest.raises(InvalidArgument) as info:
        Limits().key(key)
    assert info.value.reason == "KEY_TOO_LARGE"
    assert info.value.metadata == {"size": str(size), "limit": "4096"}
    assert str(size) in info.value.message


def test_key_limit_is_configurable() -> None:
    limits = Limits(max_key_bytes=3)
    assert limits.key("abc") == b"abc"
    with pytest.raises(InvalidArgument) as info:
        limits.key("ab€")
    assert info.value.reason == "KEY_TOO_LARGE"
    assert info.value.metadata == {"size": "5", "limit": "3"}


@pytest.mark.parametrize("key", ["\ud800", "a\udfffb", "\udc80" * 10, "😀\ud83d"])
def test_lone_surrogates_are_invalid_utf8(key: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        Limits().key(key)
    assert info.value.reason == "INVALID_UTF8"
    assert isinstance(info.value.__cause__, UnicodeEncodeError)


@given(key=st.text(min_size=1, max_size=64))
@PROPERTY
def test_any_short_valid_key_round_trips(key: str) -> None:
    encoded = Limits().key(key)
    assert encoded == key.encode("utf-8")
    assert encoded.decode("utf-8") == key


@given(key=st.text(min_size=1, max_size=40), limit=st.integers(min_value=1, max_value=100))
@PROPERTY
def test_key_limit_counts_utf8_bytes(key: str, limit: int) -> None:
    size = len(key.encode("utf-8"))
    limits = Limits(max_key_bytes=limit)
    if size <= limit:
        assert limits.key(key) == key.encode("utf-8")
    else:
        with pytest.raises(InvalidArgument) as info:
            limits.key(key)
        assert info.value.reason == "KEY_TOO_LARGE"
        assert info.value.metadata == {"size": str(size), "limit": str(limit)}


# --- values ------------------------------------------------------------------------


def test_value_up_to_the_limit_is_returned() -> None:
    limits = Limits(max_value_bytes=8)
    assert limits.value(b"") == b""
    assert limits.value(b"12345678") == b"12345678"


def test_value_of_the_default_limit_is_accepted() -> None:
    value = bytes(DEFAULT_MAX_VALUE_BYTES)
    assert Limits().value(value) is value


@pytest.mark.parametrize("size", [9, 10, 1000])
def test_value_over_the_limit_is_rejected(size: int) -> None:
    with pytest.raises(ValueTooLarge) as info:
        Limits(max_value_bytes=8).value(bytes(size))
    assert info.value.reason == "VALUE_TOO_LARGE"
    assert info.value.metadata == {"size": str(size), "limit": "8"}
    assert isinstance(info.value, ResourceExhausted)


def test_value_one_over_the_default_limit_is_rejected() -> None:
    with pytest.raises(ValueTooLarge) as info:
        Limits().value(bytes(DEFAULT_MAX_VALUE_BYTES + 1))
    assert info.value.metadata == {
        "size": str(DEFAULT_MAX_VALUE_BYTES + 1),
        "limit": str(DEFAULT_MAX_VALUE_BYTES),
    }


# --- ttl -----------------------------------------------------------------------------


@pytest.mark.parametrize("ttl", [0, 1, 60_000, 1 << 40, MAX_TTL_MS])
def test_ttl_up_to_the_limit_passes(ttl: int) -> None:
    assert ttl_ms(ttl) == ttl


@pytest.mark.parametrize("ttl", [MAX_TTL_MS + 1, (1 << 63) - 1])
def test_ttl_past_the_limit_is_rejected(ttl: int) -> None:
    """now + ttl must stay far inside the int64 an expiry is stored as."""
    with pytest.raises(InvalidArgument) as info:
        ttl_ms(ttl)
    assert info.value.reason == "TTL_TOO_LARGE"
    assert info.value.metadata == {"limit": str(MAX_TTL_MS)}


@pytest.mark.parametrize("ttl", [-1, -1000, -(1 << 63)])
def test_ttl_negative_is_rejected(ttl: int) -> None:
    with pytest.raises(InvalidArgument) as info:
        ttl_ms(ttl)
    assert info.value.reason == "NEGATIVE_TTL"
    assert str(ttl) in info.value.message


# --- expected version ------------------------------------------------------------------


def test_version_zero_is_unconditional() -> None:
    assert expected_version(0) is None


def test_version_minus_one_expects_absent() -> None:
    assert expected_version(-1) == EXPECT_ABSENT == -1


@given(version=st.integers(min_value=1, max_value=(1 << 63) - 1))
@PROPERTY
def test_positive_version_passes(version: int) -> None:
    assert expected_version(version) == version


@given(version=st.integers(max_value=-2, min_value=-(1 << 63)))
@PROPERTY
def test_version_below_minus_one_is_rejected(version: int) -> None:
    with pytest.raises(InvalidArgument) as info:
        expected_version(version)
    assert info.value.reason == "INVALID_VERSION"


GOOD = Record(b"key", b"value", Version(1 << 20, "node1"))
NOW_MS = 1_800_000_000_000
DAY_MS = 24 * 3600 * 1000


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        (replace(GOOD, key=b""), "EMPTY_KEY"),
        (replace(GOOD, key=b"\xff\xfe"), "INVALID_UTF8"),
        (replace(GOOD, key=b"k" * (MAX_KEY_BYTES + 1)), "KEY_TOO_LARGE"),
        (replace(GOOD, value=b"v" * (DEFAULT_MAX_VALUE_BYTES + 1)), "VALUE_TOO_LARGE"),
        (replace(GOOD, version=Version(-5, "node1")), "INVALID_VERSION"),
        (replace(GOOD, version=Version(0, "node1")), "INVALID_VERSION"),
        (replace(GOOD, version=Version(1, "bad id,=")), "INVALID_NODE_ID"),
        (replace(GOOD, expires_at_ms=-1), "INVALID_RECORD"),
        (replace(GOOD, tombstone=True), "INVALID_RECORD"),
        (
            replace(GOOD, version=Version((NOW_MS + DAY_MS + 1) << LOGICAL_BITS, "n1")),
            "VERSION_IN_FUTURE",
        ),
        (replace(GOOD, version=Version(2**63 - 1, "node1")), "VERSION_IN_FUTURE"),
    ],
)
def test_a_record_from_a_peer_meets_the_client_api_limits(record: Record, reason: str) -> None:
    with pytest.raises((InvalidArgument, ValueTooLarge)) as refused:
        replica_record(record, Limits(), NOW_MS)
    assert refused.value.reason == reason


def test_a_well_formed_record_from_a_peer_passes() -> None:
    assert replica_record(GOOD, Limits(), NOW_MS) == GOOD
    deleted = replace(GOOD, value=b"", tombstone=True)
    assert replica_record(deleted, Limits(), NOW_MS) == deleted
    # A version a day ahead of this node's clock, as skew could make it, passes.
    ahead = replace(GOOD, version=Version((NOW_MS + DAY_MS) << LOGICAL_BITS, "node1"))
    assert replica_record(ahead, Limits(), NOW_MS) == ahead


@given(st.text(min_size=1, max_size=64))
def test_node_ids_are_printable_ascii_without_separators(text: str) -> None:
    fine = text.isascii() and text.isprintable() and not any(c.isspace() or c in ",=" for c in text)
    if fine:
        assert node_id(text) == text
    else:
        with pytest.raises(InvalidArgument):
            node_id(text)
