"""Records on the internal wire: core records to and from ringkv.internal messages."""

from __future__ import annotations

from ringkv.api import replica_pb2
from ringkv.core.hlc import Version
from ringkv.core.records import Record


def record_to_wire(record: Record) -> replica_pb2.Record:
    return replica_pb2.Record(
        key=record.key,
        value=record.value,
        version=replica_pb2.Version(
            timestamp=record.version.timestamp, node_id=record.version.node_id
        ),
        tombstone=record.tombstone,
        expires_at_ms=record.expires_at_ms,
    )


def record_from_wire(message: replica_pb2.Record) -> Record:
    return Record(
        key=message.key,
        value=message.value,
        version=Version(message.version.timestamp, message.version.node_id),
        tombstone=message.tombstone,
        expires_at_ms=message.expires_at_ms,
    )
