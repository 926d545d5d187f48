"""One replica's page of a token span, the unit of every range scan.

Served to peers (``Replica.Scan``: joins pulling ranges, anti-entropy
comparing keys, client scans) and read locally when the coordinator of a
client scan is a replica of the range itself.
"""

from __future__ import annotations

import struct

from ringkv.core.errors import InvalidArgument
from ringkv.core.records import Record
from ringkv.core.tokens import token_of
from ringkv.storage import Engine

PAGE_RECORDS = 1000
"""The most records a page holds, whatever the caller asks for."""
PAGE_BYTES = 4 << 20
"""A page is cut once its keys and values pass this many bytes: 1000 values
at the 1 MiB value limit would not fit in one message."""
PAGE_EXAMINED = 10_000
"""A page of a prefix ends once it has looked at this many records, so that
a prefix few keys have does not read a whole span in one call."""
# A cursor is the last token of the page before.
_CURSOR = struct.Struct(">Q")


def encode_cursor(last_token: int | None) -> bytes:
    """The cursor that resumes after ``last_token``; empty (done) for None."""
    return b"" if last_token is None else _CURSOR.pack(last_token)


def decode_cursor(cursor: bytes) -> int | None:
    """The token a cursor resumes after; None for the empty cursor."""
    if not cursor:
        return None
    if len(cursor) != _CURSOR.size:
        raise InvalidArgument("malformed scan cursor", reason="MALFORMED_CURSOR")
    (last,) = _CURSOR.unpack(cursor)
    return int(last)


def scan_page(
    engine: Engine, start: int, end: int, limit: int, prefix: bytes = b""
) -> tuple[list[Record], int | None]:
    """Up to ``limit`` records from ``start`` (keys under ``prefix`` only),
    and the token to resume after (None when the span is done).

    A page ends only where the token changes, so resuming after a token
    loses nothing even though keys that share a token are not in key order
    (the LMDB engine orders long keys by their digest).
    """
    limit = min(limit or PAGE_RECORDS, PAGE_RECORDS)
    records: list[Record] = []
    size = 0
    last: int | None = None
    for examined, record in enumerate(engine.scan(start, end)):
        token = token_of(record.key)
        full = len(records) >= limit or size >= PAGE_BYTES or examined >= PAGE_EXAMINED
        if full and token != last:
            return records, last
        last = token
        if record.key.startswith(prefix):
            records.append(record)
            size += len(record.key) + len(record.value)
    return records, None
