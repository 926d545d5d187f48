"""The seed's membership API, service ``kv.Cluster``, and its additions.

``GetClusterState`` reports every member, its address, liveness and place in
the ring, the epoch and the token ranges a token-aware client routes by.
``Heartbeat`` and ``RequestVote`` carry the bully election (see
:mod:`ringkv.server.cluster.election_calls`); ``Join`` and ``RemoveNode`` change the
member table through the leader; ``Repair`` runs anti-entropy now.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar

import grpc

from ringkv.api import kv_pb2
from ringkv.api.status import error_info
from ringkv.core.errors import InvalidArgument, Unavailable
from ringkv.server.cluster.clock_guard import ClockGuard
from ringkv.server.cluster.cluster_view import ClusterView
from ringkv.server.cluster.election_calls import (
    heartbeat_answer_to_wire,
    heartbeat_from_wire,
    vote_answer_to_wire,
)
from ringkv.server.cluster.membership import MembershipManager
from ringkv.server.config import ConfigError, HostPort, validate_node_id
from ringkv.server.counters import Counters
from ringkv.server.data.anti_entropy import RepairSchedule
from ringkv.server.data.rebalance import Rebalancer
from ringkv.server.transport.peers import Peer
from ringkv.server.transport.rpc import Context, Method, PeerStatus, RelayedError
from ringkv.server.transport.wire import membership_to_wire
from ringkv.storage import Engine

T = TypeVar("T")
_RELAY_TIMEOUT_S = 5.0


class ClusterService:
    """Handlers of ``kv.Cluster``."""

    name = "kv.Cluster"

    def __init__(
        self,
        view: ClusterView,
        engine: Engine,
        counters: Counters,
        membership: MembershipManager,
        repairs: RepairSchedule,
        *,
        clock_guard: ClockGuard | None = None,
        member_port_offset: int = 0,
        rebalancer: Rebalancer | None = None,
    ) -> None:
        self._rebalancer = rebalancer
        self._clock_guard = clock_guard
        self._member_port_offset = member_port_offset
        self._counters = counters
        self._view = view
        self._engine = engine
        self._membership = membership
        self._repairs = repairs

    def methods(self) -> dict[str, Method]:
        return {
            "Heartbeat": Method(kv_pb2.HeartbeatRequest, self.heartbeat),
            "RequestVote": Method(kv_pb2.RequestVoteRequest, self.request_vote),
            "GetClusterState": Method(kv_pb2.GetClusterStateRequest, self.get_cluster_state),
            "GetNodeStats": Method(kv_pb2.GetNodeStatsRequest, self.get_node_stats),
            "Join": Method(kv_pb2.JoinRequest, self.join),
            "RemoveNode": Method(kv_pb2.RemoveNodeRequest, self.remove_node),
            "Repair": Method(kv_pb2.RepairRequest, self.repair),
        }

    async def heartbeat(
        self, request: kv_pb2.HeartbeatRequest, _: Context
    ) -> kv_pb2.HeartbeatResponse:
        answer = self._membership.heartbeat(heartbeat_from_wire(request))
        return heartbeat_answer_to_wire(answer)

    async def request_vote(
        self, request: kv_pb2.RequestVoteRequest, _: Context
    ) -> kv_pb2.RequestVoteResponse:
        answer = self._membership.request_vote(request.node_id, request.term)
        return vote_answer_to_wire(answer)

    async def join(self, request: kv_pb2.JoinRequest, _: Context) -> kv_pb2.JoinResponse:
        # Checked here, before any leader sees it: an id followers cannot
        # parse in a member table would make them refuse every heartbeat.
        try:
            validate_node_id(request.node_id)
            HostPort.parse(request.address, what="the joiner's address")
        except ConfigError as error:
            raise InvalidArgument(
                f"cannot admit {request.node_id!r}: {error}", reason="INVALID_MEMBER"
            ) from None
        table = self._membership.admit(request.node_id, request.address)
        if table is None:
            leader = self._leader()
            return await _relayed(leader.cluster.Join(request, timeout=_RELAY_TIMEOUT_S))
        return kv_pb2.JoinResponse(members=membership_to_wire(table, self._view.liveness))

    async def remove_node(
        self, request: kv_pb2.RemoveNodeRequest, _: Context
    ) -> kv_pb2.RemoveNodeResponse:
        table = self._membership.decommission(request.node_id)
        if table is None:
            leader = self._leader()
            return await _relayed(leader.cluster.RemoveNode(request, timeout=_RELAY_TIMEOUT_S))
        return kv_pb2.RemoveNodeResponse(members=membership_to_wire(table, self._view.liveness))

    def _leader(self) -> Peer:
        leader = self._view.peers.get(self._view.leader_id)
        if leader is None:
            raise Unavailable("no leader is elected yet; retry", reason="NO_LEADER")
        return leader

    async def repair(self, _request: kv_pb2.RepairRequest, _: Context) -> kv_pb2.RepairResponse:
        if self._view.epoch == 0:
            raise Unavailable("this node has not found its cluster yet", reason="NOT_READY")
        report = await self._repairs.run()
        return kv_pb2.RepairResponse(
            peers=report.peers,
            leaves_differing=report.leaves_differing,
            keys_pulled=report.keys_pulled,
            keys_pushed=report.keys_pushed,
            skipped=report.skipped,
            failed=report.failed,
        )

    async def get_cluster_state(
        self, request: kv_pb2.GetClusterStateRequest, _: Context
    ) -> kv_pb2.GetClusterStateResponse:
        self._membership.catch_up()
        view = self._view
        ring = view.ring
        addresses = view.membership.addresses
        table = membership_to_wire(view.membership, view.liveness)
        return kv_pb2.GetClusterStateResponse(
            node_ids=list(ring.nodes),
            addresses=[addresses[node] for node in ring.nodes],
            leader_id=view.leader_id,
            term=view.term,
            epoch=view.epoch,
            replicas=view.replicas,
            vnodes=ring.vnodes_per_node,
            members=table.members,
            ranges=[]
            if request.omit_ranges
            else [
                kv_pb2.TokenRange(start=r.start, last=r.end - 1, replicas=list(r.replicas))
                for r in view.ranges
            ],
            table=table,
            member_port_offset=self._member_port_offset,
        )

    async def get_node_stats(
        self, _request: kv_pb2.GetNodeStatsRequest, _: Context
    ) -> kv_pb2.GetNodeStatsResponse:
        stats = self._engine.stats()
        rebalancer = self._rebalancer
        progress = rebalancer.progress if rebalancer is not None else None
        clock = self._clock_guard.check() if self._clock_guard is not None else None
        return kv_pb2.GetNodeStatsResponse(
            node_id=self._view.node_id,
            records=stats.records,
            bytes_used=stats.bytes_used,
            epoch=self._view.epoch,
            forwarded_writes=self._counters.forwarded_writes,
            read_repairs=self._counters.read_repairs,
            hints_pending=stats.hints,
            hints_replayed=self._counters.hints_replayed,
            leader_id=self._view.leader_id,
            term=self._view.term,
            synced_epoch=self._membership.synced_epoch,
            ranges_to_pull=progress.ranges_total if progress else 0,
            ranges_pulled=progress.ranges_done if progress else 0,
            records_pulled=progress.records if progress else 0,
            repair_rounds=self._counters.repair_rounds,
            keys_repaired=self._counters.keys_repaired,
            tombstones_purged=self._counters.tombstones_purged,
            clock_check=clock.verdict.value if clock is not None else "",
            clock_offset_ms=round(clock.offset_ms) if clock is not None else 0,
        )


async def _relayed(call: Awaitable[T]) -> T:
    """The leader's answer to a request passed on to it; its error, passed back unchanged.

    A leader that cannot be reached is UNAVAILABLE (retry, perhaps elsewhere),
    not an internal error of this node.
    """
    try:
        return await call
    except grpc.aio.AioRpcError as error:
        if error_info(error.trailing_metadata()) is None:
            raise Unavailable(
                f"the leader cannot be reached: {error.code().name}", reason="NO_LEADER"
            ) from None
        raise RelayedError(PeerStatus.of_call(error)) from None
