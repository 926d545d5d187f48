"""Following a real engine's change log: catch-up, the live tail, filters,
progress marks, and Compacted when the log no longer reaches back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from contextlib import aclosing

import pytest

from ringkv.core.errors import Compacted, PreconditionFailed
from ringkv.core.hlc import HybridLogicalClock, Version
from ringkv.core.records import Mutation, Record
from ringkv.core.ring import TOKEN_SPACE
from ringkv.core.tokens import token_of
from ringkv.server.data.change_feed import ChangeFeed, FeedBatch, SpanSet
from ringkv.storage.memory import MemoryEngine

EVERYTHING = SpanSet.of([(0, TOKEN_SPACE)])


def record(key: str, timestamp: int, *, tombstone: bool = False) -> Record:
    return Record(key.encode(), b"" if tombstone else b"v", Version(timestamp, "n1"), tombstone)


async def next_with_records(batches: AsyncGenerator[FeedBatch, None]) -> FeedBatch:
    """The next batch that holds changes (heartbeats skipped)."""
    while True:
        batch = await asyncio.wait_for(anext(batches), 5.0)
        if batch.records:
            return batch


def test_a_follower_catches_up_from_a_version_then_tails_commits() -> None:
    async def scenario() -> None:
        engine = MemoryEngine()
        clock = HybridLogicalClock("n1")
        changes = ChangeFeed(engine, clock)
        engine.apply([Mutation(record("app/a", 10)), Mutation(record("app/b", 20))])
        engine.apply([Mutation(record("other/c", 30)), Mutation(record("app/a", 40))])
        clock.observe_peer(40)
        feed = changes.follow(spans=EVERYTHING, prefix=b"app/", from_version=15)
        async with aclosing(feed) as batches:
            first = await next_with_records(batches)
            assert first.records == [record("app/b", 20), record("app/a", 40)]
            assert first.progress == 40  # read the whole log when the clock said 40
            engine.apply([Mutation(record("app/b", 50, tombstone=True))])
            changes.notify()
            second = await next_with_records(batches)
            assert second.records == [record("app/b", 50, tombstone=True)]

    asyncio.run(scenario())


def test_a_follower_keeps_to_its_spans() -> None:
    async def scenario() -> None:
        engine = MemoryEngine()
        keys = [f"k{i}" for i in range(20)]
        engine.apply([Mutation(record(key, 1 + n)) for n, key in enumerate(keys)])
        low = sorted(keys, key=lambda k: token_of(k.encode()))[:10]
        spans = SpanSet.of([(0, token_of(low[-1].encode()) + 1)])
        feed = ChangeFeed(engine, HybridLogicalClock("n1")).follow(
            spans=spans, prefix=b"", from_version=0
        )
        async with aclosing(feed) as batches:
            batch = await next_with_records(batches)
        assert sorted(r.key.decode() for r in batch.records) == sorted(low)

    asyncio.run(scenario())


def test_a_resume_point_the_log_was_trimmed_past_is_compacted() -> None:
    async def scenario() -> None:
        engine = MemoryEngine(change_log_entries=4)
        engine.apply([Mutation(record(f"k{i}", 10 * (i + 1))) for i in range(10)])
        horizon = engine.change_log_state().horizon
        assert horizon == 60
        changes = ChangeFeed(engine, HybridLogicalClock("n1"))
        too_early = changes.follow(spans=EVERYTHING, prefix=b"", from_version=59)
        with pytest.raises(Compacted, match="60"):
            await anext(too_early)
        fine = changes.follow(spans=EVERYTHING, prefix=b"", from_version=60)
        async with aclosing(fine) as batches:
            batch = await next_with_records(batches)
        assert [r.version.timestamp for r in batch.records] == [70, 80, 90, 100]

        # A log that started empty at version 75 says nothing of what came before.
        started_late = ChangeFeed(engine, HybridLogicalClock("n1"), floor=75)
        with pytest.raises(Compacted, match="75"):
            await anext(started_late.follow(spans=EVERYTHING, prefix=b"", from_version=70))

        off = ChangeFeed(MemoryEngine(change_log_entries=0), HybridLogicalClock("n1"))
        with pytest.raises(PreconditionFailed, match="watch-log-entries"):
            await anext(off.follow(spans=EVERYTHING, prefix=b"", from_version=1))

    asyncio.run(scenario())


def test_a_batch_of_large_values_is_sent_in_pieces_that_fit_a_message() -> None:
    async def scenario() -> None:
        engine = MemoryEngine()
        clock = HybridLogicalClock("n1")
        big = b"x" * (1 << 20)
        engine.apply(
            [Mutation(Record(f"k{i}".encode(), big, Version(i + 1, "n1"))) for i in range(10)]
        )
        clock.observe_peer(10)
        feed = ChangeFeed(engine, clock).follow(spans=EVERYTHING, prefix=b"", from_version=0)
        seen: list[FeedBatch] = []
        async with aclosing(feed) as batches:
            while sum(len(batch.records) for batch in seen) < 10:
                seen.append(await next_with_records(batches))
        assert all(sum(len(r.value) for r in batch.records) <= 5 << 20 for batch in seen)
        # Progress only once everything read so far is out.
        assert [batch.progress for batch in seen][:-1] == [0] * (len(seen) - 1)
        assert seen[-1].progress == 10

    asyncio.run(scenario())


def test_a_change_stored_late_below_the_resume_version_is_still_sent() -> None:
    """A repair or hint may store a version below where the follower began:
    it is news to the watch if its key never had a newer one passed on."""

    async def scenario() -> None:
        engine = MemoryEngine()
        clock = HybridLogicalClock("n1")
        changes = ChangeFeed(engine, clock)
        engine.apply([Mutation(record("k/old", 5))])
        feed = changes.follow(spans=EVERYTHING, prefix=b"k/", from_version=50)
        async with aclosing(feed) as batches:
            # Logged before the follower began and below 50: not sent.
            first = await asyncio.wait_for(anext(batches), 5.0)
            assert first.records == []
            engine.apply([Mutation(record("k/late", 40))])
            changes.notify()
            batch = await next_with_records(batches)
        assert batch.records == [record("k/late", 40)]

    asyncio.run(scenario())


def test_a_follower_started_again_sends_what_was_logged_since_the_last_one_read() -> None:
    """Between two followers of a node (a watch's streams restarted), a late
    change may be logged below the resume version: the second, told where
    the first stopped, sends it."""

    async def scenario() -> None:
        engine = MemoryEngine()
        changes = ChangeFeed(engine, HybridLogicalClock("n1"))
        engine.apply([Mutation(record("k/seen", 5))])
        first = changes.follow(spans=EVERYTHING, prefix=b"k/", from_version=1)
        async with aclosing(first) as batches:
            batch = await next_with_records(batches)
        assert batch.records == [record("k/seen", 5)] and batch.last_seq == 1
        engine.apply([Mutation(record("k/between", 3))])  # late, below 50
        again = changes.follow(spans=EVERYTHING, prefix=b"k/", from_version=50, after_seq=1)
        async with aclosing(again) as batches:
            batch = await next_with_records(batches)
        assert batch.records == [record("k/between", 3)]

    asyncio.run(scenario())
