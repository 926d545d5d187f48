"""The seed's membership API, service ``kv.Cluster``.

``GetClusterState`` reports every member, its address and state, the ring's
epoch and token ranges: what a token-aware client routes by. Until the bully
election lands, the leader reported is the member it will pick (the highest
id among those alive) and the term stays 0; Heartbeat and RequestVote answer
without changing anything.
"""

from __future__ import annotations

from collections.abc import Mapping

from ringkv.api import kv_pb2
from ringkv.server.cluster_view import ClusterView
from ringkv.server.counters import Counters
from ringkv.server.rpc import Context, Method
from ringkv.storage import Engine


class ClusterService:
    """Handlers of ``kv.Cluster``."""

    name = "kv.Cluster"

    def __init__(
        self,
        view: ClusterView,
        engine: Engine,
        counters: Counters,
        address: str,
        peer_addresses: Mapping[str, str],
    ) -> None:
        self._counters = counters
        self._view = view
        self._engine = engine
        self._addresses = {view.node_id: address, **peer_addresses}
        self._term = 0

    def methods(self) -> dict[str, Method]:
        return {
            "Heartbeat": Method(kv_pb2.HeartbeatRequest, self.heartbeat),
            "RequestVote": Method(kv_pb2.RequestVoteRequest, self.request_vote),
            "GetClusterState": Method(kv_pb2.GetClusterStateRequest, self.get_cluster_state),
            "GetNodeStats": Method(kv_pb2.GetNodeStatsRequest, self.get_node_stats),
        }

    async def heartbeat(
        self, _request: kv_pb2.HeartbeatRequest, _: Context
    ) -> kv_pb2.HeartbeatResponse:
        return kv_pb2.HeartbeatResponse(term=self._term, accepted=False)

    async def request_vote(
        self, _request: kv_pb2.RequestVoteRequest, _: Context
    ) -> kv_pb2.RequestVoteResponse:
        return kv_pb2.RequestVoteResponse(term=self._term, vote_granted=False)

    async def get_cluster_state(
        self, _request: kv_pb2.GetClusterStateRequest, _: Context
    ) -> kv_pb2.GetClusterStateResponse:
        view = self._view
        ring = view.ring
        node_ids = list(ring.nodes)
        alive = [node for node in node_ids if view.is_live(node)]
        return kv_pb2.GetClusterStateResponse(
            node_ids=node_ids,
            addresses=[self._addresses[node] for node in node_ids],
            leader_id=max(alive),
            term=self._term,
            epoch=ring.epoch,
            replicas=view.replicas,
            vnodes=ring.vnodes_per_node,
            members=[
                kv_pb2.Member(
                    node_id=node,
                    address=self._addresses[node],
                    state="alive" if view.is_live(node) else "down",
                )
                for node in node_ids
            ],
            ranges=[
                kv_pb2.TokenRange(start=r.start, last=r.end - 1, replicas=list(r.replicas))
                for r in ring.ranges(view.replicas)
            ],
        )

    async def get_node_stats(
        self, _request: kv_pb2.GetNodeStatsRequest, _: Context
    ) -> kv_pb2.GetNodeStatsResponse:
        stats = self._engine.stats()
        return kv_pb2.GetNodeStatsResponse(
            node_id=self._view.node_id,
            records=stats.records,
            bytes_used=stats.bytes_used,
            epoch=self._view.ring.epoch,
            forwarded_writes=self._counters.forwarded_writes,
            read_repairs=self._counters.read_repairs,
            hints_pending=stats.hints,
            hints_replayed=self._counters.hints_replayed,
        )
