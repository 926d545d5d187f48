"""Cluster operations: members, ring and per-node storage; decommission; repair."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from ringkv.api import kv_pb2, kv_pb2_grpc
from ringkv.client.channels import endpoint_list
from ringkv.client.errors import from_rpc_error
from ringkv.core.errors import Unavailable


@dataclass(frozen=True, slots=True)
class Member:
    node_id: str
    address: str
    state: str
    """"alive", "suspect" or "dead", from the leader's heartbeats."""
    status: str = "normal"
    """"joining", "normal" or "leaving": the member's place in the ring."""


@dataclass(frozen=True, slots=True)
class ClusterState:
    """The cluster as one node sees it."""

    answered_by: str
    """The endpoint that answered."""
    members: list[Member]
    leader_id: str
    term: int
    epoch: int
    replicas: int
    vnodes: int
    ownership: dict[str, float]
    """Fraction of the token space each node replicates."""


@dataclass(frozen=True, slots=True)
class NodeStats:
    node_id: str
    records: int
    bytes_used: int
    epoch: int
    forwarded_writes: int
    read_repairs: int
    hints_pending: int
    hints_replayed: int
    leader_id: str = ""
    term: int = 0
    synced_epoch: int = 0
    ranges_to_pull: int = 0
    ranges_pulled: int = 0
    records_pulled: int = 0
    repair_rounds: int = 0
    keys_repaired: int = 0
    tombstones_purged: int = 0


@dataclass(frozen=True, slots=True)
class RepairReport:
    """What one node's anti-entropy round found and fixed."""

    node_id: str
    peers: int
    leaves_differing: int
    keys_pulled: int
    keys_pushed: int


def cluster_state(endpoints: str | Sequence[str], *, timeout: float = 2.0) -> ClusterState:
    """Ask the endpoints in turn until one describes the cluster."""
    errors = []
    for endpoint in endpoint_list(endpoints):
        with grpc.insecure_channel(endpoint) as channel:
            try:
                state = kv_pb2_grpc.ClusterStub(channel).GetClusterState(
                    kv_pb2.GetClusterStateRequest(), timeout=timeout
                )
            except grpc.RpcError as error:
                errors.append(f"{endpoint}: {from_rpc_error(error).message}")
                continue
        ownership: dict[str, float] = dict.fromkeys(state.node_ids, 0.0)
        for token_range in state.ranges:
            width = (token_range.last - token_range.start + 1) / 2**64
            for node in token_range.replicas:
                ownership[node] += width
        return ClusterState(
            answered_by=endpoint,
            members=[Member(m.node_id, m.address, m.state, m.status) for m in state.members],
            leader_id=state.leader_id,
            term=state.term,
            epoch=state.epoch,
            replicas=state.replicas,
            vnodes=state.vnodes,
            ownership=ownership,
        )
    raise Unavailable("no endpoint answered: " + "; ".join(errors))


def node_stats(address: str, *, timeout: float = 2.0) -> NodeStats:
    """What the node at ``address`` stores, and where its rebalancing and repair stand."""
    stats = _call(address, "GetNodeStats", kv_pb2.GetNodeStatsRequest(), timeout)
    return NodeStats(
        stats.node_id,
        stats.records,
        stats.bytes_used,
        stats.epoch,
        stats.forwarded_writes,
        stats.read_repairs,
        stats.hints_pending,
        stats.hints_replayed,
        stats.leader_id,
        stats.term,
        stats.synced_epoch,
        stats.ranges_to_pull,
        stats.ranges_pulled,
        stats.records_pulled,
        stats.repair_rounds,
        stats.keys_repaired,
        stats.tombstones_purged,
    )


def remove_node(endpoints: str | Sequence[str], node_id: str, *, timeout: float = 10.0) -> int:
    """Start decommissioning ``node_id`` (through whichever endpoint answers); the new epoch."""
    errors = []
    for endpoint in endpoint_list(endpoints):
        try:
            response = _call(
                endpoint, "RemoveNode", kv_pb2.RemoveNodeRequest(node_id=node_id), timeout
            )
        except Unavailable as error:
            errors.append(f"{endpoint}: {error.message}")
            continue
        return int(response.members.epoch)
    raise Unavailable("no endpoint could remove the node: " + "; ".join(errors))


def repair(address: str, *, timeout: float = 300.0) -> RepairReport:
    """Run one anti-entropy round on the node at ``address`` against its replicas."""
    stats = _call(address, "GetNodeStats", kv_pb2.GetNodeStatsRequest(), timeout)
    report = _call(address, "Repair", kv_pb2.RepairRequest(), timeout)
    return RepairReport(
        stats.node_id, report.peers, report.leaves_differing, report.keys_pulled, report.keys_pushed
    )


def _call(address: str, method: str, request: Any, timeout: float) -> Any:
    """One unary call of ``kv.Cluster``, with errors turned into ringkv's."""
    with grpc.insecure_channel(address) as channel:
        stub = kv_pb2_grpc.ClusterStub(channel)
        try:
            return getattr(stub, method)(request, timeout=timeout)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
