"""A bound kept in the data dir above every timestamp this node has issued.

The rule is ``ringkv.core.hlc.next_mark``: a version is (timestamp, node id),
so a node that stamped two writes of one key alike would have the later taken
for a copy of the earlier and lost wherever the earlier arrived first. The
hybrid clock restarts from the wall clock, which may be behind what the node
issued before it stopped. So at start the clock moves past the saved mark,
and before every write the coordinator has the mark moved ahead if the clock
came within half a window of it: one small file write every few seconds of
writing, none otherwise. A stamp that would still reach the mark (the clock
jumped past an observed version since the write began) is refused, and the
mark moves in the background. Nodes on the memory engine keep no mark (they keep
no data either).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
from collections.abc import Callable
from pathlib import Path

from ringkv.core.errors import StorageFull
from ringkv.core.hlc import LOGICAL_BITS, HybridLogicalClock, next_mark
from ringkv.server.cluster.durable_file import replace_durably

FILE_NAME = "clock.mark"


class ClockMark:
    """The saved mark of one node's clock."""

    def __init__(
        self, data_dir: Path | None, clock: HybridLogicalClock, now_ms: Callable[[], int]
    ) -> None:
        self._path = None if data_dir is None else data_dir / FILE_NAME
        self._clock = clock
        self._now_ms = now_ms
        self._mark = 0
        self._moving = asyncio.Lock()
        self._moving_task: asyncio.Task[None] | None = None

    def resume(self) -> None:
        """Move the clock past the saved mark (at start, before any stamp)."""
        if self._path is not None and self._path.exists():
            self._mark = int(self._path.read_text())
            self._clock.observe(self._mark)

    def allows_next(self) -> bool:
        """Whether the clock's next stamp stays below the saved mark. When it
        would not (the clock jumped past an observed version since the last
        write began), the mark is moved in the background and this says no."""
        if self._path is None:
            return True
        upcoming = max(self._clock.last + 1, self._now_ms() << LOGICAL_BITS)
        if upcoming < self._mark:
            return True
        if self._moving_task is None or self._moving_task.done():
            self._moving_task = asyncio.get_running_loop().create_task(self._move())
        return False

    async def _move(self) -> None:
        # A full disk refuses the write that waits for the mark, not this.
        with contextlib.suppress(StorageFull):
            await self.stay_ahead()

    async def stay_ahead(self) -> None:
        """Return once the saved mark is far enough ahead of the clock to stamp below it."""
        if self._path is None or self._next() is None:
            return
        async with self._moving:
            mark = self._next()
            if mark is None:
                return
            try:
                await asyncio.to_thread(replace_durably, self._path, str(mark))
            except OSError as error:
                if error.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                if max(self._clock.last, self._now_ms() << LOGICAL_BITS) + 1 < self._mark:
                    return  # Still below the saved mark: stamp, and try again next write.
                raise StorageFull(
                    f"cannot save the clock mark: {error.strerror or error}"
                ) from error
            self._mark = mark

    def _next(self) -> int | None:
        return next_mark(self._clock.last, self._now_ms(), self._mark)
