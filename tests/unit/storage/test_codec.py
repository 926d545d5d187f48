"""The byte layout of engine keys and stored records."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from ringkv.core.hlc import Version
from ringkv.core.records import Record
from ringkv.core.tokens import MAX_TOKEN, token_of
from ringkv.storage.codec import (
    INLINE_KEY_BYTES,
    decode_record,
    encode_record,
    hint_key,
    hint_prefix,
    storage_key,
    stored_user_key,
    token_bound,
)

PROPERTY = settings(max_examples=200, deadline=None, database=None)
INT63 = st.integers(min_value=0, max_value=(1 << 63) - 1)
TOKENS = st.integers(min_value=0, max_value=MAX_TOKEN)

any_records = st.builds(
    Record,
    key=st.binary(),
    value=st.binary(),
    version=st.builds(Version, timestamp=INT63, node_id=st.text(max_size=64)),
    tombstone=st.booleans(),
    expires_at_ms=INT63,
)


@PROPERTY
@given(record=any_records)
def test_records_round_trip(record: Record) -> None:
    data = encode_record(record)

    assert decode_record(record.key, data) == record
    # LMDB hands out buffers when a transaction is opened with buffers=True.
    assert decode_record(record.key, memoryview(data)) == record
    assert decode_record(record.key, memoryview(b"\xaa" + data)[1:]) == record


def test_record_layout_is_stable() -> None:
    # The on-disk format: changing it makes existing data dirs unreadable.
    record = Record(
        key=b"k",
        value=b"val",
        version=Version(0x0102030405060708, "n\u00e9"),
        tombstone=True,
        expires_at_ms=0x1122,
    )
    expected = (
        b"\x01"  # flags: tombstone
        + b"\x01\x02\x03\x04\x05\x06\x07\x08"  # version timestamp, big-endian
        + b"\x00\x00\x00\x00\x00\x00\x11\x22"  # expiry, big-endian
        + b"\x00\x03"  # length of the UTF-8 node id
        + "n\u00e9".encode()
        + b"val"
    )

    assert encode_record(record) == expected
    assert decode_record(b"k", expected) == record
    assert encode_record(Record(b"k", b"", Version(0, "")))[:1] == b"\x00"


@PROPERTY
@given(key=st.binary(max_size=INLINE_KEY_BYTES))
def test_storage_key_is_the_big_endian_token_then_the_key(key: bytes) -> None:
    stored = storage_key(key)
    data = encode_record(Record(key, b"v", Version(1, "n")))

    assert stored_user_key(stored, data) == key
    assert stored == struct.pack(">Q", token_of(key)) + key
    assert stored[:8] == token_bound(token_of(key))


@PROPERTY
@given(key=st.text(min_size=INLINE_KEY_BYTES + 1, max_size=4096).map(str.encode))
def test_a_long_key_is_stored_by_digest_and_kept_in_the_value(key: bytes) -> None:
    stored = storage_key(key)
    record = Record(key, b"value", Version(7, "n"), expires_at_ms=5)
    data = encode_record(record)

    assert len(stored) == 8 + 1 + 32
    assert stored[8:9] == b"\xff"
    assert stored_user_key(stored, data) == key
    assert decode_record(key, data) == record


@PROPERTY
@given(keys=st.lists(st.binary(max_size=12), max_size=40))
def test_storage_keys_sort_by_token_then_key(keys: list[bytes]) -> None:
    by_storage_key = sorted(keys, key=storage_key)

    assert by_storage_key == sorted(keys, key=lambda k: (token_of(k), k))


def test_storage_keys_sort_by_token_before_key() -> None:
    # Keys whose byte order is the opposite of their token order.
    keys = [b"key-%d" % i for i in range(200)]
    pairs = [(a, b) for a in keys for b in keys if a < b and token_of(a) > token_of(b)]
    assert pairs
    for smaller_key, smaller_token in pairs[:50]:
        assert storage_key(smaller_token) < storage_key(smaller_key)


@PROPERTY
@given(key=st.binary(max_size=20), token=TOKENS)
def test_token_bound_splits_keys_by_token(key: bytes, token: int) -> None:
    # token_bound(t) <= storage_key(k) exactly when t <= token_of(k): a token
    # range is one contiguous run of engine keys.
    assert (token_bound(token) <= storage_key(key)) == (token <= token_of(key))


@PROPERTY
@given(a=TOKENS, b=TOKENS)
def test_token_bounds_sort_like_tokens(a: int, b: int) -> None:
    assert (token_bound(a) < token_bound(b)) == (a < b)
    assert len(token_bound(a)) == 8


# --- hint keys ---------------------------------------------------------------

NODE_IDS = st.text(min_size=1, max_size=64)


@PROPERTY
@given(key=st.binary(max_size=600), node=NODE_IDS)
def test_a_hint_key_starts_with_the_hint_prefix_of_its_key(key: bytes, node: str) -> None:
    prefix = hint_prefix(key)
    stored = hint_key(key, node)

    assert stored.startswith(prefix)
    assert stored == prefix + node.encode("utf-8")
    # The token comes first, as for records.
    assert prefix[:8] == token_bound(token_of(key))


def test_hint_prefix_layout() -> None:
    key = b"ab"
    assert hint_prefix(key) == struct.pack(">Q", token_of(key)) + b"\x00\x02" + b"ab"
    assert hint_key(key, "n\u00e9") == hint_prefix(key) + "n\u00e9".encode()


def test_a_long_keys_hint_prefix_holds_its_digest() -> None:
    key = b"k" * (INLINE_KEY_BYTES + 1)
    prefix = hint_prefix(key)

    assert len(prefix) == 8 + 2 + 1 + 32
    assert prefix[8:10] == b"\x00\x21"  # the length of the marker and digest
    assert prefix[8 + 2 :] == storage_key(key)[8:]
    assert hint_prefix(b"k" * INLINE_KEY_BYTES) == (
        storage_key(b"k" * INLINE_KEY_BYTES)[:8]
        + struct.pack(">H", INLINE_KEY_BYTES)
        + b"k" * INLINE_KEY_BYTES
    )


def _without_token(stored: bytes) -> bytes:
    return stored[8:]


@PROPERTY
@given(
    key=st.binary(max_size=20),
    extension=st.binary(min_size=1, max_size=20),
    node=NODE_IDS,
)
def test_the_hint_prefix_of_a_key_is_no_prefix_of_a_longer_keys_hints(
    key: bytes, extension: bytes, node: str
) -> None:
    # "ab" vs "abc": keys that extend each other differ in their length
    # prefix, even if their tokens were equal (only the part after the token
    # is compared here).
    longer = key + extension
    assert not _without_token(hint_key(longer, node)).startswith(_without_token(hint_prefix(key)))
    assert not _without_token(hint_key(key, node)).startswith(_without_token(hint_prefix(longer)))


def test_ab_and_abc_hints_do_not_collide() -> None:
    for node in ("n", "c", "cn", "\x00"):
        assert not hint_key(b"abc", node).startswith(hint_prefix(b"ab"))
        assert not hint_key(b"abc", node)[8:].startswith(hint_prefix(b"ab")[8:])
        # Nor can any node id make a hint of "ab" look like one of "abc".
        assert hint_key(b"ab", "c" + node)[8:] != hint_key(b"abc", node)[8:]


@PROPERTY
@given(
    keys=st.tuples(st.binary(max_size=300), st.binary(max_size=300)).filter(lambda p: p[0] != p[1]),
    node=NODE_IDS,
)
def test_hint_prefixes_of_distinct_keys_never_prefix_each_others_hints(
    keys: tuple[bytes, bytes], node: str
) -> None:
    first, second = keys
    assert not _without_token(hint_key(second, node)).startswith(_without_token(hint_prefix(first)))


@PROPERTY
@given(key=st.binary(max_size=300), nodes=st.tuples(NODE_IDS, NODE_IDS))
def test_hint_keys_of_distinct_nodes_differ(key: bytes, nodes: tuple[str, str]) -> None:
    first, second = nodes
    assert (hint_key(key, first) == hint_key(key, second)) == (first == second)
