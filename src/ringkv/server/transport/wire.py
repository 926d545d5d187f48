"""Core values on the wire: records and Paxos messages (ringkv.internal), member
tables (kv.Cluster)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from google.protobuf.internal.containers import RepeatedCompositeFieldContainer

from ringkv.api import kv_pb2, replica_pb2
from ringkv.core.errors import InvalidArgument
from ringkv.core.hlc import Version
from ringkv.core.membership import REMOVED_KEPT, Liveness, Member, Membership, MemberStatus
from ringkv.core.paxos import Ballot, Promise, Proposal
from ringkv.core.records import Record
from ringkv.server.config import validate_node_id


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


def add_records(
    container: RepeatedCompositeFieldContainer[replica_pb2.Record], records: Iterable[Record]
) -> None:
    """Append records to a message's repeated field, each built in place:
    ``record_to_wire`` builds one apart, which the field then copies."""
    add = container.add
    for record in records:
        version = add(
            key=record.key,
            value=record.value,
            tombstone=record.tombstone,
            expires_at_ms=record.expires_at_ms,
        ).version
        version.timestamp = record.version.timestamp
        version.node_id = record.version.node_id


def record_from_wire(message: replica_pb2.Record) -> Record:
    return Record(
        key=message.key,
        value=message.value,
        version=Version(message.version.timestamp, message.version.node_id),
        tombstone=message.tombstone,
        expires_at_ms=message.expires_at_ms,
    )


def membership_to_wire(
    membership: Membership, liveness: Mapping[str, Liveness]
) -> kv_pb2.MemberTable:
    return kv_pb2.MemberTable(
        epoch=membership.epoch,
        term=membership.term,
        members=[
            kv_pb2.Member(
                node_id=m.node_id,
                address=m.address,
                state=liveness.get(m.node_id, Liveness.ALIVE).value,
                status=m.status.value,
            )
            for m in membership.members
        ],
        removed=membership.removed,
    )


def membership_from_wire(table: kv_pb2.MemberTable) -> Membership | None:
    """The member table sent, or None when the message carries none (epoch 0).

    Raises InvalidArgument for a table no leader could have made.
    """
    if table.epoch <= 0:
        return None
    members = []
    for m in table.members:
        try:
            validate_node_id(m.node_id)
            status = MemberStatus(m.status)
        except ValueError as error:
            raise InvalidArgument(f"bad member table: {error}") from None
        members.append(Member(m.node_id, m.address, status))
    ids = [m.node_id for m in members]
    if not ids or len(set(ids)) != len(ids) or table.term < 0:
        raise InvalidArgument("bad member table: no members, a member twice or a negative term")
    if len(table.removed) > REMOVED_KEPT or set(table.removed) & set(ids):
        raise InvalidArgument("bad member table: too many removed ids, or a member among them")
    for node_id in table.removed:
        try:
            validate_node_id(node_id)
        except ValueError as error:
            raise InvalidArgument(f"bad member table: {error}") from None
    return Membership(
        table.epoch,
        tuple(sorted(members, key=lambda m: m.node_id)),
        table.term,
        tuple(table.removed),
    )


def liveness_from_wire(table: kv_pb2.MemberTable) -> dict[str, Liveness]:
    states = {state.value for state in Liveness}
    return {m.node_id: Liveness(m.state) for m in table.members if m.state in states}


def ballot_to_wire(ballot: Ballot) -> replica_pb2.Ballot:
    return replica_pb2.Ballot(timestamp=ballot.timestamp, node_id=ballot.node_id)


def ballot_from_wire(message: replica_pb2.Ballot) -> Ballot:
    return Ballot(message.timestamp, message.node_id)


def proposal_to_wire(proposal: Proposal) -> replica_pb2.Proposal:
    return replica_pb2.Proposal(
        ballot=ballot_to_wire(proposal.ballot), record=record_to_wire(proposal.record)
    )


def proposal_from_wire(message: replica_pb2.Proposal) -> Proposal:
    return Proposal(ballot_from_wire(message.ballot), record_from_wire(message.record))


def promise_to_wire(promise: Promise) -> replica_pb2.PrepareResponse:
    response = replica_pb2.PrepareResponse(granted=promise.granted)
    if promise.promised is not None:
        response.promised.CopyFrom(ballot_to_wire(promise.promised))
    if promise.accepted is not None:
        response.accepted.CopyFrom(proposal_to_wire(promise.accepted))
    if promise.committed is not None:
        response.committed.CopyFrom(ballot_to_wire(promise.committed))
    if promise.current is not None:
        response.current.CopyFrom(record_to_wire(promise.current))
    return response


def promise_from_wire(message: replica_pb2.PrepareResponse) -> Promise:
    return Promise(
        granted=message.granted,
        promised=ballot_from_wire(message.promised) if message.HasField("promised") else None,
        accepted=proposal_from_wire(message.accepted) if message.HasField("accepted") else None,
        committed=ballot_from_wire(message.committed) if message.HasField("committed") else None,
        current=record_from_wire(message.current) if message.HasField("current") else None,
    )
