"""Group commit: writes that arrive while a commit is syncing share the next one.

One thread runs the engine's transactions so the event loop never blocks on
a disk sync. With ``--fsync batch`` every write waiting when a commit starts
joins it, so one sync acknowledges many writes; with ``always`` each write is
its own transaction.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from ringkv.core.errors import Unavailable
from ringkv.core.records import ApplyResult, Mutation
from ringkv.storage import Engine

DEFAULT_MAX_BATCH = 1024

_Pending = tuple[Mutation, "asyncio.Future[ApplyResult]"]


class CommitQueue:
    """Feeds mutations to an engine in batches, from one commit thread."""

    def __init__(self, engine: Engine, *, max_batch: int = DEFAULT_MAX_BATCH) -> None:
        self._engine = engine
        self._max_batch = max_batch
        self._pending: list[_Pending] = []
        self._wakeup = asyncio.Event()
        self._closing = False
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ringkv-commit")
        self._task = asyncio.get_running_loop().create_task(self._run(), name="commit-queue")

    async def submit(self, mutation: Mutation) -> ApplyResult:
        """Apply one mutation; returns once it is durable as the fsync mode says."""
        if self._closing:
            raise Unavailable("the node is shutting down")
        future: asyncio.Future[ApplyResult] = asyncio.get_running_loop().create_future()
        self._pending.append((mutation, future))
        self._wakeup.set()
        # A caller that gives up (cancellation) must not cancel the commit the
        # write may already be part of; shield keeps the future for _run.
        return await asyncio.shield(future)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while not (self._closing and not self._pending):
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                mutations = [mutation for mutation, _ in batch]
                try:
                    results = await loop.run_in_executor(
                        self._thread, self._engine.apply, mutations
                    )
                except Exception as error:  # StorageFull, or a bug: fail the batch, not the queue
                    for _, future in batch:
                        _settle(future, error=error)
                else:
                    for (_, future), result in zip(batch, results, strict=True):
                        _settle(future, result=result)

    async def close(self) -> None:
        """Commit what is pending, then stop the commit thread."""
        self._closing = True
        self._wakeup.set()
        await self._task
        self._thread.shutdown(wait=True)


def _settle(
    future: asyncio.Future[ApplyResult],
    *,
    result: ApplyResult | None = None,
    error: BaseException | None = None,
) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    elif result is not None:
        future.set_result(result)
