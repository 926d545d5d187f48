"""How records are laid out as bytes: (token, key) keys and versioned values."""

from __future__ import annotations

import struct

from ringkv.core.hlc import Version
from ringkv.core.records import Record
from ringkv.core.tokens import token_of

_TOKEN = struct.Struct(">Q")
_KEY_LENGTH = struct.Struct(">H")
# flags, version timestamp, expiry, length of the version's node id
_HEADER = struct.Struct(">BqqH")
_TOMBSTONE = 0x01


def storage_key(key: bytes) -> bytes:
    """The engine key: big-endian token then the key, so a token range is contiguous."""
    return _TOKEN.pack(token_of(key)) + key


def token_bound(token: int) -> bytes:
    """The smallest engine key whose token is ``token``."""
    return _TOKEN.pack(token)


def hint_prefix(key: bytes) -> bytes:
    """The common prefix of every hint for ``key``, whatever node it is for."""
    return storage_key_length_prefixed(key)


def hint_key(key: bytes, node_id: str) -> bytes:
    """The engine key of a hint: the key's (token, length, key), then the node id."""
    return storage_key_length_prefixed(key) + node_id.encode("utf-8")


def storage_key_length_prefixed(key: bytes) -> bytes:
    # The length keeps "ab"+"c" and "a"+"bc" apart when a node id follows.
    return _TOKEN.pack(token_of(key)) + _KEY_LENGTH.pack(len(key)) + key


def user_key(stored_key: bytes) -> bytes:
    """The key part of an engine key."""
    return stored_key[_TOKEN.size :]


def encode_record(record: Record) -> bytes:
    """The stored form of a record's version, flags, expiry and value."""
    node = record.version.node_id.encode("utf-8")
    header = _HEADER.pack(
        _TOMBSTONE if record.tombstone else 0,
        record.version.timestamp,
        record.expires_at_ms,
        len(node),
    )
    return header + node + record.value


def decode_record(key: bytes, data: bytes | memoryview) -> Record:
    """The record stored under ``key`` (the user key) as ``data``."""
    flags, timestamp, expires_at_ms, node_len = _HEADER.unpack_from(data)
    start = _HEADER.size
    node_id = bytes(data[start : start + node_len]).decode("utf-8")
    return Record(
        key=key,
        value=bytes(data[start + node_len :]),
        version=Version(timestamp, node_id),
        tombstone=bool(flags & _TOMBSTONE),
        expires_at_ms=expires_at_ms,
    )
