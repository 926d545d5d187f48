"""Real replicas in one process, for coordinator and replica tests.

Each node has a ReplicaService over its own LMDB engine, served by an
in-process gRPC server on 127.0.0.1, its own ClusterView on a member table of
the test's choosing, and a Coordinator: the data path of a node without the
membership layer, so a test decides which table each node is on.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Coroutine
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from ringkv.core.hlc import HybridLogicalClock
from ringkv.core.membership import Member, Membership, MemberStatus, RingMaker
from ringkv.server.cluster.clock_guard import ClockGuard
from ringkv.server.cluster.clock_mark import ClockMark
from ringkv.server.cluster.cluster_view import ClusterView
from ringkv.server.cluster.leader_lease import LeaderLease
from ringkv.server.counters import Counters
from ringkv.server.data.commit import CommitQueue
from ringkv.server.data.coordinator import Coordinator
from ringkv.server.data.local_store import LocalStore
from ringkv.server.services.replica_service import ReplicaService
from ringkv.server.transport import rpc
from ringkv.server.transport.peers import Fencing, Peer
from ringkv.storage import FsyncMode
from ringkv.storage.lmdb_engine import LmdbEngine
from tests.support.nodes import free_ports

RINGS = RingMaker(16)
NODES = ("a", "b", "c", "d")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class Node:
    view: ClusterView
    engine: LmdbEngine
    store: LocalStore
    coordinator: Coordinator


def tables(addresses: dict[str, str]) -> tuple[Membership, ...]:
    """Epoch 1: a, b, c. Epoch 2: d joins (its ranges are pending). Epoch 3: it has."""
    before = Membership(1, tuple(Member(n, addresses[n]) for n in NODES[:3]))
    joining = Member("d", addresses["d"], MemberStatus.JOINING)
    after = Membership(3, tuple(Member(n, addresses[n]) for n in NODES), term=1)
    return before, Membership(2, (*before.members, joining), term=1), after


@asynccontextmanager
async def cluster(
    root: Path, tables_of: dict[str, int], *, adopting: bool = True
) -> AsyncIterator[dict[str, Node]]:
    """One node per id, each on the table of the epoch ``tables_of`` gives it;
    ``adopting`` False: no node adopts the tables replicas refuse calls with."""
    ports = free_ports(len(NODES))
    addresses = {node: f"127.0.0.1:{port}" for node, port in zip(NODES, ports, strict=True)}
    by_epoch = dict(enumerate(tables(addresses), start=1))
    async with AsyncExitStack() as stack:
        nodes: dict[str, Node] = {}
        for node_id in NODES:
            nodes[node_id] = await _start(
                stack, root, node_id, by_epoch[tables_of[node_id]], addresses[node_id], adopting
            )
        yield nodes


async def _start(  # noqa: PLR0917 (one node of the fixture)
    stack: AsyncExitStack,
    root: Path,
    node_id: str,
    table: Membership,
    address: str,
    adopting: bool,
) -> Node:
    engine = LmdbEngine(root / node_id, FsyncMode.NEVER)
    stack.callback(engine.close)
    commits = CommitQueue(engine)
    stack.push_async_callback(commits.close)
    store = LocalStore(engine, commits)
    clock = HybridLogicalClock(node_id)
    view: ClusterView

    def adopt(table: Membership) -> None:
        if adopting:
            view.adopt(table)  # bound late: the view opens its peers as it is made

    def open_peer(peer_id: str, peer_address: str) -> Peer:
        fencing = Fencing(lambda: view.membership, adopt)
        return Peer(peer_id, peer_address, clock, 5.0, fencing=fencing)

    view = ClusterView(node_id, table, 3, RINGS, open_peer)
    stack.push_async_callback(view.close)
    # Off: these tests are about tables, not clocks (test_clock_guard's subject).
    guard = ClockGuard(view, now_ms, time.monotonic, max_offset_ms=0, fresh_for_s=1.0)
    # Every node leads: these tests are about tables, not elections.
    lease = LeaderLease(1000, lambda: 0)
    lease.exempt(True)
    coordinator = Coordinator(
        view,
        store,
        clock,
        now_ms,
        Counters(),
        clock_guard=guard,
        lease=lease,
        clock_mark=ClockMark(root / node_id, clock, now_ms),
    )
    stack.push_async_callback(coordinator.close)
    service = ReplicaService(store, clock, now_ms, engine=engine, tables=view)
    server = grpc.aio.server()
    server.add_insecure_port(address)
    server.add_generic_rpc_handlers([rpc.generic_handler(service, rpc.Gate())])
    await server.start()
    stack.push_async_callback(server.stop, None)
    return Node(view, engine, store, coordinator)


def key_pending_on_d(view: ClusterView) -> bytes:
    """A key whose replicas change with d's join, d gaining it."""
    for i in range(1000):
        key = b"key-%d" % i
        if view.replica_sets(key).pending() == ("d",):
            return key
    raise AssertionError("no key moves to d")


def run(scenario: Coroutine[Any, Any, None]) -> None:
    asyncio.run(scenario)
