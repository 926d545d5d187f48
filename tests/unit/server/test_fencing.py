"""Fencing by member table: replicas refuse requests planned on an older table.

Real replicas (ReplicaService over LMDB, each with its own ClusterView) served
by in-process gRPC servers on 127.0.0.1, and a real Coordinator whose view
lags one member table behind theirs: the coordinator of a node that has not
heard of a join yet, as after a missed heartbeat.
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
import pytest

from ringkv.core.consistency import Consistency
from ringkv.core.errors import DeadlineExceeded, Unavailable
from ringkv.core.hlc import HybridLogicalClock
from ringkv.core.membership import Member, Membership, MemberStatus, RingMaker
from ringkv.core.records import Record
from ringkv.server.cluster.clock_guard import ClockGuard
from ringkv.server.cluster.cluster_view import ClusterView
from ringkv.server.counters import Counters
from ringkv.server.data.commit import CommitQueue
from ringkv.server.data.coordinator import Coordinator
from ringkv.server.data.local_store import LocalStore
from ringkv.server.data.rebalance import Rebalancer
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
    coordinator = Coordinator(view, store, clock, now_ms, Counters(), clock_guard=guard)
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


def test_a_write_planned_on_an_old_table_is_refused_and_replanned(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with cluster(tmp_path, {"a": 1, "b": 2, "c": 2, "d": 2}) as nodes:
            a = nodes["a"]
            key = key_pending_on_d(nodes["b"].view)
            assert a.view.epoch == 1
            assert a.view.replica_sets(key).pending() == ()

            written = await a.coordinator.write(key, b"v1", level=Consistency.QUORUM, timeout_s=5.0)

            # b or c refused the first plan with epoch 2; a adopted it and
            # planned again with d's pending range in a joint quorum.
            assert a.view.epoch == 2
            sets = a.view.replica_sets(key)
            assert sets.pending() == ("d",)
            holders = await _holders(nodes, key, written.record)
            upcoming = sets.upcoming or ()
            assert sum(1 for n in sets.current if n in holders) >= 2, holders
            assert sum(1 for n in upcoming if n in holders) >= 2, holders

    run(scenario())


def test_a_read_planned_on_an_old_table_is_refused_and_replanned(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with cluster(tmp_path, {"a": 1, "b": 2, "c": 2, "d": 2}) as nodes:
            a = nodes["a"]
            key = key_pending_on_d(nodes["b"].view)
            # The value is on the new ring's replicas but a: written during the
            # join by a coordinator that knew of it. The old ring's quorum that
            # a would ask (itself and one more) may miss it; the joint one cannot.
            record = Record(key, b"after-the-join", HybridLogicalClock("d").tick(now_ms()))
            upcoming = nodes["b"].view.replica_sets(key).upcoming or ()
            for node in upcoming:
                if node != "a":
                    await nodes[node].store.apply(record)

            read = await a.coordinator.read(key, Consistency.QUORUM, timeout_s=5.0)

            assert a.view.epoch == 2
            assert read == record

    run(scenario())


def test_a_table_that_cannot_be_caught_up_with_fails_reads_cleanly_and_writes_as_uncertain(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        async with cluster(tmp_path, {"a": 1, "b": 2, "c": 2, "d": 2}, adopting=False) as nodes:
            a = nodes["a"]
            key = key_pending_on_d(nodes["b"].view)
            with pytest.raises(Unavailable) as refused:
                await a.coordinator.read(key, Consistency.QUORUM, timeout_s=5.0)
            assert refused.value.reason == "STALE_MEMBER_TABLE"
            with pytest.raises(DeadlineExceeded) as uncertain:
                await a.coordinator.write(key, b"v", level=Consistency.QUORUM, timeout_s=5.0)
            assert uncertain.value.reason == "WRITE_UNCERTAIN"
            assert a.view.epoch == 1

    run(scenario())


def test_replicas_on_the_same_or_an_older_table_serve_the_request(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with cluster(tmp_path, {"a": 2, "b": 1, "c": 1, "d": 2}) as nodes:
            a = nodes["a"]
            key = key_pending_on_d(a.view)
            written = await a.coordinator.write(key, b"v", level=Consistency.ALL, timeout_s=5.0)
            # b and c lag: they take the write (the coordinator knows more), and
            # stay on their table (they learn newer ones from the leader).
            assert nodes["b"].view.epoch == 1
            assert {"a", "b", "c", "d"} <= await _holders(nodes, key, written.record)

    run(scenario())


async def _holders(nodes: dict[str, Node], key: bytes, record: Record) -> set[str]:
    """The nodes whose engine holds ``record`` (or a newer version of its key)."""
    await asyncio.gather(*(n.coordinator.close() for n in nodes.values()))
    return {
        node_id
        for node_id, node in nodes.items()
        if (held := node.engine.get(key)) is not None and held.version >= record.version
    }


def test_a_hand_off_purge_keeps_a_write_that_landed_after_the_hand_off(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with cluster(tmp_path, {"a": 3, "b": 3, "c": 3, "d": 3}) as nodes:
            a = nodes["a"]
            clock = HybridLogicalClock("x")
            # Keys a no longer replicates once d has joined, still held on a.
            moved = [
                key
                for key in (b"moved-%d" % i for i in range(200))
                if "a" not in a.view.replica_sets(key).current
            ][:10]
            assert moved
            for key in moved:
                await a.store.apply(Record(key, b"old", clock.tick(now_ms())))
            rebalancer = Rebalancer(
                a.view, a.store, a.engine, settle_delay_s=0.0, cleanup_delay_s=0.0
            )

            delivered = await rebalancer.hand_off()
            assert {r.key for r in delivered} == set(moved)
            # A coordinator still on an older table writes one key here
            # between the hand-off and the purge.
            newer = Record(moved[0], b"newer", clock.tick(now_ms()))
            await a.store.apply(newer)
            removed = await a.store.purge(delivered)

            assert removed == len(moved) - 1
            assert a.engine.get(moved[0]) == newer
            assert all(a.engine.get(key) is None for key in moved[1:])
            for key in moved:
                for node in a.view.replica_sets(key).current:
                    assert nodes[node].engine.get(key) is not None, (key, node)

    run(scenario())
