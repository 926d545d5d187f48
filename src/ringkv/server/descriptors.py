"""File descriptors: every connection holds one, and a node out of them stops
accepting without a word from grpc. The node takes the most the system lets
it have, and says so in its log before it runs out."""

from __future__ import annotations

import asyncio
import logging
import os
import resource
from pathlib import Path

log = logging.getLogger(__name__)

WARN_FRACTION = 0.8
"""Open descriptors, as a fraction of the limit, at which the node warns."""
_OPEN_FDS = Path("/proc/self/fd")


def raise_limit() -> int:
    """Lift this process's soft limit on open files to its hard limit; the
    limit now in effect."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):  # a container may refuse; keep what we have
            pass
    return soft


def open_count() -> int | None:
    """How many descriptors this process holds; None where /proc does not tell."""
    try:
        return len(os.listdir(_OPEN_FDS))
    except OSError:
        return None


async def watch(limit: int, interval_s: float = 5.0) -> None:
    """Log a warning when open descriptors pass ``WARN_FRACTION`` of ``limit``
    (once per crossing), and when they fall back."""
    warned = False
    while True:
        count = open_count()
        if count is None:
            return
        high = count >= WARN_FRACTION * limit
        if high and not warned:
            log.warning(
                "open file descriptors near the limit: new connections will fail",
                extra={"open": count, "limit": limit},
            )
        elif warned and not high:
            log.info("open file descriptors back under the limit", extra={"open": count})
        warned = high
        await asyncio.sleep(interval_s)
