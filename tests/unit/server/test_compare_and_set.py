"""Conditional writes by Paxos between real replicas (in-process gRPC over LMDB)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from ringkv.core.consistency import Consistency
from ringkv.core.errors import DeadlineExceeded, PreconditionFailed, Unavailable
from ringkv.core.hlc import Version
from ringkv.core.paxos import Ballot, Proposal, commit_step, prepare_step, propose_step
from ringkv.core.records import EXPECT_ABSENT, Record
from tests.support.replicas import Node, cluster, run

SETTLED = {"a": 3, "b": 3, "c": 3, "d": 3}
"""Every node on the table after d's join: four members, three replicas a key."""


async def increment(node: Node, key: bytes) -> bool | None:
    """Read, then write count+1 if the key is still what was read; whether it
    was (None: unknown, the write may or may not have taken effect)."""
    current = await node.coordinator.read(key, Consistency.LINEARIZABLE, timeout_s=5.0)
    count = int(current.value) if current is not None else 0
    expected = current.version.timestamp if current is not None else EXPECT_ABSENT
    try:
        await node.coordinator.write(
            key,
            str(count + 1).encode(),
            level=Consistency.LINEARIZABLE,
            timeout_s=5.0,
            expected=expected,
        )
    except PreconditionFailed:
        return False
    except DeadlineExceeded as uncertain:
        if uncertain.reason != "WRITE_UNCERTAIN":
            raise
        return None
    return True


def test_contending_increments_from_every_node_lose_no_update(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with cluster(tmp_path, SETTLED) as nodes:
            key = b"counter"
            succeeded = uncertain = 0
            for _ in range(15):
                # Four coordinators read the same version, then all try at once.
                outcomes = await asyncio.gather(*(increment(n, key) for n in nodes.values()))
                succeeded += outcomes.count(True)
                uncertain += outcomes.count(None)
            final = await nodes["a"].coordinator.read(key, Consistency.LINEARIZABLE, 5.0)
            assert final is not None
            assert succeeded <= int(final.value) <= succeeded + uncertain
            assert succeeded + uncertain >= 15  # each batch lets at least one through

    run(scenario())


def test_a_proposal_left_accepted_is_finished_by_the_next_round(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with cluster(tmp_path, SETTLED) as nodes:
            key = b"left-behind"
            replicas = nodes["a"].view.replica_sets(key).current
            left = Proposal(Ballot(1, "x"), Record(key, b"chosen", Version(1, "x")))
            # A coordinator got a quorum to accept, then vanished before committing.
            for node_id in replicas[:2]:
                store = nodes[node_id].store
                await store.paxos(key, prepare_step(left.ballot))
                assert await store.paxos(key, propose_step(left))
            assert all(nodes[n].engine.get(key) is None for n in replicas)

            # The next conditional write finishes it first, then finds the key taken.
            with pytest.raises(PreconditionFailed):
                await nodes["d"].coordinator.write(
                    key, b"mine", level=Consistency.QUORUM, timeout_s=5.0, expected=EXPECT_ABSENT
                )
            read = await nodes["d"].coordinator.read(key, Consistency.LINEARIZABLE, 5.0)
            assert read == left.record
            assert sum(nodes[n].engine.get(key) == left.record for n in replicas) >= 2

    run(scenario())


def test_a_commit_that_reached_one_replica_is_spread_to_the_quorum_before_any_answer(
    tmp_path: Path,
) -> None:
    """A round's commit broke off after one replica applied it: that replica's
    copy is the newest a prepare finds. Acknowledged (or built on) as it
    stands, a LINEARIZABLE read of the other replicas would miss it (the
    fault matrix, seed 6: a read older than an acknowledged CAS)."""

    async def scenario() -> None:
        async with cluster(tmp_path, SETTLED) as nodes:
            key = b"half-committed"
            first, second, third = nodes["a"].view.replica_sets(key).current
            left = Proposal(Ballot(1, "x"), Record(key, b"chosen", Version(1, "x")))
            for node_id in (first, second):
                store = nodes[node_id].store
                await store.paxos(key, prepare_step(left.ballot))
                assert await store.paxos(key, propose_step(left))
            await nodes[first].store.paxos(key, commit_step(left))
            assert nodes[first].engine.get(key) == left.record
            assert nodes[second].engine.get(key) is None
            # The coordinator (not a replica) reaches only the one that
            # committed and one that did not.
            outsider = next(n for n in nodes if n not in (first, second, third))
            coordinator = nodes[outsider]
            coordinator.view.peers[third].alive = False

            with pytest.raises(PreconditionFailed):
                await coordinator.coordinator.write(
                    key, b"mine", level=Consistency.QUORUM, timeout_s=5.0, expected=EXPECT_ABSENT
                )
            assert nodes[second].engine.get(key) == left.record

    run(scenario())


def test_without_a_quorum_of_home_replicas_nothing_is_proposed(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with cluster(tmp_path, SETTLED) as nodes:
            key = b"lonely"
            a = nodes["a"]
            replicas = a.view.replica_sets(key).current
            coordinator = next(n for n in replicas if n != "a") if "a" not in replicas else "a"
            node = nodes[coordinator]
            for peer_id in replicas:
                if peer_id != coordinator:
                    node.view.peers[peer_id].alive = False  # as after failed calls
            with pytest.raises(Unavailable):
                await node.coordinator.write(
                    key, b"v", level=Consistency.QUORUM, timeout_s=5.0, expected=EXPECT_ABSENT
                )
            assert all(nodes[n].engine.get(key) is None for n in replicas)

    run(scenario())
