"""The seed's membership API, service ``kv.Cluster``.

A node without a cluster is a cluster of one: it is its own leader at term 0.
It answers the seed's heartbeats and votes without joining anything; the
membership issue gives these RPCs their real work.
"""

from __future__ import annotations

from ringkv.api import kv_pb2
from ringkv.server.rpc import Context, Method


class ClusterService:
    """Handlers of ``kv.Cluster`` for a standalone node."""

    name = "kv.Cluster"

    def __init__(self, node_id: str, address: str) -> None:
        self._node_id = node_id
        self._address = address
        self._term = 0

    def methods(self) -> dict[str, Method]:
        return {
            "Heartbeat": Method(kv_pb2.HeartbeatRequest, self.heartbeat),
            "RequestVote": Method(kv_pb2.RequestVoteRequest, self.request_vote),
            "GetClusterState": Method(kv_pb2.GetClusterStateRequest, self.get_cluster_state),
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
        return kv_pb2.GetClusterStateResponse(
            node_ids=[self._node_id],
            addresses=[self._address],
            leader_id=self._node_id,
            term=self._term,
        )
