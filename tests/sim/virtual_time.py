"""An asyncio event loop whose clock jumps instead of waiting.

Real asyncio code (``asyncio.sleep``, ``wait_for``, timeouts) runs on it
unchanged: when nothing is ready, the loop's clock moves straight to its
next timer instead of blocking in the selector. With no real I/O, a run is a
pure function of its inputs, thirty simulated seconds take a fraction of one,
and the order of events is asyncio's own (ready callbacks first in, first
out; timers by due time).

``after_step`` runs after every turn of the loop, once its ready callbacks
have run: a simulation checks its invariants there, at every instant of
simulated time at which anything happened.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class _JumpingSelector(selectors.SelectSelector):
    """Polls without blocking, and moves the clock by the timeout instead."""

    def __init__(self, clock: list[float]) -> None:
        super().__init__()
        self._clock = clock

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(0)
        if ready:
            return ready
        if timeout is None:
            # Nothing ready and no timer: every task waits on something that
            # can never happen, a hang in real time.
            raise RuntimeError("the simulation is stuck: no task can make progress")
        self._clock[0] += timeout
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """A selector event loop on simulated time, starting at ``start_s``."""

    def __init__(self, start_s: float = 1_000.0) -> None:
        self._now = [start_s]
        super().__init__(_JumpingSelector(self._now))
        self.after_step: Callable[[], None] = lambda: None

    def time(self) -> float:
        return self._now[0]

    def _run_once(self) -> None:
        super()._run_once()  # type: ignore[misc]
        self.after_step()


def run_in_virtual_time(main: Callable[[VirtualTimeLoop], Coroutine[Any, Any, T]]) -> T:
    """Run ``main(loop)``'s coroutine to its end on a fresh virtual-time loop."""
    loop = VirtualTimeLoop()
    try:
        return loop.run_until_complete(main(loop))
    finally:
        loop.after_step = lambda: None
        loop.run_until_complete(_cancel_the_rest())
        loop.close()


async def _cancel_the_rest() -> None:
    left = asyncio.all_tasks() - {asyncio.current_task()}
    for task in left:
        task.cancel()
    await asyncio.gather(*left, return_exceptions=True)
