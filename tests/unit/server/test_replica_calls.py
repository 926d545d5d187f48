"""ReplicaCalls, the data path's persist-send-release loop, on this node's own
replica: a real commit queue over the memory engine, calls as request machines
ask for them.

The commit queue merges no two batches (``max_batch=1``), so its commits
count the batches the loop started.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from ringkv.core.coordination import Call
from ringkv.core.errors import StaleMemberTable
from ringkv.core.hlc import LOGICAL_BITS, HybridLogicalClock, Version
from ringkv.core.membership import Member, Membership, RingMaker
from ringkv.core.quorum import Target
from ringkv.core.records import Record, ReplicaAck
from ringkv.server.cluster.cluster_view import ClusterView
from ringkv.server.data.commit import CommitQueue
from ringkv.server.data.local_store import LocalStore
from ringkv.server.data.replica_calls import ReplicaCalls
from ringkv.server.transport.peers import MAX_RECORDS_PER_CALL, Peer
from ringkv.storage.memory import MemoryEngine

NOW_MS = 1_700_000_000_000
TABLE = Membership(3, (Member("a", "127.0.0.1:1"),), 2)
HERE = Target("a")


def write(call_id: int, key: bytes, fence: tuple[int, int] = TABLE.fence) -> Call:
    record = Record(key, b"v", Version(NOW_MS << LOGICAL_BITS, "a"))
    return Call(call_id, HERE, b"", (record,), fence)


def read(call_id: int, key: bytes) -> Call:
    return Call(call_id, HERE, key, (), TABLE.fence)


class Node:
    """ReplicaCalls over a real local store, with every answer it released."""

    def __init__(self) -> None:
        self.commits = 0
        self.answers: dict[int, object] = {}
        engine = MemoryEngine()
        self._queue = CommitQueue(engine, max_batch=1, on_commit=self._committed)
        clock = HybridLogicalClock("a")
        view = ClusterView(
            "a", TABLE, 1, RingMaker(8), lambda node, address: Peer(node, address, clock, 0.2)
        )
        self.calls = ReplicaCalls(
            view, LocalStore(engine, self._queue), lambda: NOW_MS, self._spawn
        )
        self.tasks: set[asyncio.Task[Any]] = set()

    def _committed(self) -> None:
        self.commits += 1

    def _spawn(
        self,
        batch: Coroutine[Any, Any, list[object]],
        then: Callable[[asyncio.Task[list[object]]], None],
    ) -> None:
        task = asyncio.get_running_loop().create_task(batch)
        task.add_done_callback(then)
        self.tasks.add(task)

    def submit(self, call: Call) -> None:
        self.calls.submit(call, lambda answer: self.answers.update({call.id: answer}))

    async def settled(self, count: int) -> None:
        """Until ``count`` answers were released (bounded)."""

        async def until() -> None:
            while len(self.answers) < count:
                await asyncio.sleep(0.001)

        await asyncio.wait_for(until(), timeout=10)

    async def close(self) -> None:
        await self._queue.close()


def test_the_writes_of_many_requests_in_one_turn_share_one_commit() -> None:
    async def scenario() -> Node:
        node = Node()
        for call_id, key in enumerate([b"k1", b"k2", b"k3"]):
            node.submit(write(call_id, key))
        node.submit(read(3, b"k1"))  # the same turn: read before the commit
        await node.settled(4)
        await node.close()
        return node

    node = asyncio.run(scenario())
    assert node.commits == 1
    assert [node.answers[i] for i in range(3)] == [(ReplicaAck(replaced_live=False),)] * 3
    assert node.answers[3] is None


def test_a_burst_is_cut_into_batches_of_bounded_size() -> None:
    calls = MAX_RECORDS_PER_CALL + 88

    async def scenario() -> Node:
        node = Node()
        for call_id in range(calls):
            node.submit(write(call_id, b"k%d" % call_id))
        await node.settled(calls)
        await node.close()
        return node

    node = asyncio.run(scenario())
    assert node.commits == 2
    assert all(isinstance(answer, tuple) for answer in node.answers.values())


def test_a_call_planned_on_an_older_table_is_refused_alone() -> None:
    async def scenario() -> Node:
        node = Node()
        node.submit(write(0, b"old", fence=(TABLE.epoch - 1, 9)))
        node.submit(write(1, b"new"))
        await node.settled(2)
        node.submit(read(2, b"old"))
        node.submit(read(3, b"new"))
        await node.settled(4)
        await node.close()
        return node

    node = asyncio.run(scenario())
    assert isinstance(node.answers[0], StaleMemberTable)
    assert node.answers[1] == (ReplicaAck(replaced_live=False),)
    assert node.answers[2] is None  # never stored
    stored = node.answers[3]
    assert isinstance(stored, Record) and stored.key == b"new"


def test_a_machine_that_fails_on_its_answer_keeps_no_other_from_theirs() -> None:
    async def scenario() -> Node:
        node = Node()

        def broken(_: object) -> None:
            raise RuntimeError("a broken request machine")

        node.calls.submit(write(0, b"k0"), broken)
        node.submit(write(1, b"k1"))
        await node.settled(1)
        await node.close()
        return node

    node = asyncio.run(scenario())
    assert node.answers == {1: (ReplicaAck(replaced_live=False),)}


def test_flush_starts_the_queued_calls_at_once() -> None:
    """close() of the coordinator flushes, then waits for what it started."""

    async def scenario() -> Node:
        node = Node()
        node.submit(write(0, b"k0"))
        node.calls.flush()
        assert node.tasks, "the batch is a task before the loop turns"
        await node.settled(1)
        await node.close()
        return node

    node = asyncio.run(scenario())
    assert node.commits == 1
