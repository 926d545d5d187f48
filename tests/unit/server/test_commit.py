"""The commit queue (``ringkv.server.data.commit``): group commit, bounded."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from ringkv.core.hlc import Version
from ringkv.core.records import ApplyResult, Mutation, Record
from ringkv.server.data import commit
from ringkv.server.data.commit import CommitQueue
from ringkv.storage.memory import MemoryEngine


class CountingEngine(MemoryEngine):
    def __init__(self) -> None:
        super().__init__()
        self.commits: list[int] = []

    def apply(self, mutations: Sequence[Mutation]) -> list[ApplyResult]:
        self.commits.append(len(mutations))
        return super().apply(mutations)


def mutation(i: int, size: int) -> Mutation:
    return Mutation(Record(b"k%d" % i, b"v" * size, Version(1 + i, "n1")))


def test_waiting_writes_share_commits_bounded_in_count_and_bytes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(commit, "MAX_COMMIT_BYTES", 1000)
    engine = CountingEngine()

    async def scenario() -> None:
        queue = CommitQueue(engine, max_batch=8)
        try:
            # 20 small ones wait together: commits of at most 8.
            await asyncio.gather(*(queue.submit(mutation(i, 10)) for i in range(20)))
            small = list(engine.commits)
            engine.commits.clear()
            # Four of 400 bytes: at most two fit in 1,000 bytes.
            await asyncio.gather(*(queue.submit(mutation(100 + i, 400)) for i in range(4)))
        finally:
            await queue.close()
        assert sum(small) == 20 and max(small) <= 8 and len(small) < 20
        assert sum(engine.commits) == 4 and max(engine.commits) <= 2

    asyncio.run(scenario())


class OneBadKey(CountingEngine):
    """Refuses, as a whole, any transaction that holds one key."""

    def apply(self, mutations: Sequence[Mutation]) -> list[ApplyResult]:
        self.commits.append(len(mutations))
        if any(m.record.key == b"k5" for m in mutations):
            raise ValueError("a bad record")
        return MemoryEngine.apply(self, mutations)


def test_one_bad_write_fails_alone_in_a_few_commits() -> None:
    engine = OneBadKey()

    async def scenario() -> list[ApplyResult | Exception]:
        queue = CommitQueue(engine)
        try:
            return await queue.submit_many([mutation(i, 10) for i in range(64)])
        finally:
            await queue.close()

    results = asyncio.run(scenario())
    assert [i for i, r in enumerate(results) if isinstance(r, Exception)] == [5]
    assert all(engine.get(b"k%d" % i) is not None for i in range(64) if i != 5)
    # Halving: one try of all 64, then two halves at each of six levels.
    assert len(engine.commits) <= 1 + 2 * 6
