"""How records are laid out as bytes: (token, key) keys and versioned values.

An engine key is the key's big-endian token followed by the key, so a token
range is one contiguous cursor scan. LMDB keys are at most 511 bytes, while
ringkv keys may have 4096: a key longer than ``INLINE_KEY_BYTES`` is stored
under its token, a 0xFF marker and a BLAKE2b digest, with the whole key kept
in the value. 0xFF never occurs in UTF-8, so the two forms cannot collide.
"""

from __future__ import annotations

import hashlib
import struct

from ringkv.core.hlc import Version
from ringkv.core.paxos import AcceptorState, Ballot, Proposal
from ringkv.core.records import Record
from ringkv.core.tokens import MAX_TOKEN, token_of

INLINE_KEY_BYTES = 256
_DIGEST_MARKER = b"\xff"
_TOKEN = struct.Struct(">Q")
_KEY_LENGTH = struct.Struct(">H")
# flags, version timestamp, expiry, length of the version's node id
_HEADER = struct.Struct(">BqqH")
_TOMBSTONE = 0x01
_KEY_IN_VALUE = 0x02


def _key_part(key: bytes) -> bytes:
    if len(key) <= INLINE_KEY_BYTES:
        return key
    return _DIGEST_MARKER + hashlib.blake2b(key, digest_size=32).digest()


def storage_key(key: bytes) -> bytes:
    """The engine key of ``key``: its token, then the key (or its digest)."""
    return _TOKEN.pack(token_of(key)) + _key_part(key)


def hint_prefix(key: bytes) -> bytes:
    """The common prefix of the hints for ``key``, whatever node each is for."""
    part = _key_part(key)
    return _TOKEN.pack(token_of(key)) + _KEY_LENGTH.pack(len(part)) + part


def hint_key(key: bytes, node_id: str) -> bytes:
    """The engine key of a hint: the key's prefix, then the node it is held for."""
    return hint_prefix(key) + node_id.encode("utf-8")


def token_bound(token: int) -> bytes:
    """The smallest engine key whose token is ``token`` (clamped to the token space)."""
    return _TOKEN.pack(min(max(token, 0), MAX_TOKEN))


def stored_user_key(stored_key: bytes, data: bytes | memoryview) -> bytes:
    """The key of a stored record, from its engine key or, if long, its value."""
    if data[0] & _KEY_IN_VALUE:
        (length,) = _KEY_LENGTH.unpack_from(data, _HEADER.size)
        start = _HEADER.size + _KEY_LENGTH.size
        return bytes(data[start : start + length])
    return bytes(stored_key[_TOKEN.size :])


def hint_parts(stored_key: bytes, data: bytes | memoryview) -> tuple[bytes, str]:
    """The key and the node a stored hint is for."""
    (part_length,) = _KEY_LENGTH.unpack_from(stored_key, _TOKEN.size)
    node_start = _TOKEN.size + _KEY_LENGTH.size + part_length
    node_id = bytes(stored_key[node_start:]).decode("utf-8")
    if data[0] & _KEY_IN_VALUE:
        return stored_user_key(stored_key, data), node_id
    return bytes(stored_key[_TOKEN.size + _KEY_LENGTH.size : node_start]), node_id


def encode_record(record: Record) -> bytes:
    """The stored form of a record's version, flags, expiry and value."""
    node = record.version.node_id.encode("utf-8")
    long_key = len(record.key) > INLINE_KEY_BYTES
    flags = (_TOMBSTONE if record.tombstone else 0) | (_KEY_IN_VALUE if long_key else 0)
    header = _HEADER.pack(flags, record.version.timestamp, record.expires_at_ms, len(node))
    key = _KEY_LENGTH.pack(len(record.key)) + record.key if long_key else b""
    return header + key + node + record.value


def decode_record(key: bytes, data: bytes | memoryview) -> Record:
    """The record stored under ``key`` (the user key) as ``data``."""
    flags, timestamp, expires_at_ms, node_len = _HEADER.unpack_from(data)
    start = _HEADER.size
    if flags & _KEY_IN_VALUE:
        (key_len,) = _KEY_LENGTH.unpack_from(data, start)
        start += _KEY_LENGTH.size + key_len
    node_id = bytes(data[start : start + node_len]).decode("utf-8")
    return Record(
        key=key,
        value=bytes(data[start + node_len :]),
        version=Version(timestamp, node_id),
        tombstone=bool(flags & _TOMBSTONE),
        expires_at_ms=expires_at_ms,
    )


# Which parts of a Paxos acceptor state are present.
_PROMISED, _ACCEPTED, _COMMITTED = 0x01, 0x02, 0x04
_BALLOT = struct.Struct(">qH")
_RECORD_LENGTH = struct.Struct(">I")


def _encode_ballot(ballot: Ballot) -> bytes:
    node = ballot.node_id.encode("utf-8")
    return _BALLOT.pack(ballot.timestamp, len(node)) + node


def _decode_ballot(data: bytes | memoryview, start: int) -> tuple[Ballot, int]:
    timestamp, node_len = _BALLOT.unpack_from(data, start)
    start += _BALLOT.size
    node_id = bytes(data[start : start + node_len]).decode("utf-8")
    return Ballot(timestamp, node_id), start + node_len


def encode_acceptor_state(state: AcceptorState) -> bytes:
    """The stored form of a key's Paxos acceptor state."""
    flags = (
        (_PROMISED if state.promised is not None else 0)
        | (_ACCEPTED if state.accepted is not None else 0)
        | (_COMMITTED if state.committed is not None else 0)
    )
    parts = [bytes([flags])]
    if state.promised is not None:
        parts.append(_encode_ballot(state.promised))
    if state.committed is not None:
        parts.append(_encode_ballot(state.committed))
    if state.accepted is not None:
        record = encode_record(state.accepted.record)
        parts += [_encode_ballot(state.accepted.ballot), _RECORD_LENGTH.pack(len(record)), record]
    return b"".join(parts)


def decode_acceptor_state(key: bytes, data: bytes | memoryview) -> AcceptorState:
    """The acceptor state stored for ``key`` (the user key) as ``data``."""
    flags, start = data[0], 1
    promised = committed = accepted = None
    if flags & _PROMISED:
        promised, start = _decode_ballot(data, start)
    if flags & _COMMITTED:
        committed, start = _decode_ballot(data, start)
    if flags & _ACCEPTED:
        ballot, start = _decode_ballot(data, start)
        (length,) = _RECORD_LENGTH.unpack_from(data, start)
        start += _RECORD_LENGTH.size
        accepted = Proposal(ballot, decode_record(key, data[start : start + length]))
    return AcceptorState(promised, accepted, committed)
