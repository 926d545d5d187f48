"""Batching: items submitted while one batch is in flight form the next batch.

This is group commit in general form. Under light load every item goes out
alone at once; under heavy load one disk sync or one network round trip
carries many items, with no timer and no added latency.
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
    every item of the batch.
    """

    def __init__(
        self,
        flush: Callable[[list[ItemT]], Awaitable[Sequence[ResultT | Exception]]],
        *,
        max_batch: int,
        name: str,
    ) -> None:
        self._flush = flush
        self._max_batch = max_batch
        self._name = name
        self._pending: list[tuple[ItemT, asyncio.Future[ResultT]]] = []
        self._wakeup = asyncio.Event()
        self._closing = False
        self._task = asyncio.get_running_loop().create_task(self._run(), name=name)

    async def submit(self, item: ItemT) -> ResultT:
        """The item's result, once the batch that carried it is done."""
        if self._closing or self._task.done():
            raise Unavailable(f"{self._name} is shutting down")
        future: asyncio.Future[ResultT] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        self._wakeup.set()
        # A caller that gives up must not cancel the batch its item may already
        # be part of; the shield leaves the future to _run.
        return await asyncio.shield(future)

    async def _run(self) -> None:
        while not (self._closing and not self._pending):
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                try:
                    results = await self._flush([item for item, _ in batch])
                    if len(results) != len(batch):
                        raise ValueError(f"{len(results)} results for {len(batch)} items")
                except Exception as error:  # fail this batch, keep serving the next
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(error)
                            future.exception()  # retrieved: a caller may have gone
                    continue
                for (_, future), result in zip(batch, results, strict=True):
                    if future.done():
                        continue
                    if isinstance(result, Exception):
                        future.set_exception(result)
                        future.exception()  # retrieved: a caller may have gone
                    else:
                        future.set_result(result)

    async def close(self) -> None:
        """Flush what is pending, then stop."""
        self._closing = True
        self._wakeup.set()
        await self._task
