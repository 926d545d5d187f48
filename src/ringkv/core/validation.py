"""Limits on keys, values and request fields, checked before anything is written."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ringkv.core.errors import InvalidArgument, ValueTooLarge
from ringkv.core.hlc import LOGICAL_BITS
from ringkv.core.records import EXPECT_ABSENT, Record

MAX_KEY_BYTES = 4096
DEFAULT_MAX_VALUE_BYTES = 1 << 20
VALUE_BYTES_CEILING = 64 << 20
"""The largest --max-value-bytes a node takes."""
MAX_BATCH_BYTES = 16 << 20
"""Keys and values one call carries beyond its first record: a MultiSet's
entries, a MultiGet's answer, a batch of replica reads or writes."""
MESSAGE_OVERHEAD_BYTES = 64 << 10
"""Room in a message for everything but keys and values."""
MAX_VERSION_LEAD_MS = 24 * 3600 * 1000
"""How far past a replica's wall clock a version from a peer may be. Far
beyond any skew the clock guard lets a coordinator stamp with (its clock
within --max-clock-offset of a majority's), and far below what would let a
planted version push clocks toward the int64 limit."""
# Keeps now + ttl far inside the int64 an expiry is stored as.
MAX_TTL_MS = 100 * 365_25 * 24 * 3600 * 10


@dataclass(frozen=True, slots=True)
class Limits:
    """What a node accepts."""

    max_key_bytes: int = MAX_KEY_BYTES
    max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES

    @property
    def message_bytes(self) -> int:
        """The largest message a node sends or receives: one record of the
        largest size plus a batch. gRPC refuses a longer one (RESOURCE_EXHAUSTED)
        from its length prefix, before buffering it."""
        return self.max_key_bytes + self.max_value_bytes + MAX_BATCH_BYTES + MESSAGE_OVERHEAD_BYTES

    def key(self, key: str) -> bytes:
        """The key's UTF-8 bytes, or InvalidArgument if it is empty or too long."""
        if not key:
            raise InvalidArgument("key must not be empty", reason="EMPTY_KEY")
        try:
            encoded = key.encode("utf-8")
        except UnicodeEncodeError as exc:
            # Lone surrogates: a str that is not valid UTF-8.
            raise InvalidArgument("key is not valid UTF-8", reason="INVALID_UTF8") from exc
        if len(encoded) > self.max_key_bytes:
            raise InvalidArgument(
                f"key is {len(encoded)} bytes, the limit is {self.max_key_bytes}",
                reason="KEY_TOO_LARGE",
                metadata={"size": str(len(encoded)), "limit": str(self.max_key_bytes)},
            )
        return encoded

    def prefix(self, prefix: str) -> bytes:
        """A key prefix's UTF-8 bytes (empty: every key), or InvalidArgument
        as ``key`` says."""
        return self.key(prefix) if prefix else b""

    def value(self, value: bytes) -> bytes:
        """The value, or ValueTooLarge if it is over the limit."""
        if len(value) > self.max_value_bytes:
            raise ValueTooLarge(
                f"value is {len(value)} bytes, the limit is {self.max_value_bytes}",
                metadata={"size": str(len(value)), "limit": str(self.max_value_bytes)},
            )
        return value


LARGEST_MESSAGE_BYTES = Limits(max_value_bytes=VALUE_BYTES_CEILING).message_bytes
"""The largest message any node may send or take (at the largest
--max-value-bytes): what clients and members let their channels carry; each
node refuses what passes its own limit."""


def ttl_ms(ttl: int) -> int:
    """A validated time to live in milliseconds (0 means none)."""
    if ttl < 0:
        raise InvalidArgument(f"ttl_ms must not be negative, got {ttl}", reason="NEGATIVE_TTL")
    if ttl > MAX_TTL_MS:
        raise InvalidArgument(
            f"ttl_ms must be at most {MAX_TTL_MS} (100 years), got {ttl}",
            reason="TTL_TOO_LARGE",
            metadata={"limit": str(MAX_TTL_MS)},
        )
    return ttl


def expected_version(version: int) -> int | None:
    """The precondition a request's version field asks for (None: unconditional)."""
    if version == 0:
        return None
    if version < EXPECT_ABSENT:
        raise InvalidArgument(
            f"version must be 0, -1 or a version returned by the store, got {version}",
            reason="INVALID_VERSION",
        )
    return version


_NODE_ID = re.compile(r"[!-+\--<>-~]{1,64}")
"""Printable ASCII but space, ',' and '=': one match per record a peer sends."""


def node_id(text: str) -> str:
    """A node id: 1-64 printable ASCII characters without spaces, commas or '='.

    ASCII keeps ids at 64 bytes, which bounds the storage keys they are part of.
    """
    if _NODE_ID.fullmatch(text):
        return text
    if not 0 < len(text) <= 64 or any(c.isspace() or c in ",=" for c in text):
        raise InvalidArgument(
            f"node id {text!r} must be 1-64 characters without spaces, commas or '='",
            reason="INVALID_NODE_ID",
        )
    if not (text.isascii() and text.isprintable()):
        raise InvalidArgument(f"node id {text!r} must be printable ASCII", reason="INVALID_NODE_ID")
    return text


def replica_record(record: Record, limits: Limits, now_ms: int) -> Record:
    """A record a peer sent, held to the client API's limits: a member's
    messages are trusted no more than a client's. Its version may not be
    more than ``MAX_VERSION_LEAD_MS`` past ``now_ms`` (this node's wall clock):
    a coordinator that read it would move its clock there, and a version
    near the int64 limit would leave it none to stamp with."""
    try:
        key = record.key.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidArgument("key is not valid UTF-8", reason="INVALID_UTF8") from exc
    limits.key(key)
    limits.value(record.value)
    node_id(record.version.node_id)
    if record.version.timestamp <= 0:
        raise InvalidArgument(
            f"version timestamp must be positive, got {record.version.timestamp}",
            reason="INVALID_VERSION",
        )
    lead_ms = (record.version.timestamp >> LOGICAL_BITS) - now_ms
    if lead_ms > MAX_VERSION_LEAD_MS:
        raise InvalidArgument(
            f"the record's version is {lead_ms} ms ahead of this node's clock; the limit is "
            f"{MAX_VERSION_LEAD_MS}",
            reason="VERSION_IN_FUTURE",
        )
    if record.expires_at_ms < 0 or (record.tombstone and record.value):
        raise InvalidArgument(
            "a record's expiry must not be negative, and a tombstone has no value",
            reason="INVALID_RECORD",
        )
    return record
