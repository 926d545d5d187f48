"""A running-loop lookup without a system call, for the node's event loop.

CPython 3.11's ``asyncio.get_running_loop()`` calls ``getpid()`` every time,
to notice a fork (3.12 dropped it, and glibc no longer caches the pid).
grpc.aio and asyncio look the loop up many times per request: the system
call was 4-7% of a node's event-loop samples (``bench/flame.py``). A node
never forks once its loop runs, so on its loop's thread the lookup can
answer from memory.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Callable

ASYNCIO_LOOKUP: Callable[[], asyncio.AbstractEventLoop] = asyncio.events.get_running_loop
"""asyncio's own lookup, as imported."""


def remember(loop: asyncio.AbstractEventLoop) -> None:
    """Answer ``asyncio.get_running_loop()`` on this thread from memory while
    ``loop`` runs; elsewhere, and once it stops, as asyncio does.

    Call it from within ``loop``. Replaces the module attribute that asyncio's
    own Python code and grpc.aio look up at each call; C code inside asyncio
    keeps its own lookup.
    """
    if sys.version_info >= (3, 12):  # pragma: no cover - no system call there
        return
    thread = threading.get_ident()

    def get_running_loop() -> asyncio.AbstractEventLoop:
        if threading.get_ident() == thread and loop.is_running():
            return loop
        return ASYNCIO_LOOKUP()

    asyncio.get_running_loop = asyncio.events.get_running_loop = get_running_loop


def forget() -> None:
    """Put asyncio's own lookup back."""
    asyncio.get_running_loop = asyncio.events.get_running_loop = ASYNCIO_LOOKUP
