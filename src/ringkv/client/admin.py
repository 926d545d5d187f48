"""Cluster operations: members, ring and per-node storage; decommission; repair;
backups of one node."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import grpc

from ringkv.api import admin_pb2, admin_pb2_grpc, kv_pb2, kv_pb2_grpc
from ringkv.api.member_port import member_address
from ringkv.client.channels import PLAINTEXT, Security, endpoint_list
from ringkv.client.errors import from_rpc_error
from ringkv.core.errors import InternalError, InvalidArgument, Unauthenticated, Unavailable
from ringkv.storage.files import create_private, publish
from ringkv.storage.snapshot import manifest_path


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
    member_port_offset: int = 0
    """Members' member ports are their ports plus this (0: they share the client port)."""

    def operator_address(self, member: Member, security: Security) -> str:
        """Where to make an operator call to ``member``: its member port when the
        caller holds a certificate for one, else its client address."""
        if security.tls_cert is None:
            return member.address
        return member_address(member.address, self.member_port_offset)


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
    clock_check: str = ""
    """``within``, ``beyond`` or ``unchecked``: whether the node's clock lets it stamp writes."""
    clock_offset_ms: int = 0


@dataclass(frozen=True, slots=True)
class RepairReport:
    """What one node's anti-entropy round found and fixed."""

    node_id: str
    peers: int
    leaves_differing: int
    keys_pulled: int
    keys_pushed: int
    skipped: tuple[str, ...] = ()
    """Replicas not compared because they were down."""
    failed: tuple[str, ...] = ()
    """Replicas whose comparison failed."""


def cluster_state(
    endpoints: str | Sequence[str], *, timeout: float = 2.0, security: Security = PLAINTEXT
) -> ClusterState:
    """Ask the endpoints in turn until one describes the cluster.

    ``security`` (every function here takes it) says how to connect: TLS,
    client certificate, token.
    """
    errors = []
    for endpoint in endpoint_list(endpoints):
        with security.channel(endpoint) as channel:
            try:
                state = kv_pb2_grpc.ClusterStub(channel).GetClusterState(
                    kv_pb2.GetClusterStateRequest(), timeout=timeout
                )
            except grpc.RpcError as error:
                failure = from_rpc_error(error)
                if isinstance(failure, Unauthenticated):
                    raise failure from None  # the same credentials go to every endpoint
                errors.append(f"{endpoint}: {failure.message}")
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
            member_port_offset=state.member_port_offset,
        )
    raise Unavailable("no endpoint answered: " + "; ".join(errors))


def node_stats(address: str, *, timeout: float = 2.0, security: Security = PLAINTEXT) -> NodeStats:
    """What the node at ``address`` stores, and where its rebalancing and repair stand."""
    stats = _call(address, "GetNodeStats", kv_pb2.GetNodeStatsRequest(), timeout, security)
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
        stats.clock_check,
        stats.clock_offset_ms,
    )


def remove_node(
    endpoints: str | Sequence[str],
    node_id: str,
    *,
    timeout: float = 10.0,
    security: Security = PLAINTEXT,
) -> int:
    """Start decommissioning ``node_id`` (through whichever endpoint answers); the new epoch."""
    errors = []
    for endpoint in endpoint_list(endpoints):
        try:
            response = _call(
                endpoint,
                "RemoveNode",
                kv_pb2.RemoveNodeRequest(node_id=node_id),
                timeout,
                security,
            )
        except Unavailable as error:
            errors.append(f"{endpoint}: {error.message}")
            continue
        return int(response.members.epoch)
    raise Unavailable("no endpoint could remove the node: " + "; ".join(errors))


def repair(address: str, *, timeout: float = 300.0, security: Security = PLAINTEXT) -> RepairReport:
    """Run one anti-entropy round on the node at ``address`` against its replicas."""
    stats = _call(address, "GetNodeStats", kv_pb2.GetNodeStatsRequest(), timeout, security)
    report = _call(address, "Repair", kv_pb2.RepairRequest(), timeout, security)
    return RepairReport(
        stats.node_id,
        report.peers,
        report.leaves_differing,
        report.keys_pulled,
        report.keys_pushed,
        tuple(report.skipped),
        tuple(report.failed),
    )


def _call(address: str, method: str, request: Any, timeout: float, security: Security) -> Any:
    """One unary call of ``kv.Cluster``, with errors turned into ringkv's."""
    with security.channel(address) as channel:
        stub = kv_pb2_grpc.ClusterStub(channel)
        try:
            return getattr(stub, method)(request, timeout=timeout)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None


@dataclass(frozen=True, slots=True)
class BackupInfo:
    """What a node said its snapshot holds; the file written was checked against it."""

    node_id: str
    records: int
    """Records, tombstones and expired values included."""
    hints: int
    size_bytes: int
    sha256: str
    """SHA-256 of the file, lower-case hex."""
    created_at_ms: int


BackupProgress = Callable[[int, int], None]
"""Told (bytes written, bytes in all) once the size is known and after every chunk."""


def backup(
    address: str,
    path: Path,
    *,
    timeout: float = 3600.0,
    progress: BackupProgress | None = None,
    security: Security = PLAINTEXT,
) -> BackupInfo:
    """Write a consistent snapshot of the store of the node at ``address`` to
    ``path``, a new file, while the node serves (``ringkv.admin.Admin/Backup``).

    The bytes go to ``PATH.partial`` first, which becomes ``path`` only once
    its size and SHA-256 match what the node announced; on any failure
    nothing is left behind. Raises InvalidArgument (FILE_EXISTS) if ``path``
    exists, PreconditionFailed (BACKUP_UNSUPPORTED) for a node without a
    durable engine, InternalError (BACKUP_CORRUPTED) if the file received is
    not the one announced, and the node's or the network's errors as usual.
    """
    # Nothing at either name is ever replaced or followed, a symlink included.
    for taken in (path, manifest_path(path)):
        if os.path.lexists(taken):
            raise InvalidArgument(f"{taken} already exists", reason="FILE_EXISTS")
    partial = path.with_name(path.name + ".partial")
    try:
        # The file holds the whole store: readable by its owner only.
        fd = create_private(partial)
    except FileExistsError:
        raise InvalidArgument(
            f"{partial} exists: another backup to {path} is running, or remove it",
            reason="FILE_EXISTS",
        ) from None
    try:
        with os.fdopen(fd, "wb") as file:
            info = _receive_backup(address, file, timeout, progress, security)
            file.flush()
            os.fsync(file.fileno())
        try:
            publish(partial, path)
        except FileExistsError:
            raise InvalidArgument(
                f"{path} appeared during the backup; the backup is not kept",
                reason="FILE_EXISTS",
            ) from None
    finally:
        partial.unlink(missing_ok=True)
    return info


def _receive_backup(
    address: str,
    file: BinaryIO,
    timeout: float,
    progress: BackupProgress | None,
    security: Security,
) -> BackupInfo:
    digest = hashlib.sha256()
    written = 0
    info: BackupInfo | None = None
    with security.channel(address) as channel:
        try:
            for chunk in admin_pb2_grpc.AdminStub(channel).Backup(
                admin_pb2.BackupRequest(), timeout=timeout
            ):
                if chunk.HasField("info"):
                    info = BackupInfo(
                        chunk.info.node_id,
                        chunk.info.records,
                        chunk.info.hints,
                        chunk.info.size_bytes,
                        chunk.info.sha256,
                        chunk.info.created_at_ms,
                    )
                    if progress is not None:
                        progress(0, info.size_bytes)
                if not chunk.data:
                    continue
                if info is None:
                    raise _corrupted(f"{address} sent data before saying what it holds")
                file.write(chunk.data)
                digest.update(chunk.data)
                written += len(chunk.data)
                if progress is not None:
                    progress(written, info.size_bytes)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
    if info is None:
        raise _corrupted(f"{address} ended the backup without sending it")
    if written != info.size_bytes:
        raise _corrupted(f"received {written} bytes of a {info.size_bytes}-byte snapshot")
    if digest.hexdigest() != info.sha256:
        raise _corrupted("the snapshot received does not match the checksum the node sent")
    return info


def _corrupted(message: str) -> InternalError:
    return InternalError(message, reason="BACKUP_CORRUPTED")
