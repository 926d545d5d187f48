"""Scans of the key space: cursors, and merging one range's pages from replicas.

Keys are placed by token, so a scan walks the token space in order, one
range of equal replicas at a time. Its position is a token: every key of
every token up to it has been looked at. Replica pages never split the keys
of one token (``ringkv.api.replica``'s Scan), so "resume after token t"
neither repeats nor skips a key, whichever replica serves the next page and
whatever the ring looks like by then.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from ringkv.core.errors import InvalidArgument
from ringkv.core.records import Record
from ringkv.core.tokens import token_of

_CURSOR = struct.Struct(">BQ")
_CURSOR_FORMAT = 1


def encode_cursor(last_token: int) -> bytes:
    """A client cursor that resumes after ``last_token``."""
    return _CURSOR.pack(_CURSOR_FORMAT, last_token)


def decode_cursor(cursor: bytes) -> int | None:
    """The token a client cursor resumes after; None for the empty cursor
    (the start of the scan)."""
    if not cursor:
        return None
    if len(cursor) != _CURSOR.size or cursor[0] != _CURSOR_FORMAT:
        raise InvalidArgument(
            "malformed scan cursor: pass back a next_cursor as it was given",
            reason="MALFORMED_CURSOR",
        )
    _, token = _CURSOR.unpack(cursor)
    return int(token)


@dataclass(frozen=True, slots=True)
class ReplicaPage:
    """One replica's page of a token span."""

    records: Sequence[Record]
    """In token order; tombstones and expired values included."""
    covered_to: int
    """The last token the page covers: the replica holds nothing else in
    the span up to it (the span's last token when the replica is done)."""


def merge_pages(pages: Sequence[ReplicaPage]) -> tuple[list[Record], int]:
    """The newest version of each key the pages hold, up to the last token
    all of them cover, in (token, key) order; and that token.

    A key past it may be on one replica's page and not yet on another's,
    whose newer version (a tombstone, say) would come with its next page:
    it waits for the next round, which resumes after the returned token.
    """
    if not pages:
        raise ValueError("merging no pages")
    covered_to = min(page.covered_to for page in pages)
    newest: dict[bytes, tuple[int, Record]] = {}
    for page in pages:
        for record in page.records:
            token = token_of(record.key)
            if token > covered_to:
                continue
            held = newest.get(record.key)
            if held is None or record.version > held[1].version:
                newest[record.key] = (token, record)
    ordered = sorted(newest.values(), key=lambda item: (item[0], item[1].key))
    return [record for _, record in ordered], covered_to


def take_visible(
    merged: Sequence[Record], covered_to: int, now_ms: int, max_records: int, max_bytes: int
) -> tuple[list[Record], int]:
    """The records of ``merged`` a read at ``now_ms`` sees (no tombstones,
    no expired values), at most ``max_records`` of them and about
    ``max_bytes`` of keys and values (the keys of one token are never split,
    so a little more when tokens collide); and the last token they cover.
    """
    if max_records < 1 or max_bytes < 1:
        raise ValueError("a page must have room for a record")
    taken: list[Record] = []
    size = 0
    last = -1
    for record in merged:
        token = token_of(record.key)
        # Never true for the first record: the bounds leave room for one.
        if (len(taken) >= max_records or size >= max_bytes) and token != last:
            return taken, last
        last = token
        if record.is_live(now_ms):
            taken.append(record)
            size += len(record.key) + len(record.value)
    return taken, covered_to
