"""Plain writes forwarded to one peer, many to a call.

A node that gets a write for a key another node owns sends it on to the
owner. Alone, each such write costs a whole gRPC call on both nodes, more
than coordinating it (bench/budget.py). Here the writes headed for one peer
share calls (``ringkv.internal.Forward/Writes``): a write leaves at once in
a call of its own while fewer than ``max_calls`` calls wait for their first
answers; past that, writes queue, and the next free slot takes all of them.
So under light load nothing waits, and under heavy load a call carries
what arrived during the one before it.

The owner answers each write as it is done, so a slow write (one queued
behind a conditional write of its key, or short of replicas) does not hold
back the others of its call. A call gives up its slot at its first answer,
or after ``SLOT_HOLD_S`` without one: a write still out does not hold back
the writes queued after it for long.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

from ringkv.api import forward_pb2
from ringkv.core.validation import MAX_BATCH_BYTES
from ringkv.server.transport.rpc import PeerStatus, RelayedError

log = logging.getLogger(__name__)

MAX_CALLS = 1
"""Forward calls to one peer that may wait for their first answer at once.
One makes the largest batches (3.6-3.9 writes a call at 64 writes in flight
on 3 nodes, against 2.4 with two), and the least CPU per write."""
SLOT_HOLD_S = 0.05
"""A call that has had no answer for this long gives its slot up anyway:
its writes may all wait on something (a conditional write of their key, a
replica that does not answer), which the writes queued behind it need not."""
DEADLINE_GRACE_S = 0.25
MAX_WRITES_PER_CALL = 256

OpenCall = Callable[
    [forward_pb2.ForwardedWrites, float],
    grpc.aio.UnaryStreamCall[forward_pb2.ForwardedWrites, forward_pb2.ForwardedAnswers],
]
"""Starts a ``Forward/Writes`` call to the peer with a timeout in seconds."""


@dataclass(slots=True)
class _Waiting:
    """A write queued or sent, and where its answer goes."""

    write: forward_pb2.ForwardedWrite
    deadline: float
    """When its caller stops waiting, on the event loop's clock."""
    answer: asyncio.Future[forward_pb2.ForwardedAnswer] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )

    def fail(self, status: PeerStatus) -> None:
        if not self.answer.done():
            self.answer.set_exception(RelayedError(status))


class WriteForwarder:
    """Sends plain writes to one peer, those queued together in one call."""

    def __init__(
        self,
        open_call: OpenCall,
        *,
        max_calls: int = MAX_CALLS,
        max_writes: int = MAX_WRITES_PER_CALL,
        max_bytes: int = MAX_BATCH_BYTES,
        slot_hold_s: float = SLOT_HOLD_S,
    ) -> None:
        self._open_call = open_call
        self._max_calls = max_calls
        self._max_writes = max_writes
        self._max_bytes = max_bytes
        self._slot_hold_s = slot_hold_s
        self._queued: list[_Waiting] = []
        self._unanswered_calls = 0
        """Calls that have not had their first answer yet."""
        self._calls: dict[asyncio.Task[None], list[_Waiting]] = {}
        self._closed = False

    async def send(
        self, write: forward_pb2.ForwardedWrite, timeout_s: float
    ) -> forward_pb2.ForwardedAnswer:
        """The owner's answer to ``write`` (its ``set`` or ``delete`` response),
        which may take ``timeout_s`` there from when it leaves.

        Raises RelayedError with the status the write would have ended with
        had it been sent alone: the owner's error for this write, or the
        call's, when the call failed (UNAVAILABLE when the peer could not be
        reached, went away or this node closed the peer; DEADLINE_EXCEEDED
        when it did not answer in time).
        """
        waiting = _Waiting(write, asyncio.get_running_loop().time() + timeout_s)
        if self._closed:
            waiting.fail(_CLOSED)
        else:
            self._queued.append(waiting)
            self._start_calls()
        return await waiting.answer

    def _start_calls(self) -> None:
        while self._queued and self._unanswered_calls < self._max_calls:
            batch = self._take_batch()
            if not batch:
                continue
            self._unanswered_calls += 1
            task = asyncio.get_running_loop().create_task(self._call(batch))
            self._calls[task] = batch
            task.add_done_callback(self._calls.pop)

    def _take_batch(self) -> list[_Waiting]:
        """The writes of the next call, in the order they came; writes whose
        caller already left are dropped."""
        batch: list[_Waiting] = []
        size = 0
        while self._queued and len(batch) < self._max_writes:
            waiting = self._queued[0]
            if waiting.answer.done():
                self._queued.pop(0)
                continue
            size += waiting.write.ByteSize()
            if batch and size > self._max_bytes:
                break
            batch.append(self._queued.pop(0))
        return batch

    async def _call(self, batch: list[_Waiting]) -> None:
        now = asyncio.get_running_loop().time()
        for waiting in batch:
            # What is left of its deadline as it leaves, not as it was queued.
            waiting.write.timeout_ms = max(1, math.ceil((waiting.deadline - now) * 1000))
        request = forward_pb2.ForwardedWrites(writes=[waiting.write for waiting in batch])
        # A little past the latest write's deadline: the owner answers a write
        # that ran out of time itself (DEADLINE_EXCEEDED with its reason); the
        # call's own deadline means the owner did not answer at all (hung).
        timeout_s = max(waiting.deadline for waiting in batch) - now + DEADLINE_GRACE_S
        slot = _Slot(self, self._slot_hold_s)
        failure = PeerStatus(grpc.StatusCode.INTERNAL, "the owner left a write unanswered", ())
        call = None
        try:
            call = self._open_call(request, timeout_s)
            async for message in call:
                for answer in message.answers:
                    if not 0 <= answer.index < len(batch):
                        continue
                    future = batch[answer.index].answer
                    if future.done():
                        continue
                    if answer.HasField("error"):
                        future.set_exception(RelayedError(PeerStatus.of_status(answer.error)))
                    else:
                        future.set_result(answer)
                slot.release()
        except grpc.aio.AioRpcError as error:
            failure = PeerStatus.of_call(error)
        except asyncio.CancelledError:
            failure = _CLOSED
            raise
        except Exception:
            log.exception("a forward call failed")
            failure = PeerStatus(grpc.StatusCode.INTERNAL, "the forward call failed", ())
        finally:
            slot.release()
            if call is not None and not call.done():
                call.cancel()
            for waiting in batch:
                waiting.fail(failure)

    def _release_slot(self) -> None:
        self._unanswered_calls -= 1
        self._start_calls()

    async def close(self) -> None:
        """Fails the writes queued and in flight UNAVAILABLE (nothing more
        will be heard of them here; their callers may coordinate them
        themselves) and ends the calls."""
        self._closed = True
        queued, self._queued = self._queued, []
        for waiting in queued:
            waiting.fail(_CLOSED)
        calls = dict(self._calls)
        for task in calls:
            task.cancel()
        for task, batch in calls.items():
            with contextlib.suppress(asyncio.CancelledError):
                await task
            # A task cancelled before it ran never reached its own cleanup.
            for waiting in batch:
                waiting.fail(_CLOSED)


_CLOSED = PeerStatus(grpc.StatusCode.UNAVAILABLE, "this node closed its channel to the peer", ())


class _Slot:
    """A call's place among those that may wait for a first answer, given
    back once: at its first answer, at its end, or after ``hold_s``."""

    def __init__(self, forwarder: WriteForwarder, hold_s: float) -> None:
        self._forwarder: WriteForwarder | None = forwarder
        self._timer = asyncio.get_running_loop().call_later(hold_s, self.release)

    def release(self) -> None:
        if self._forwarder is not None:
            self._timer.cancel()
            forwarder, self._forwarder = self._forwarder, None
            forwarder._release_slot()
