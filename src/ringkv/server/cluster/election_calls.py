"""The election's messages as the seed's ``Heartbeat`` and ``RequestVote`` calls.

Both directions: :class:`ElectionCalls` sends what the election wants sent and
turns the answers back into election messages; the ``*_from_wire`` and
``*_to_wire`` functions are the Cluster service's side of the same calls.
Every heartbeat carries the sender's member table, and every answer the
responder's synced epoch and, when newer, its table: the leader learns who
has pulled its ranges, followers each new epoch within a heartbeat.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import grpc

from ringkv.api import kv_pb2
from ringkv.core.election import (
    Answer,
    Coordinator,
    CoordinatorAck,
    Election,
    Envelope,
    Heartbeat,
    HeartbeatAck,
)
from ringkv.core.membership import Liveness, Membership
from ringkv.server.transport.peers import Peer
from ringkv.server.transport.wire import (
    liveness_from_wire,
    membership_from_wire,
    membership_to_wire,
)


@dataclass(frozen=True)
class ReceivedHeartbeat:
    """A leader's heartbeat (``claim`` false) or a claim to a term."""

    sender: str
    term: int
    claim: bool
    table: Membership | None
    liveness: dict[str, Liveness]
    sent_wall_ms: int

    @property
    def message(self) -> Heartbeat | Coordinator:
        return (Coordinator if self.claim else Heartbeat)(self.sender, self.term)


@dataclass(frozen=True)
class HeartbeatAnswer:
    node_id: str
    term: int
    accepted: bool
    synced_epoch: int
    epoch: int
    """Of the responder's table, after the heartbeat's was offered to it."""
    table: Membership | None
    """The responder's table, when newer than the heartbeat's."""
    liveness: Mapping[str, Liveness] = field(default_factory=dict)


@dataclass(frozen=True)
class VoteAnswer:
    node_id: str
    term: int
    granted: bool
    """False stands for the bully's Answer: "I am alive and will take over"."""
    table: Membership | None
    """The responder's table, to a candidate it does not count as a member."""
    liveness: Mapping[str, Liveness] = field(default_factory=dict)


def heartbeat_from_wire(request: kv_pb2.HeartbeatRequest) -> ReceivedHeartbeat:
    return ReceivedHeartbeat(
        sender=request.node_id,
        term=request.term,
        claim=request.claim,
        table=membership_from_wire(request.members),
        liveness=liveness_from_wire(request.members),
        sent_wall_ms=request.sent_wall_ms,
    )


def heartbeat_answer_to_wire(answer: HeartbeatAnswer) -> kv_pb2.HeartbeatResponse:
    return kv_pb2.HeartbeatResponse(
        term=answer.term,
        accepted=answer.accepted,
        node_id=answer.node_id,
        synced_epoch=answer.synced_epoch,
        epoch=answer.epoch,
        members=_table_to_wire(answer.table, answer.liveness),
    )


def vote_answer_to_wire(answer: VoteAnswer) -> kv_pb2.RequestVoteResponse:
    return kv_pb2.RequestVoteResponse(
        term=answer.term,
        vote_granted=answer.granted,
        node_id=answer.node_id,
        members=_table_to_wire(answer.table, answer.liveness),
    )


def _table_to_wire(
    table: Membership | None, liveness: Mapping[str, Liveness]
) -> kv_pb2.MemberTable | None:
    """An answer's table, if it carries one (none leaves the field unset)."""
    return None if table is None else membership_to_wire(table, liveness)


class ElectionHost(Protocol):
    """What the sender reports the answers to (the membership manager)."""

    def heard(self, node_id: str) -> None:
        """The node answered a vote request: it is alive."""

    def answered(self, node_id: str, *, synced: int, adopted: int) -> None:
        """The node answered a heartbeat, holding these epochs."""

    def offer(self, table: Membership | None) -> None:
        """A table an answer carried."""

    def receive(self, message: Answer | HeartbeatAck | CoordinatorAck) -> None:
        """The election's reply to one of its messages."""


class ElectionCalls:
    """Sends the election's messages to peers and feeds their answers back."""

    def __init__(
        self,
        node_id: str,
        address: str,
        host: ElectionHost,
        *,
        timeout_s: float,
        table: Callable[[], kv_pb2.MemberTable],
        wall_ms: Callable[[], int],
    ) -> None:
        self._node_id = node_id
        self._address = address
        self._host = host
        # Late replies are harmless (the election ignores stale ones), while a
        # deadline as short as the answer timeout loses every reply on a
        # loaded node and leaves the cluster without a leader.
        self._timeout_s = timeout_s
        self._table = table
        """This node's member table and liveness, as every heartbeat carries them."""
        self._wall_ms = wall_ms

    async def send(self, peer: Peer, envelope: Envelope) -> None:
        """One message; a call that fails is a lost message."""
        message = envelope.message
        try:
            if isinstance(message, Election):
                await self._request_vote(peer, message)
            elif isinstance(message, Heartbeat | Coordinator):
                await self._heartbeat(peer, message)
        except grpc.aio.AioRpcError:
            return

    async def _request_vote(self, peer: Peer, message: Election) -> None:
        vote = await peer.cluster.RequestVote(
            kv_pb2.RequestVoteRequest(node_id=self._node_id, term=message.term),
            timeout=self._timeout_s,
        )
        self._host.heard(peer.node_id)
        self._host.offer(membership_from_wire(vote.members))
        if not vote.vote_granted:
            self._host.receive(Answer(vote.node_id or peer.node_id, vote.term))

    async def _heartbeat(self, peer: Peer, message: Heartbeat | Coordinator) -> None:
        response = await peer.cluster.Heartbeat(
            kv_pb2.HeartbeatRequest(
                node_id=self._node_id,
                address=self._address,
                term=message.term,
                is_leader=True,
                claim=isinstance(message, Coordinator),
                members=self._table(),
                sent_wall_ms=self._wall_ms(),
            ),
            timeout=self._timeout_s,
        )
        sender = response.node_id or peer.node_id
        self._host.answered(sender, synced=response.synced_epoch, adopted=response.epoch)
        self._host.offer(membership_from_wire(response.members))
        reply = HeartbeatAck if isinstance(message, Heartbeat) else CoordinatorAck
        self._host.receive(reply(sender, response.term, response.accepted, message.sent_ms))
