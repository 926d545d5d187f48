"""The data path's one loop: persist, send, release.

Request machines (``ringkv.core.coordination``) say in each ``Ready`` which
replica calls they want; the coordinator hands those calls here. Every call
that any machine asks for in one turn of the event loop joins one batch per
target, then the batches start together, in the style of etcd raft's Ready
loop:

* persist: this node's replica gets its batch as one commit (one sync for
  every request's records, ``LocalStore.persist``), fenced and answered by
  the same rules a remote replica applies (``ringkv.core.replica``);
* send: each peer gets its batch as one call, several in flight per peer and
  in order (``ringkv.server.transport.peers``);
* release: each answer goes back to the machine that asked, whose next calls
  (a stamp past a newer version, the next replica after a failure) join the
  next turn's batches.

So concurrent requests share this node's commit whatever their number:
64 writes that arrive in one turn cost one commit, not 64 (a peer's batcher
below merged calls to each peer already). A batch holds at most
``MAX_RECORDS_PER_CALL`` records, so a burst is never one unbounded read or
commit on the event loop.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from ringkv.core import replica
from ringkv.core.coordination import Call
from ringkv.core.errors import InternalError
from ringkv.core.records import Record
from ringkv.core.replica import Fence
from ringkv.server.cluster.cluster_view import ClusterView
from ringkv.server.data.local_store import LocalStore
from ringkv.server.transport.peers import MAX_RECORDS_PER_CALL

log = logging.getLogger(__name__)

Release = Callable[[object], None]
"""Takes a call's answer, or the error it failed with, to its machine."""
Spawn = Callable[
    [Coroutine[Any, Any, list[object]], Callable[[asyncio.Task[list[object]]], None]], None
]
"""Runs a batch in the background (the coordinator waits for it on close), then a callback."""
_BatchKey = tuple[str, str | None, bool]
"""(target node, the replica it stands in for, reads): calls that share one batch."""


class ReplicaCalls:
    """Batches the calls of every running request by target, once per loop turn."""

    def __init__(
        self, view: ClusterView, store: LocalStore, now_ms: Callable[[], int], spawn: Spawn
    ) -> None:
        self._view = view
        self._store = store
        self._now_ms = now_ms
        self._spawn = spawn
        self._queued: dict[_BatchKey, list[tuple[Call, Release]]] = {}
        self._flush_due: asyncio.Handle | None = None

    def submit(self, call: Call, release: Release) -> None:
        """Start ``call`` with this turn's batch to its target; its answer to ``release``."""
        target = call.target
        self._queued.setdefault(
            (target.node_id, target.stands_in_for, not call.records), []
        ).append((call, release))
        if self._flush_due is None:
            self._flush_due = asyncio.get_running_loop().call_soon(self._flush)

    def flush(self) -> None:
        """Start every queued call now (the coordinator's close() then waits for them)."""
        if self._flush_due is not None:
            self._flush_due.cancel()
        self._flush()

    def _flush(self) -> None:
        self._flush_due = None
        queued, self._queued = self._queued, {}
        for entries in queued.values():
            for batch in _bounded(entries):
                self._spawn(
                    self._start([call for call, _ in batch]),
                    functools.partial(self._release, batch),
                )

    def _release(
        self, entries: list[tuple[Call, Release]], task: asyncio.Task[list[object]]
    ) -> None:
        error = asyncio.CancelledError() if task.cancelled() else task.exception()
        answers = [error] * len(entries) if error is not None else task.result()
        for (_, release), answer in zip(entries, answers, strict=True):
            # One machine's fault must not keep the batch's other answers
            # from their machines.
            try:
                release(answer)
            except Exception:
                log.exception("a request machine failed on an answer")

    async def _start(self, calls: list[Call]) -> list[object]:
        """Calls to one target, all reads or all writes (with the same
        stand-in): an answer or an error each."""
        target = calls[0].target
        reads = not calls[0].records
        if target.node_id != self._view.node_id:
            peer = self._view.peers[target.node_id]
            if reads:
                return list(await peer.read_many([(c.key, c.fence) for c in calls]))
            writes: list[tuple[Record, Fence | None]] = [
                (record, c.fence) for c in calls for record in c.records
            ]
            written = await peer.write_many(writes, hint_for=target.stands_in_for)
            return _per_call(calls, list(written))
        # This replica fences the calls as a remote one would.
        mine = self._view.membership.fence
        answers: list[object] = [None] * len(calls)
        admitted: list[int] = []
        for i, call in enumerate(calls):
            refused = replica.refusal(mine, call.fence)
            if refused is not None:
                answers[i] = refused
            else:
                admitted.append(i)
        if reads:
            held = self._store.read_many([calls[i].key for i in admitted])
            for i, record in zip(admitted, held, strict=True):
                answers[i] = record
            return answers
        records = [record for i in admitted for record in calls[i].records]
        applied = await self._store.persist(replica.mutations(records, target.stands_in_for))
        results: list[object] = list(replica.answers(records, applied, self._now_ms()))
        per_call = _per_call([calls[i] for i in admitted], results)
        for i, answer in zip(admitted, per_call, strict=True):
            answers[i] = answer
        return answers


def _bounded(entries: list[tuple[Call, Release]]) -> list[list[tuple[Call, Release]]]:
    """The entries in batches of at most ``MAX_RECORDS_PER_CALL`` records (a read counts one)."""
    batches: list[list[tuple[Call, Release]]] = [[]]
    size = 0
    for entry in entries:
        records = max(1, len(entry[0].records))
        if batches[-1] and size + records > MAX_RECORDS_PER_CALL:
            batches.append([])
            size = 0
        batches[-1].append(entry)
        size += records
    return batches


def _per_call(calls: Sequence[Call], results: Sequence[object]) -> list[object]:
    """The results of the calls' records, in order, as one answer per call:
    its acks, or an error if any record failed. A replica that stored only
    some of a call's records failed the call (the others are held there
    anyway), with an error that does not say "stored nowhere"."""
    answers: list[object] = []
    position = 0
    for call in calls:
        mine = results[position : position + len(call.records)]
        position += len(call.records)
        errors = [r for r in mine if isinstance(r, BaseException)]
        if not errors:
            answers.append(tuple(mine))
        elif len(errors) == len(mine):
            answers.append(errors[0])
        else:
            answers.append(
                InternalError(
                    f"{len(errors)} of the call's {len(mine)} records failed: {errors[0]}"
                )
            )
    return answers
