"""Reads at ONE: the local replica answers alone, except while a membership
change is under way, when a replica of the next ring must answer too.

Real replicas (ReplicaService over LMDB) behind in-process gRPC servers and
real coordinators (``tests.support.replicas``).
"""

from __future__ import annotations

from pathlib import Path

from ringkv.core.consistency import Consistency
from ringkv.core.hlc import HybridLogicalClock
from ringkv.core.records import Record
from tests.support.replicas import cluster, key_pending_on_d, now_ms, run


def test_a_read_at_one_on_a_replica_is_answered_by_that_replica(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with cluster(tmp_path, {"a": 3, "b": 3, "c": 3, "d": 3}) as nodes:
            key = next(
                b"k%d" % i
                for i in range(1000)
                if "a" in nodes["a"].view.replica_sets(b"k%d" % i).current
            )
            # One clock for a's versions: two fresh ones ticked in the same
            # millisecond would stamp the tombstone below equal to this value.
            clock_a = HybridLogicalClock("a")
            older = Record(key, b"older", clock_a.tick(now_ms()))
            newer = Record(key, b"newer", HybridLogicalClock("b").tick(now_ms() + 1000))
            await nodes["a"].store.apply(older)
            for node in nodes["a"].view.replica_sets(key).current:
                if node != "a":
                    await nodes[node].store.apply(newer)

            # ONE may answer with any one replica's version: a's own.
            read = await nodes["a"].coordinator.read(key, Consistency.ONE, timeout_s=5.0)
            assert read == older
            # A tombstone held here reads as nothing.
            deleted = Record(key, b"", clock_a.tick(now_ms()), tombstone=True)
            await nodes["a"].store.apply(deleted)
            assert await nodes["a"].coordinator.read(key, Consistency.ONE, timeout_s=5.0) is None

    run(scenario())


def test_a_read_at_one_during_a_join_asks_the_next_rings_replicas_too(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with cluster(tmp_path, {"a": 2, "b": 2, "c": 2, "d": 2}) as nodes:
            key = key_pending_on_d(nodes["a"].view)
            sets = nodes["a"].view.replica_sets(key)
            assert sets.upcoming is not None
            # The replica the joiner displaces: ONE needs an answer from a
            # replica of the next ring as well as its own.
            (displaced,) = set(sets.current) - set(sets.upcoming)
            reader = nodes[displaced]
            older = Record(key, b"older", HybridLogicalClock("a").tick(now_ms()))
            newer = Record(key, b"newer", HybridLogicalClock("d").tick(now_ms() + 1000))
            await reader.store.apply(older)
            # Written during the join by a coordinator that met ONE in both
            # rings through other replicas.
            for node in sets.upcoming:
                await nodes[node].store.apply(newer)

            read = await reader.coordinator.read(key, Consistency.ONE, timeout_s=5.0)

            assert read == newer

    run(scenario())
