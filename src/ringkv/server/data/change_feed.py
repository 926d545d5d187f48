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
from collections.abc import AsyncGenerator, Iterator, Sequence
from dataclasses import dataclass

from ringkv.core.errors import Compacted, WatchDisabled
from ringkv.core.hlc import HybridLogicalClock
from ringkv.core.records import Record
from ringkv.core.tokens import token_of
from ringkv.storage import Engine
from ringkv.storage.engine import CHANGE_LOG_OFF

BATCH = 500
"""Log entries read at once (``Engine.changes`` also stops at 4 MiB)."""
BATCH_BYTES = 4 << 20
"""A batch ends once its keys and values pass this many bytes, so that it
fits a message whatever the values' sizes."""
HEARTBEAT_S = 1.0
"""A follower with nothing to send still sends its progress this often."""


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
    last_seq: int = 0
    """The number of the last log entry read: a follower of this node started
    again may ask for everything logged after it (``follow``'s ``after_seq``)."""


class ChangeFeed:
    """This node's change log, as watches follow it."""

    def __init__(self, engine: Engine, clock: HybridLogicalClock, *, floor: int = 0) -> None:
        self._engine = engine
        self._clock = clock
        self._floor = floor
        """No change at or below this version is sure to be in the log: the
        moment the node started with an empty one (a new data dir, the memory
        engine), when changes made before may be missing from it."""
        self._waiters: set[asyncio.Future[None]] = set()

    def notify(self) -> None:
        """A commit may have grown the log: wake the followers."""
        waiters, self._waiters = self._waiters, set()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def check_resumable(self, from_version: int) -> None:
        """WatchDisabled if the node keeps no log;
        Compacted if the log no longer reaches back to ``from_version``."""
        horizon = self._engine.change_log_state().horizon
        if horizon == CHANGE_LOG_OFF:
            raise WatchDisabled(
                "this node keeps no change log (it runs with --watch-log-entries 0)"
            )
        reach = max(horizon, self._floor)
        if from_version < reach:
            raise Compacted(
                f"changes after version {from_version} are no longer all in the change log, "
                f"which reaches back to version {reach}: scan for the current values "
                "and watch again from now",
                metadata={"horizon": str(reach)},
            )

    async def follow(
        self, *, spans: SpanSet, prefix: bytes, from_version: int, after_seq: int = 0
    ) -> AsyncGenerator[FeedBatch, None]:
        """The changes to keys under ``prefix`` in ``spans`` with a timestamp
        above ``from_version``, as they are logged; forever, until cancelled.

        Raises Compacted if the log is trimmed past changes not yet sent (a
        follower that fell that far behind).
        """
        self.check_resumable(from_version)
        loop = asyncio.get_running_loop()
        seq = progress = 0
        # Entries logged from now on are sent whatever their version: a
        # change that reaches this replica late (a hint, a repair) may be
        # stamped below where the watch resumed and still be news to it (a
        # key's final version, say); the coordinator drops what is not.
        # With ``after_seq`` (the last entry an earlier follower of this node
        # read), from there: what was logged between the two is not missed.
        logged = self._engine.change_log_state().last_seq
        tail_from = min(after_seq, logged) if after_seq else logged
        last_sent = loop.time()
        while True:
            # Taken before the read, so a commit after it wakes the wait below.
            ticket = loop.create_future()
            self._waiters.add(ticket)
            try:
                # Also before the read: whatever was logged by then is read now.
                mark, logged = self._clock.last, self._engine.change_log_state().last_seq
                changes = await asyncio.to_thread(self._engine.changes, seq, BATCH)
                if changes and changes[0].seq > seq + 1:
                    # Entries went unread, trimmed: harmless only if all were
                    # at or below the version resumed from.
                    self.check_resumable(from_version)
                read_from = seq
                if changes:
                    seq = changes[-1].seq
                caught_up = seq >= logged
                matching = [
                    change.record
                    for change in changes
                    if (change.seq > tail_from or change.record.version.timestamp > from_version)
                    and change.record.key.startswith(prefix)
                    and token_of(change.record.key) in spans
                ]
                pieces = list(_pieces(matching))
                for piece in pieces[:-1]:
                    # The read is not all out yet: say where it began.
                    yield FeedBatch(piece, progress, read_from)
                # The mark holds once the last piece is out.
                if caught_up:
                    progress = max(progress, mark)
                if pieces or loop.time() - last_sent >= HEARTBEAT_S:
                    yield FeedBatch(pieces[-1] if pieces else [], progress, seq)
                    last_sent = loop.time()
                if caught_up:
                    timeout = max(0.0, HEARTBEAT_S - (loop.time() - last_sent))
                    await asyncio.wait([ticket], timeout=timeout)
            finally:
                self._waiters.discard(ticket)


def _pieces(records: list[Record]) -> Iterator[list[Record]]:
    """``records`` in pieces of about ``BATCH_BYTES``, so every answer fits a message."""
    piece: list[Record] = []
    size = 0
    for record in records:
        piece.append(record)
        size += len(record.key) + len(record.value)
        if size >= BATCH_BYTES:
            yield piece
            piece, size = [], 0
    if piece:
        yield piece
