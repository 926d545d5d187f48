"""A bound kept in the data dir above every timestamp this node has issued.

The rule is ``ringkv.core.hlc.next_mark``: a version is (timestamp, node id),
so a node that stamped two writes of one key alike would have the later taken
for a copy of the earlier and lost wherever the earlier arrived first. The
hybrid clock restarts from the wall clock, which may be behind what the node
issued before it stopped. So at start the clock moves past the saved mark,
and before every write the coordinator has the mark moved ahead if the clock
came within half a window of it: one small file write every few seconds of
writing, none otherwise. A stamp that would still reach the mark (the clock
jumped past a version observed far ahead since the write began) moves it
first, on the event loop. Nodes on the memory engine keep no mark (they keep
no data either).
"""

from __future__ import annotations

import asyncio
import errno
import threading
from collections.abc import Callable
from pathlib import Path

from ringkv.core.errors import StorageFull
from ringkv.core.hlc import LOGICAL_BITS, HybridLogicalClock, next_mark
from ringkv.server.cluster.durable_file import replace_durably
from ringkv.storage.files import CLOCK_MARK_FILE

FILE_NAME = CLOCK_MARK_FILE


class ClockMark:
    """The saved mark of one node's clock."""

    def __init__(
        self, data_dir: Path | None, clock: HybridLogicalClock, now_ms: Callable[[], int]
    ) -> None:
        self._path = None if data_dir is None else data_dir / FILE_NAME
        self._clock = clock
        self._now_ms = now_ms
        self._saved = 0
        # Saves come from the event loop (rarely) and a worker thread: one at
        # a time, and never one smaller than the mark on disk.
        self._saving = threading.Lock()

    def resume(self) -> None:
        """Move the clock past the saved mark (at start, before any stamp)."""
        if self._path is not None and self._path.exists():
            self._saved = int(self._path.read_text())
            self._clock.observe(self._saved)

    async def stay_ahead(self) -> None:
        """Before a write: move the mark a window ahead, off the event loop, once
        the clock came within half a window of it (every few seconds of writing).

        Raises StorageFull when the disk cannot take the move and the next
        stamp would reach the mark.
        """
        if self._path is None or self._next() is None:
            return
        try:
            await asyncio.to_thread(self._move)
        except OSError as error:
            if error.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            if not self._below_mark():
                raise StorageFull(
                    f"cannot save the clock mark: {error.strerror or error}"
                ) from error

    def allows_next(self) -> bool:
        """Whether the clock's next stamp stays below the saved mark, moving the
        mark first (on the event loop: a small synced file) when the clock
        jumped that far since the write began, past a version observed far
        ahead. False only when the disk cannot take the move."""
        if self._path is None or self._below_mark():
            return True
        try:
            self._move()
        except OSError as error:
            if error.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
        return self._below_mark()

    def _below_mark(self) -> bool:
        return max(self._clock.last + 1, self._now_ms() << LOGICAL_BITS) < self._saved

    def _next(self) -> int | None:
        return next_mark(self._clock.last, self._now_ms(), self._saved)

    def _move(self) -> None:
        """Save the next mark, unless a move that waited for the lock made it
        needless (the writes that all found the mark near move it once)."""
        assert self._path is not None
        with self._saving:
            mark = self._next()
            if mark is not None:
                replace_durably(self._path, str(mark))
                self._saved = mark
