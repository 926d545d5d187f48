"""Batching: items submitted while a batch is in flight form the next batch.

This is group commit in general form. Under light load every item goes out
alone at once; under heavy load one disk sync or one network round trip
carries many items, with no timer and no added latency. With more than one
batch allowed in flight (a pipeline, for network calls) a full batch leaves
without waiting for the answer to the one before; a partial one still waits,
since on a busy CPU fewer, larger calls cost less per item than more,
smaller ones (measured with bench/cluster.py on 2 cores: always sending at
once cut QUORUM throughput by about a fifth).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from ringkv.core.errors import Unavailable

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")


class Batcher(Generic[ItemT, ResultT]):
    """Feeds items to ``flush`` in order, as many per call as have queued up.

    ``flush`` gets a list of items and returns one result per item, in order;
    an exception in that list fails its item alone, an exception raised fails
    every item of the batch. Up to ``max_in_flight`` calls of ``flush`` run at
    once, started in submission order; a call starts while another runs only
    with a full batch.

    Items submitted together (``submit_many``) share one future and travel in
    one batch, so a caller with many items costs one wakeup, not one per item.

    With ``max_bytes``, a batch also ends before its items' ``size_of`` would
    pass it (a group larger than that travels alone), so that no call
    outgrows a message.
    """

    def __init__(
        self,
        flush: Callable[[list[ItemT]], Awaitable[Sequence[ResultT | Exception]]],
        *,
        max_batch: int,
        name: str,
        max_in_flight: int = 1,
        max_bytes: int | None = None,
        size_of: Callable[[ItemT], int] | None = None,
    ) -> None:
        if (max_bytes is None) != (size_of is None):
            raise ValueError("max_bytes and size_of go together")
        self._flush = flush
        self._max_batch = max_batch
        self._max_bytes = max_bytes
        self._size_of = size_of
        self._name = name
        self._pending: list[tuple[list[ItemT], asyncio.Future[list[ResultT | Exception]]]] = []
        self._pending_group_bytes: list[int] = []
        """The bytes of each pending group, measured once, when it was submitted."""
        self._pending_items = 0
        self._pending_bytes = 0
        self._wakeup = asyncio.Event()
        self._closing = False
        self._slots = asyncio.Semaphore(max_in_flight)
        self._in_flight: set[asyncio.Task[None]] = set()
        self._task = asyncio.get_running_loop().create_task(self._run(), name=name)

    async def submit(self, item: ItemT) -> ResultT:
        """The item's result, once the batch that carried it is done."""
        (result,) = await self.submit_many([item])
        if isinstance(result, Exception):
            raise result
        return result

    async def submit_many(self, items: list[ItemT]) -> list[ResultT | Exception]:
        """One result per item, in order: the item's result or the exception that failed it.

        Raises only when the whole batch failed (the call did not happen or
        did not answer).
        """
        if self._closing or self._task.done():
            raise Unavailable(f"{self._name} is shutting down")
        future: asyncio.Future[list[ResultT | Exception]] = (
            asyncio.get_running_loop().create_future()
        )
        group_bytes = self._bytes_of(items)
        self._pending.append((items, future))
        self._pending_group_bytes.append(group_bytes)
        self._pending_items += len(items)
        self._pending_bytes += group_bytes
        self._wakeup.set()
        # A caller that gives up must not cancel the batch its items may already
        # be part of; the shield leaves the future to the batch.
        return await asyncio.shield(future)

    async def _run(self) -> None:
        while not (self._closing and not self._pending):
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                if self._in_flight and not self._full() and not self._closing:
                    break  # Gathers more until a call in flight is answered.
                await self._slots.acquire()
                groups = self._take_batch()
                task = asyncio.get_running_loop().create_task(self._send(groups))
                self._in_flight.add(task)
                task.add_done_callback(self._answered)
        if self._in_flight:
            await asyncio.wait(set(self._in_flight))

    def _bytes_of(self, items: list[ItemT]) -> int:
        return sum(map(self._size_of, items)) if self._size_of is not None else 0

    def _full(self) -> bool:
        """Whether what is pending makes a full batch."""
        return self._pending_items >= self._max_batch or (
            self._max_bytes is not None and self._pending_bytes >= self._max_bytes
        )

    def _take_batch(self) -> list[tuple[list[ItemT], asyncio.Future[list[ResultT | Exception]]]]:
        """The oldest groups, up to ``max_batch`` items and ``max_bytes`` (at
        least one group)."""
        taken, size, weight = 0, 0, 0
        for (items, _), group_bytes in zip(self._pending, self._pending_group_bytes, strict=True):
            if taken and (
                size + len(items) > self._max_batch
                or (self._max_bytes is not None and weight + group_bytes > self._max_bytes)
            ):
                break
            taken += 1
            size += len(items)
            weight += group_bytes
        groups = self._pending[:taken]
        del self._pending[:taken]
        del self._pending_group_bytes[:taken]
        self._pending_items -= size
        self._pending_bytes -= weight
        return groups

    async def _send(
        self, groups: list[tuple[list[ItemT], asyncio.Future[list[ResultT | Exception]]]]
    ) -> None:
        try:
            batch = [item for items, _ in groups for item in items]
            try:
                results = await self._flush(batch)
                if len(results) != len(batch):
                    raise ValueError(f"{len(results)} results for {len(batch)} items")
            except Exception as error:  # fail this batch, keep serving the next
                for _, future in groups:
                    if not future.done():
                        future.set_exception(error)
                        future.exception()  # retrieved: a caller may have gone
                return
            start = 0
            for items, future in groups:
                if not future.done():
                    future.set_result(list(results[start : start + len(items)]))
                start += len(items)
        finally:
            self._slots.release()

    def _answered(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        self._wakeup.set()  # What gathered meanwhile may leave now.

    async def close(self) -> None:
        """Flush what is pending, then stop."""
        self._closing = True
        self._wakeup.set()
        await self._task
