"""Merkle trees kept up to date on write (``ringkv.server.data.tree_cache``):
after any writes, through the node's real commit queue into a real engine,
a kept tree equals one built from a fresh scan, and no write made a scan."""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ringkv.core.errors import InvalidArgument
from ringkv.core.hlc import LOGICAL_BITS, Version
from ringkv.core.merkle import DEFAULT_DEPTH
from ringkv.core.paxos import AcceptorState
from ringkv.core.records import ApplyResult, Mutation, Record
from ringkv.core.ring import TOKEN_SPACE
from ringkv.server.data.commit import CommitQueue
from ringkv.server.data.local_store import LocalStore
from ringkv.server.data.tree_cache import Span, TreeCache, span_tree
from ringkv.storage import Engine, FsyncMode
from ringkv.storage.lmdb_engine import LmdbEngine
from ringkv.storage.memory import MemoryEngine

NOW = 10_000_000_000
HORIZONS = (NOW - 1_000, NOW - 5_000_000)
"""Two purge horizons: a record old enough is left out of one tree and not the other."""
SPAN_SETS: tuple[tuple[Span, ...], ...] = (
    ((0, TOKEN_SPACE),),
    ((1 << 60, 5 << 60), (9 << 60, TOKEN_SPACE)),
)
DEPTHS = (0, 4, DEFAULT_DEPTH)


def record(key: int, age_ms: int, node: str, kind: str) -> Record:
    timestamp = (NOW - age_ms) << LOGICAL_BITS
    name = b"k%03d" % key
    if kind == "tombstone":
        return Record(name, b"", Version(timestamp, node), tombstone=True)
    expiry = NOW - 2_000_000 if kind == "expired" else 0
    return Record(name, b"v" + node.encode(), Version(timestamp, node), False, expiry)


writes = st.lists(
    st.tuples(
        st.integers(0, 40),
        st.sampled_from((10, 3_000, 9_000_000)),
        st.sampled_from(("a", "b")),
        st.sampled_from(("value", "tombstone", "expired")),
        st.sampled_from((None, None, None, "c")),
    ),
    max_size=60,
)


def make_engine(kind: str, path: Path) -> Engine:
    return MemoryEngine() if kind == "memory" else LmdbEngine(path, FsyncMode.NEVER)


@asynccontextmanager
async def observed_store(engine: Engine) -> AsyncIterator[tuple[LocalStore, TreeCache]]:
    """A store over ``engine`` whose commits a tree cache observes, as on a node."""
    commits = CommitQueue(engine)
    store = LocalStore(engine, commits)
    trees = TreeCache(engine)
    store.observe(trees)
    try:
        yield store, trees
    finally:
        await commits.close()


async def kept_and_fresh(
    engine: Engine, trees: TreeCache
) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    pairs = []
    for spans in SPAN_SETS:
        for depth in DEPTHS:
            for horizon in HORIZONS:
                kept = await trees.tree(spans, depth, horizon)
                pairs.append((kept.leaves, span_tree(engine, spans, depth, horizon).leaves))
    return pairs


@pytest.mark.parametrize("kind", ["memory", "lmdb"])
@settings(max_examples=40, deadline=None)
@given(before=writes, after=writes)
def test_a_kept_tree_follows_every_write_without_a_scan(
    tmp_path_factory: pytest.TempPathFactory,
    kind: str,
    before: list[tuple[int, int, str, str, str | None]],
    after: list[tuple[int, int, str, str, str | None]],
) -> None:
    engine = make_engine(kind, tmp_path_factory.mktemp("data"))

    async def scenario() -> None:
        async with observed_store(engine) as (store, trees):
            for key, age, node, kind_, hint_for in before:
                await store.apply(record(key, age, node, kind_), hint_for=hint_for)
            await kept_and_fresh(engine, trees)
            built = trees.counters.merkle_tree_builds
            # Single writes, and batches where one key repeats or loses.
            for key, age, node, kind_, hint_for in after:
                await store.apply(record(key, age, node, kind_), hint_for=hint_for)
            await store.apply_many([record(k, a, n, t) for k, a, n, t, _ in after])
            for kept, fresh in await kept_and_fresh(engine, trees):
                assert kept == fresh
            assert trees.counters.merkle_tree_builds == built
            assert trees.counters.merkle_leaves_rescanned == 0

    try:
        asyncio.run(scenario())
    finally:
        engine.close()


@pytest.mark.parametrize("kind", ["memory", "lmdb"])
def test_purges_and_paxos_steps_rescan_only_their_leaves(tmp_path: Path, kind: str) -> None:
    engine = make_engine(kind, tmp_path / "data")
    rng = random.Random(7)
    records = [record(i, rng.choice((10, 9_000_000)), "a", "value") for i in range(41)]

    def commit(state: AcceptorState, current: Record | None) -> tuple[AcceptorState, int, Record]:
        return state, 0, record(3, 1, "b", "value")

    async def scenario() -> None:
        async with observed_store(engine) as (store, trees):
            await store.apply_many(records)
            await kept_and_fresh(engine, trees)
            built = trees.counters.merkle_tree_builds
            await store.purge(records[:5])
            await store.paxos(b"k003", commit)
            for kept, fresh in await kept_and_fresh(engine, trees):
                assert kept == fresh
            assert trees.counters.merkle_tree_builds == built
            assert (
                0
                < trees.counters.merkle_leaves_rescanned
                <= 6 * len(SPAN_SETS) * len(DEPTHS) * len(HORIZONS)
            )

    try:
        asyncio.run(scenario())
    finally:
        engine.close()


class PausingScan(MemoryEngine):
    """An engine whose scans stop half way until the test lets them go on."""

    def __init__(self) -> None:
        super().__init__()
        self.pause = False
        self.paused = threading.Event()
        self.go_on = threading.Event()

    def scan(self, start_token: int, end_token: int) -> Iterator[Record]:
        for i, found in enumerate(super().scan(start_token, end_token)):
            if self.pause and i == 5:
                self.paused.set()
                self.go_on.wait(timeout=30)
            yield found


def test_writes_during_a_build_or_a_rescan_are_not_lost() -> None:
    engine = PausingScan()
    spans = SPAN_SETS[0]

    async def scenario() -> None:
        async with observed_store(engine) as (store, trees):
            await store.apply_many([record(i, 10, "a", "value") for i in range(40)])
            for phase, age in (("build", 5), ("rescan", 3)):
                engine.pause, engine.paused, engine.go_on = (
                    True,
                    threading.Event(),
                    threading.Event(),
                )
                if phase == "rescan":
                    await store.paxos(b"k001", lambda s, c: (s, 0, None))  # a leaf to rescan
                asking = asyncio.ensure_future(trees.tree(spans, 2, HORIZONS[0]))
                assert await asyncio.to_thread(engine.paused.wait, 30)
                # Lands behind the scan and ahead of it, while it is stopped.
                await store.apply_many([record(i, age, "b", "value") for i in range(40)])
                engine.go_on.set()
                kept = await asyncio.wait_for(asking, 30)
                engine.pause = False
                assert kept.leaves == span_tree(engine, spans, 2, HORIZONS[0]).leaves
            assert trees.counters.merkle_tree_builds == 1

    asyncio.run(scenario())


class SlowToAnswer(MemoryEngine):
    """An engine whose commits are stored at once but reported late."""

    def __init__(self) -> None:
        super().__init__()
        self.hold = False
        self.stored = threading.Event()
        self.report = threading.Event()

    def apply(self, mutations: Sequence[Mutation]) -> list[ApplyResult]:
        results = super().apply(mutations)
        if self.hold:
            self.stored.set()
            self.report.wait(timeout=30)
        return results


def test_a_tree_built_between_a_commit_and_its_report_counts_it_once() -> None:
    """Found by review: the engine holds a commit before the event loop hears
    of it; a tree scanned in between saw the write, and its delta came after."""
    engine = SlowToAnswer()
    spans = SPAN_SETS[0]

    async def scenario() -> None:
        async with observed_store(engine) as (store, trees):
            await store.apply_many([record(i, 10, "a", "value") for i in range(40)])
            engine.hold = True
            writing = asyncio.ensure_future(store.apply(record(7, 5, "b", "value")))
            assert await asyncio.to_thread(engine.stored.wait, 30)
            await trees.tree(spans, 4, HORIZONS[0])  # built now: its scan sees the write
            engine.report.set()
            await writing
            engine.hold = False
            kept = await trees.tree(spans, 4, HORIZONS[0])
            assert kept.leaves == span_tree(engine, spans, 4, HORIZONS[0]).leaves

    asyncio.run(scenario())


def test_overlapping_spans_are_refused_and_unsorted_ones_sorted() -> None:
    engine = MemoryEngine()

    async def scenario() -> None:
        trees = TreeCache(engine)
        with pytest.raises(InvalidArgument):
            await trees.tree([(0, 10), (5, 20)], 2, 0)
        one = await trees.tree([(1 << 62, 1 << 63), (0, 1 << 60)], 2, 0)
        other = await trees.tree([(0, 1 << 60), (1 << 62, 1 << 63)], 2, 0)
        assert one == other
        assert trees.counters.merkle_tree_builds == 1

    asyncio.run(scenario())
