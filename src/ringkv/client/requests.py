"""Request building and response reading shared by the sync and async clients."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ringkv.api import kv_pb2
from ringkv.core.consistency import Consistency
from ringkv.core.errors import InvalidArgument
from ringkv.core.validation import LARGEST_MESSAGE_BYTES

DEFAULT_ENDPOINT = "127.0.0.1:50051"
MAX_PAGE = 1000
"""The most keys a node puts in one scan page."""
Level = Consistency | str | None
"""A consistency level by enum or name; None for the node's default."""
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", LARGEST_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", LARGEST_MESSAGE_BYTES),
    # By default channels share connections, and their reconnect backoff, per
    # process: a fresh client would wait out another's backoff after a node
    # restarts. Own connections, quick reconnects.
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


@dataclass(frozen=True, slots=True)
class Entry:
    """A value read from the store."""

    value: bytes
    version: int
    """Pass as ``if_version`` to write only if nobody wrote in between."""
    expires_at_ms: int = 0
    """Unix milliseconds when the value expires; 0 for never."""


@dataclass(frozen=True, slots=True)
class KeyEntry:
    """A key and its value, as a scan found them."""

    key: str
    value: bytes
    """Empty when the scan asked for keys only."""
    version: int
    expires_at_ms: int = 0
    """Unix milliseconds when the value expires; 0 for never."""


@dataclass(frozen=True, slots=True)
class ScanPage:
    """One page of a scan."""

    entries: list[KeyEntry]
    """In token order (keys are hashed: not lexical order)."""
    next_cursor: bytes
    """Pass to the next ``scan_page`` call; empty when the scan is done."""


def level(consistency: Level) -> kv_pb2.Consistency.ValueType:
    """The wire value of a consistency level given as enum, name or None."""
    if consistency is None:
        consistency = Consistency.DEFAULT
    elif isinstance(consistency, str):
        consistency = Consistency.from_name(consistency)
    return kv_pb2.Consistency.ValueType(int(consistency))


def ttl_ms(ttl: float | None) -> int:
    """Seconds to whole milliseconds, rounded up so a short TTL is never 'none'."""
    if ttl is None:
        return 0
    if ttl <= 0:
        raise InvalidArgument(f"ttl must be positive seconds, got {ttl}", reason="NEGATIVE_TTL")
    return math.ceil(ttl * 1000)


def expected(if_version: int | None, if_absent: bool) -> int:
    """The version field of a conditional write."""
    if if_absent:
        return -1
    return 0 if if_version is None else if_version


def get_request(key: str, consistency: Level) -> kv_pb2.GetRequest:
    return kv_pb2.GetRequest(key=key, consistency=level(consistency))


def set_request(
    key: str,
    value: bytes | str,
    *,
    ttl: float | None,
    if_version: int | None,
    if_absent: bool,
    consistency: Level,
) -> kv_pb2.SetRequest:
    return kv_pb2.SetRequest(
        key=key,
        value=_bytes(value),
        version=expected(if_version, if_absent),
        consistency=level(consistency),
        ttl_ms=ttl_ms(ttl),
    )


def delete_request(key: str, if_version: int | None, consistency: Level) -> kv_pb2.DeleteRequest:
    return kv_pb2.DeleteRequest(
        key=key,
        version=expected(if_version, if_absent=False),
        consistency=level(consistency),
    )


def entry(response: kv_pb2.GetResponse) -> Entry | None:
    """The entry a Get found, or None."""
    if not response.found:
        return None
    return Entry(response.value, response.version, response.expires_at_ms)


def multi_get_request(keys: Sequence[str], consistency: Level) -> kv_pb2.MultiGetRequest:
    return kv_pb2.MultiGetRequest(keys=list(keys), consistency=level(consistency))


def entries(keys: Sequence[str], response: kv_pb2.MultiGetResponse) -> dict[str, Entry | None]:
    """Each requested key with its entry, or None where it is absent."""
    return {key: entry(result) for key, result in zip(keys, response.results, strict=True)}


def multi_set_request(
    items: Mapping[str, bytes | str], ttl: float | None, consistency: Level
) -> kv_pb2.MultiSetRequest:
    ttl = ttl_ms(ttl)
    return kv_pb2.MultiSetRequest(
        entries=[
            kv_pb2.SetRequest(key=key, value=_bytes(value), ttl_ms=ttl)
            for key, value in items.items()
        ],
        consistency=level(consistency),
    )


def scan_request(
    prefix: str, cursor: bytes, limit: int, keys_only: bool, consistency: Level
) -> kv_pb2.ScanRequest:
    if limit < 0:
        raise InvalidArgument(f"a page limit must not be negative, got {limit}")
    return kv_pb2.ScanRequest(
        prefix=prefix,
        cursor=cursor,
        limit=limit,
        keys_only=keys_only,
        consistency=level(consistency),
    )


class ScanPager:
    """Where a scan of at most ``limit`` keys (None: all) has got to."""

    def __init__(self, limit: int | None) -> None:
        self.cursor = b""
        self.done = limit is not None and limit <= 0
        self._left = limit

    @property
    def page_limit(self) -> int:
        """The limit of the next page (0: the node's cap)."""
        return 0 if self._left is None else min(self._left, MAX_PAGE)

    def take(self, page: ScanPage) -> list[KeyEntry]:
        """A page's entries within the limit; moves on past the page."""
        entries = page.entries if self._left is None else page.entries[: self._left]
        if self._left is not None:
            self._left -= len(entries)
        self.cursor = page.next_cursor
        self.done = not page.next_cursor or self._left == 0
        return entries


def scan_page(response: kv_pb2.ScanResponse) -> ScanPage:
    return ScanPage(
        [KeyEntry(e.key, e.value, e.version, e.expires_at_ms) for e in response.entries],
        response.next_cursor,
    )


def _bytes(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else value
