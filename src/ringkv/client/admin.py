"""Cluster introspection for operators: members, ring and per-node storage."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

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
    """"alive" or "down", as seen by the node that answered."""


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
            members=[Member(m.node_id, m.address, m.state) for m in state.members],
            leader_id=state.leader_id,
            term=state.term,
            epoch=state.epoch,
            replicas=state.replicas,
            vnodes=state.vnodes,
            ownership=ownership,
        )
    raise Unavailable("no endpoint answered: " + "; ".join(errors))


def node_stats(address: str, *, timeout: float = 2.0) -> NodeStats:
    """What the node at ``address`` stores."""
    with grpc.insecure_channel(address) as channel:
        try:
            stats = kv_pb2_grpc.ClusterStub(channel).GetNodeStats(
                kv_pb2.GetNodeStatsRequest(), timeout=timeout
            )
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
    return NodeStats(
        stats.node_id,
        stats.records,
        stats.bytes_used,
        stats.epoch,
        stats.forwarded_writes,
        stats.read_repairs,
        stats.hints_pending,
        stats.hints_replayed,
    )
