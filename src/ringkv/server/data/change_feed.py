"""Following this node's change log: what one replica sends a watch.

The engine logs every record it stores as its key's newest version, in the
order stored (``Engine.changes``). A follower reads the log from its start,
keeps the changes above the version it resumes from that fall in its token
spans and prefix, then waits for commits and reads on. Each batch comes
with a progress mark: this replica's clock when it had read its whole log
up to then, so every change it stored with a timestamp up to the mark has
been sent, but for writes stamped earlier that were still in flight to it;
the watch coordinator allows ``ringkv.core.watch.RESUME_MARGIN`` for those.
"""

from __future__ import annotations

import asyncio
from bisect import bisect_right
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass

from ringkv.core.errors import Compacted, PreconditionFailed
from ringkv.core.hlc import HybridLogicalClock
from ringkv.core.records import Record
from ringkv.core.tokens import token_of
from ringkv.storage import Engine
from ringkv.storage.engine import CHANGE_LOG_OFF

BATCH = 500
"""Log entries read at once."""
HEARTBEAT_S = 1.0
"""A follower with nothing to send still sends its progress this often."""


class ChangeSignal:
    """Wakes this node's followers when a commit may have grown the change log."""

    def __init__(self) -> None:
        self._waiters: set[asyncio.Future[None]] = set()

    def ticket(self) -> asyncio.Future[None]:
        """A future the next ``notify`` completes; take it before reading the
        log, so a commit between the read and the wait is not missed."""
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.add(waiter)
        return waiter

    def notify(self) -> None:
        waiters, self._waiters = self._waiters, set()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def forget(self, waiter: asyncio.Future[None]) -> None:
        self._waiters.discard(waiter)


@dataclass(frozen=True, slots=True)
class SpanSet:
    """Disjoint token spans ``start <= t < end``."""

    starts: tuple[int, ...]
    ends: tuple[int, ...]

    @classmethod
    def of(cls, spans: Sequence[tuple[int, int]]) -> SpanSet:
        ordered = sorted(spans)
        return cls(tuple(s for s, _ in ordered), tuple(e for _, e in ordered))

    def __contains__(self, token: int) -> bool:
        index = bisect_right(self.starts, token) - 1
        return index >= 0 and token < self.ends[index]


@dataclass(frozen=True, slots=True)
class FeedBatch:
    records: list[Record]
    """Changes in the order this replica stored them: each key's in version order."""
    progress: int
    """Every change stored here with a timestamp up to this one has been sent
    (but for writes in flight; 0 until the follower has read the whole log)."""


def check_resumable(engine: Engine, from_version: int) -> None:
    """PreconditionFailed if the engine keeps no log; Compacted if the log
    no longer reaches back to ``from_version``."""
    horizon = engine.change_log_state().horizon
    if horizon == CHANGE_LOG_OFF:
        raise PreconditionFailed(
            "this node keeps no change log (it runs with --watch-log-entries 0)",
            reason="WATCH_DISABLED",
        )
    if from_version < horizon:
        raise Compacted(
            f"changes after version {from_version} are no longer all in the change log, "
            f"which reaches back to version {horizon}: scan for the current values "
            "and watch again from now",
            metadata={"horizon": str(horizon)},
        )


async def follow(
    engine: Engine,
    signal: ChangeSignal,
    clock: HybridLogicalClock,
    *,
    spans: SpanSet,
    prefix: bytes,
    from_version: int,
) -> AsyncGenerator[FeedBatch, None]:
    """The changes to keys under ``prefix`` in ``spans`` with a timestamp
    above ``from_version``, as they are logged; forever, until cancelled.

    Raises Compacted if the log is trimmed past changes not yet sent (a
    follower that fell that far behind).
    """
    check_resumable(engine, from_version)
    loop = asyncio.get_running_loop()
    seq = 0
    progress = 0
    last_sent = loop.time()
    while True:
        ticket = signal.ticket()
        try:
            # Taken before the read: whatever was stored by then is read now.
            mark = clock.last
            changes = await asyncio.to_thread(engine.changes, seq, BATCH)
            if changes and changes[0].seq > seq + 1:
                # Entries went unread, trimmed: harmless only if all were
                # at or below the version resumed from.
                check_resumable(engine, from_version)
            if changes:
                seq = changes[-1].seq
            caught_up = len(changes) < BATCH
            if caught_up:
                progress = max(progress, mark)
            records = [
                change.record
                for change in changes
                if change.record.version.timestamp > from_version
                and change.record.key.startswith(prefix)
                and token_of(change.record.key) in spans
            ]
            if records or loop.time() - last_sent >= HEARTBEAT_S:
                yield FeedBatch(records, progress)
                last_sent = loop.time()
            if caught_up:
                timeout = max(0.0, HEARTBEAT_S - (loop.time() - last_sent))
                await asyncio.wait([ticket], timeout=timeout)
        finally:
            signal.forget(ticket)
