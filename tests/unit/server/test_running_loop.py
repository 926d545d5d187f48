"""The node's running-loop lookup (``ringkv.server.running_loop``): the loop
from memory on its own thread while it runs, asyncio's answer everywhere else."""

from __future__ import annotations

import asyncio
import sys
import threading

import pytest

from ringkv.server import running_loop

pytestmark = pytest.mark.skipif(sys.version_info >= (3, 12), reason="3.11's lookup only")


def lookup_elsewhere() -> str:
    found: list[str] = []

    def look() -> None:
        try:
            asyncio.get_running_loop()
            found.append("a loop")
        except RuntimeError:
            found.append("no loop")

    thread = threading.Thread(target=look)
    thread.start()
    thread.join()
    return found[0]


def test_the_loop_is_answered_on_its_thread_and_nowhere_else(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    asked: list[str] = []
    real = running_loop.ASYNCIO_LOOKUP

    def asyncio_lookup() -> asyncio.AbstractEventLoop:
        asked.append(threading.current_thread().name)
        return real()

    monkeypatch.setattr(running_loop, "ASYNCIO_LOOKUP", asyncio_lookup)

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        running_loop.remember(loop)
        try:
            assert asyncio.get_running_loop() is loop
            assert asyncio.events.get_running_loop() is loop
            assert asked == []  # from memory: asyncio's own lookup was not asked
            # asyncio's own helpers, which look it up, still work.
            await asyncio.sleep(0)
            assert await asyncio.wait_for(asyncio.shield(asyncio.sleep(0, "ok")), 1) == "ok"
            assert await asyncio.to_thread(lookup_elsewhere) == "no loop"
            assert len(asked) == 1  # the other thread asked asyncio
        finally:
            running_loop.forget()
            asyncio.get_running_loop = asyncio.events.get_running_loop = real
        assert asyncio.get_running_loop is real

    asyncio.run(scenario())


def test_once_the_loop_stops_the_lookup_says_so() -> None:
    loop = asyncio.new_event_loop()

    async def install() -> None:
        running_loop.remember(loop)

    try:
        loop.run_until_complete(install())
        with pytest.raises(RuntimeError):
            asyncio.get_running_loop()
    finally:
        running_loop.forget()
        loop.close()
