"""Hint replay drops hints past their TTL, and keeps those for nodes still down."""

from __future__ import annotations

import asyncio

from ringkv.core.hlc import LOGICAL_BITS, Version
from ringkv.core.records import Mutation, Record
from ringkv.server.counters import Counters
from ringkv.server.data.commit import CommitQueue
from ringkv.server.data.hints import HintReplayer
from ringkv.server.data.local_store import LocalStore
from ringkv.storage.memory import MemoryEngine

HOUR_MS = 3600 * 1000


def written_at(ms: int, key: bytes) -> Record:
    return Record(key, b"v", Version(ms << LOGICAL_BITS, "node-a"))


def test_expired_hints_are_dropped_and_fresh_ones_for_unknown_nodes_kept() -> None:
    async def scenario() -> tuple[list[tuple[str, Record]], Counters]:
        engine = MemoryEngine()
        commits = CommitQueue(engine)
        store = LocalStore(engine, commits)
        now = 10 * HOUR_MS
        old, fresh = written_at(now - 4 * HOUR_MS, b"old"), written_at(now - 60_000, b"new")
        engine.apply([Mutation(old, hint_for="gone"), Mutation(fresh, hint_for="gone")])
        counters = Counters()
        replayer = HintReplayer(
            engine,
            store,
            {},
            counters,
            lambda: now,
            hint_ttl_ms=3 * HOUR_MS,
            interval_s=3600,
        )
        await replayer.replay_once()
        await replayer.close()
        await commits.close()
        return list(engine.scan_hints()), counters

    left, counters = asyncio.run(scenario())
    assert [(node, record.key) for node, record in left] == [("gone", b"new")]
    assert counters.hints_expired == 1
    assert counters.hints_replayed == 0
