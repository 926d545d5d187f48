"""Fencing by member table: replicas refuse requests planned on an older table.

Real replicas (ReplicaService over LMDB, each with its own ClusterView) served
by in-process gRPC servers on 127.0.0.1, and a real Coordinator whose view
lags one member table behind theirs: the coordinator of a node that has not
heard of a join yet, as after a missed heartbeat.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from ringkv.core.consistency import Consistency
from ringkv.core.errors import DeadlineExceeded, StaleMemberTable, Unavailable
from ringkv.core.hlc import HybridLogicalClock
from ringkv.core.records import Record
from ringkv.server.data.rebalance import Rebalancer
from tests.support.replicas import Node, cluster, key_pending_on_d, now_ms, run


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


def test_a_call_carries_the_table_it_was_planned_on_not_the_one_it_is_sent_under(
    tmp_path: Path,
) -> None:
    """A call started late in a request (the next replica after a failure) was
    planned on the table the request began with: if the coordinator has moved
    on since, a replica on the newer table must still refuse it."""

    async def scenario() -> None:
        async with cluster(tmp_path, {"a": 2, "b": 2, "c": 2, "d": 2}, adopting=False) as nodes:
            peer = nodes["a"].view.peers["b"]
            key = key_pending_on_d(nodes["b"].view)
            with pytest.raises(StaleMemberTable):
                await peer.read(key, fence=(1, 0))
            with pytest.raises(StaleMemberTable):
                await peer.write(Record(key, b"v", HybridLogicalClock("a").tick(1)), fence=(1, 0))
            # Planned on the table both are on: served.
            assert await peer.read(key, fence=(2, 1)) is None

    run(scenario())


def test_a_replica_behind_the_puller_serves_no_range_until_it_has_caught_up(
    tmp_path: Path,
) -> None:
    """Were b to serve d's pull on the table before d joined, a write planned
    on that table could land on b after the pull passed it and never reach d."""

    async def scenario() -> None:
        async with cluster(tmp_path, {"a": 1, "b": 1, "c": 2, "d": 2}, adopting=False) as nodes:
            with pytest.raises(Unavailable, match="FAILED_PRECONDITION"):
                await nodes["d"].view.peers["b"].scan(0, 2**64, b"", 10)
            # A replica on the puller's table, or a newer one, serves it.
            records, cursor = await nodes["d"].view.peers["c"].scan(0, 2**64, b"", 10)
            assert (records, cursor) == ([], b"")
            await nodes["a"].view.peers["c"].scan(0, 2**64, b"", 10)
            # Refused, not failed: the puller tries again, and b is not marked down.
            assert nodes["d"].view.peers["b"].alive

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
