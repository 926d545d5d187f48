"""Batcher: items queued while a flush runs form the next batch."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from ringkv.core.errors import Unavailable
from ringkv.server.transport.batching import Batcher
from ringkv.server.transport.peers import MAX_RECORDS_PER_CALL, _in_pieces


class Recorder:
    """A flush that records its batches and can be held open."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def flush(self, items: list[int]) -> Sequence[int | Exception]:
        self.batches.append(items)
        await self.gate.wait()
        return [ValueError(f"bad {i}") if i < 0 else i * 10 for i in items]


async def flushes_started(recorder: Recorder, count: int) -> None:
    """Let the loop run until ``count`` flushes have started (bounded)."""
    for _ in range(1000):
        if len(recorder.batches) >= count:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"{len(recorder.batches)} flushes started, expected {count}")


def test_items_queued_during_a_flush_share_the_next_batch() -> None:
    async def scenario() -> list[list[int]]:
        recorder = Recorder()
        recorder.gate.clear()
        batcher = Batcher(recorder.flush, max_batch=100, name="test")
        first = asyncio.ensure_future(batcher.submit(1))
        await flushes_started(recorder, 1)  # the first flush waits on the gate
        rest = [asyncio.ensure_future(batcher.submit(i)) for i in range(2, 6)]
        await asyncio.sleep(0)
        recorder.gate.set()
        assert await first == 10
        assert await asyncio.gather(*rest) == [20, 30, 40, 50]
        await batcher.close()
        return recorder.batches

    assert asyncio.run(scenario()) == [[1], [2, 3, 4, 5]]


def test_a_full_batch_leaves_before_the_one_in_flight_is_answered() -> None:
    async def scenario() -> list[list[int]]:
        recorder = Recorder()
        recorder.gate.clear()
        batcher = Batcher(recorder.flush, max_batch=2, name="test", max_in_flight=2)
        first = asyncio.ensure_future(batcher.submit(1))
        await flushes_started(recorder, 1)
        # A partial batch waits for the answer in flight: it may grow meanwhile.
        second = asyncio.ensure_future(batcher.submit(2))
        for _ in range(100):
            await asyncio.sleep(0)
        assert len(recorder.batches) == 1
        # A full one does not.
        third = asyncio.ensure_future(batcher.submit(3))
        await flushes_started(recorder, 2)  # two batches in flight, neither answered
        fourth = asyncio.ensure_future(batcher.submit_many([4, 5]))
        for _ in range(100):
            await asyncio.sleep(0)
        assert len(recorder.batches) == 2  # the pipeline is full: 4 and 5 wait
        recorder.gate.set()
        assert list(await asyncio.gather(first, second, third)) == [10, 20, 30]
        assert await fourth == [40, 50]
        await batcher.close()
        return recorder.batches

    assert asyncio.run(scenario()) == [[1], [2, 3], [4, 5]]


def test_items_submitted_together_travel_together_and_fail_alone() -> None:
    async def scenario() -> list[int | Exception]:
        recorder = Recorder()
        batcher = Batcher(recorder.flush, max_batch=2, name="test")
        results = await batcher.submit_many([1, -2, 3])
        await batcher.close()
        assert recorder.batches == [[1, -2, 3]]  # a group is never split
        return results

    results = asyncio.run(scenario())
    assert results[0] == 10
    assert results[2] == 30
    assert isinstance(results[1], ValueError)


def test_batches_are_capped() -> None:
    async def scenario() -> list[list[int]]:
        recorder = Recorder()
        batcher = Batcher(recorder.flush, max_batch=2, name="test")
        await asyncio.gather(*(batcher.submit(i) for i in range(5)))
        await batcher.close()
        return recorder.batches

    assert all(len(batch) <= 2 for batch in asyncio.run(scenario()))


def test_batches_are_capped_in_bytes_and_an_oversized_item_travels_alone() -> None:
    async def scenario() -> list[list[int]]:
        recorder = Recorder()
        recorder.gate.clear()
        batcher = Batcher(
            recorder.flush, max_batch=100, name="test", max_bytes=10, size_of=lambda i: i
        )
        first = asyncio.ensure_future(batcher.submit(1))
        await flushes_started(recorder, 1)
        # Queued behind the call in flight: 4 + 5 fit in 10 bytes, 3 does not
        # join them, and 12 is over the cap by itself.
        rest = [asyncio.ensure_future(batcher.submit(i)) for i in (4, 5, 3, 12, 2)]
        await asyncio.sleep(0)
        recorder.gate.set()
        await asyncio.gather(first, *rest)
        await batcher.close()
        return recorder.batches

    assert asyncio.run(scenario()) == [[1], [4, 5], [3], [12], [2]]


def test_bytes_and_size_of_go_together() -> None:
    async def scenario() -> None:
        Batcher(Recorder().flush, max_batch=2, name="test", max_bytes=10)

    with pytest.raises(ValueError, match="go together"):
        asyncio.run(scenario())


def test_an_exception_result_fails_its_item_alone() -> None:
    async def scenario() -> list[int | BaseException]:
        batcher = Batcher(Recorder().flush, max_batch=10, name="test")
        results = await asyncio.gather(
            *(batcher.submit(i) for i in (1, -2, 3)), return_exceptions=True
        )
        await batcher.close()
        return results

    first, second, third = asyncio.run(scenario())
    assert (first, third) == (10, 30)
    assert isinstance(second, ValueError)


def test_a_raising_flush_fails_the_batch_and_the_batcher_goes_on() -> None:
    calls = 0

    async def flaky(items: list[int]) -> Sequence[int]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError("disk on fire")
        return items

    async def scenario() -> int:
        batcher = Batcher(flaky, max_batch=10, name="test")
        with pytest.raises(OSError, match="disk on fire"):
            await batcher.submit(1)
        result = await batcher.submit(2)
        await batcher.close()
        return result

    assert asyncio.run(scenario()) == 2


def test_close_flushes_what_is_pending_then_refuses() -> None:
    async def scenario() -> None:
        recorder = Recorder()
        batcher = Batcher(recorder.flush, max_batch=10, name="the test queue")
        pending = asyncio.ensure_future(batcher.submit(7))
        await asyncio.sleep(0)
        await batcher.close()
        assert await pending == 70
        with pytest.raises(Unavailable, match="the test queue is shutting down"):
            await batcher.submit(8)

    asyncio.run(scenario())


def test_a_failed_piece_fails_its_own_items_only() -> None:
    class SecondPieceFails:
        async def submit_many(self, items: list[int]) -> list[int | Exception]:
            if items[0] >= MAX_RECORDS_PER_CALL:
                raise Unavailable("this call failed")
            return [i * 10 for i in items]

    items = list(range(MAX_RECORDS_PER_CALL + 10))
    results: list[object] = asyncio.run(
        _in_pieces(SecondPieceFails(), items, lambda _: 1)  # type: ignore[arg-type]
    )
    assert results[:MAX_RECORDS_PER_CALL] == [i * 10 for i in range(MAX_RECORDS_PER_CALL)]
    assert all(isinstance(r, Unavailable) for r in results[MAX_RECORDS_PER_CALL:])
    assert len(results) == len(items)
