"""Group commit: writes that arrive while a commit is syncing share the next one.

One thread runs the engine's transactions so the event loop never blocks on
a disk sync. With ``--fsync batch`` every write waiting when a commit starts
joins it, so one sync acknowledges many writes; with ``always`` each write is
its own transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from ringkv.core.errors import InternalError, StorageFull
from ringkv.core.records import ApplyResult, Mutation, Record
from ringkv.server.transport.batching import Batcher
from ringkv.storage import Engine
from ringkv.storage.engine import PaxosOp, PaxosStep, T

DEFAULT_MAX_BATCH = 4096
"""Mutations per commit at most. A bulk load keeps the queue this deep: each
commit's sync is then shared by 4,096 records (a million-key load ran 17,400
keys/s at 1,024 and 22,800 at 4,096, bench/scale.py --concurrency 32
--batch 1000)."""
MAX_COMMIT_BYTES = 64 << 20
"""Bytes of keys and values per commit at most (at least one mutation), so
large values commit in smaller groups."""


class CommitObserver(Protocol):
    """Told on the event loop of every change a commit made to the records.

    A commit is visible in the engine before the event loop hears how it
    went: ``committing`` comes before the batch goes to the commit thread,
    ``applied`` after, so an observer can tell which changes may already be
    in the engine without having been announced.
    """

    def committing(self, mutations: Sequence[Mutation]) -> None:
        """Mutations about to be committed; ``applied`` follows with the same list."""

    def applied(
        self, mutations: Sequence[Mutation], results: Sequence[ApplyResult | Exception]
    ) -> None:
        """Mutations committed, with what each did (an exception: not stored)."""

    def touched(self, keys: Iterable[bytes]) -> None:
        """The records of ``keys`` may have changed (a Paxos step, a purge)."""


class CommitQueue:
    """Feeds mutations to an engine in batches, from one commit thread."""

    def __init__(
        self,
        engine: Engine,
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
        on_commit: Callable[[], None] = lambda: None,
    ) -> None:
        self._engine = engine
        self._observers: list[CommitObserver] = []
        self._on_commit = on_commit
        """Called on the event loop after each commit (the change log may have grown)."""
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ringkv-commit")
        self._batcher = Batcher(
            self._commit,
            max_batch=max_batch,
            name="the commit queue",
            max_bytes=MAX_COMMIT_BYTES,
            size_of=_mutation_bytes,
        )
        # Paxos steps have their own queue (their answers are not ApplyResults)
        # on the same thread: group commit for them too.
        self._paxos_batcher: Batcher[PaxosOp, Any] = Batcher(
            self._commit_paxos, max_batch=max_batch, name="the Paxos commit queue"
        )

    def observe(self, observer: CommitObserver) -> None:
        """Tell ``observer`` of every change from now on."""
        self._observers.append(observer)

    async def _commit(self, mutations: list[Mutation]) -> list[ApplyResult | Exception]:
        for observer in self._observers:
            observer.committing(mutations)
        try:
            results = await self._commit_all(mutations)
        except Exception as error:  # nothing of the batch was stored
            self._tell_applied(mutations, [error] * len(mutations))
            raise
        except BaseException:  # cancelled: the commit thread may store it yet
            cancelled = InternalError("the commit was cancelled")
            self._tell_applied(mutations, [cancelled] * len(mutations))
            self._touched([m.record.key for m in mutations])
            raise
        finally:
            self._on_commit()
        self._tell_applied(mutations, results)
        return results

    def _tell_applied(
        self, mutations: list[Mutation], results: Sequence[ApplyResult | Exception]
    ) -> None:
        for observer in self._observers:
            observer.applied(mutations, results)

    async def _commit_all(self, mutations: list[Mutation]) -> list[ApplyResult | Exception]:
        loop = asyncio.get_running_loop()
        try:
            return list(await loop.run_in_executor(self._thread, self._engine.apply, mutations))
        except StorageFull:
            raise
        except Exception as error:
            if len(mutations) == 1:
                raise
            failure = error
        return await self._isolate(mutations, failure)

    async def _isolate(
        self, mutations: list[Mutation], failure: Exception
    ) -> list[ApplyResult | Exception]:
        """One bad write must not fail the others that shared its (aborted)
        transaction: commit each half alone, and halves of a half that fails
        again, so one bad write among 4,096 costs a dozen commits, not 4,096."""
        if len(mutations) == 1:
            return [failure]
        loop = asyncio.get_running_loop()
        results: list[ApplyResult | Exception] = []
        middle = len(mutations) // 2
        for half in (mutations[:middle], mutations[middle:]):
            try:
                results += await loop.run_in_executor(self._thread, self._engine.apply, half)
            except StorageFull as full:
                results += [full] * len(half)
            except Exception as error:
                results += await self._isolate(half, error)
        return results

    async def submit(self, mutation: Mutation) -> ApplyResult:
        """Apply one mutation; returns once it is durable as the fsync mode says."""
        return await self._batcher.submit(mutation)

    async def submit_many(self, mutations: list[Mutation]) -> list[ApplyResult | Exception]:
        """Apply mutations in one batch (one sync); one result or error each, in order."""
        return await self._batcher.submit_many(mutations)

    async def purge(self, records: Sequence[Record]) -> int:
        """Remove records outright on the commit thread, each only if it is still
        the stored version."""
        keys = [record.key for record in records]
        versions = [record.version for record in records]
        loop = asyncio.get_running_loop()
        purging = self._thread.submit(self._engine.purge, keys, expected=versions)

        def purged(_: object) -> None:
            # When the purge is done, even if its caller stopped waiting.
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(self._touched, keys)

        purging.add_done_callback(purged)
        return await asyncio.wrap_future(purging)

    def _touched(self, keys: Sequence[bytes]) -> None:
        for observer in self._observers:
            observer.touched(keys)

    async def paxos(self, key: bytes, step: PaxosStep[T]) -> T:
        """One Paxos step on the commit thread (``Engine.paxos``), so it is
        ordered with the writes around it and durable when it returns; the
        steps that queue up meanwhile share one transaction and one sync."""
        answer: T = await self._paxos_batcher.submit((key, step))
        return answer

    async def _commit_paxos(self, ops: list[PaxosOp]) -> list[Any]:
        try:
            return await self._commit_paxos_all(ops)
        finally:
            self._on_commit()
            self._touched([key for key, _ in ops])

    async def _commit_paxos_all(self, ops: list[PaxosOp]) -> list[Any]:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._thread, self._engine.paxos, ops)
        except StorageFull:
            raise
        except Exception:
            if len(ops) == 1:
                raise
        # As for writes: a step that fails must not fail the others.
        answers: list[Any] = []
        for op in ops:
            try:
                (answer,) = await loop.run_in_executor(self._thread, self._engine.paxos, [op])
            except Exception as error:
                answers.append(error)
            else:
                answers.append(answer)
        return answers

    async def close(self) -> None:
        """Commit what is pending, then stop the commit thread."""
        await self._batcher.close()
        await self._paxos_batcher.close()
        self._thread.shutdown(wait=True)


def _mutation_bytes(mutation: Mutation) -> int:
    return len(mutation.record.key) + len(mutation.record.value)
