"""The saved clock mark: real files in a temporary data dir, a clock the test moves."""

from __future__ import annotations

import asyncio
from pathlib import Path

from ringkv.core.hlc import LOGICAL_BITS, MARK_WINDOW_MS, HybridLogicalClock
from ringkv.server.cluster.clock_mark import FILE_NAME, ClockMark

NOW_MS = 1_700_000_000_000


def test_a_restarted_clock_starts_past_every_timestamp_issued_before(tmp_path: Path) -> None:
    async def scenario() -> None:
        clock = HybridLogicalClock("a")
        mark = ClockMark(tmp_path, clock, lambda: NOW_MS)
        mark.resume()
        await mark.stay_ahead()
        issued = [clock.tick(NOW_MS).timestamp for _ in range(1_000)]
        # Restarted with the wall clock a minute behind.
        restarted = HybridLogicalClock("a")
        ClockMark(tmp_path, restarted, lambda: NOW_MS - 60_000).resume()
        assert restarted.tick(NOW_MS - 60_000).timestamp > max(issued)

    asyncio.run(scenario())


def test_a_clock_that_jumped_past_the_mark_moves_it_before_it_stamps(tmp_path: Path) -> None:
    async def scenario() -> None:
        clock = HybridLogicalClock("a")
        mark = ClockMark(tmp_path, clock, lambda: NOW_MS)
        await mark.stay_ahead()
        assert mark.allows_next()
        saved = int((tmp_path / FILE_NAME).read_text())
        # A version observed from a peer far ahead moves the clock past the mark.
        clock.observe(saved + (MARK_WINDOW_MS << LOGICAL_BITS))
        assert mark.allows_next()
        assert int((tmp_path / FILE_NAME).read_text()) > clock.tick(NOW_MS).timestamp

    asyncio.run(scenario())


def test_a_node_without_a_data_dir_keeps_no_mark(tmp_path: Path) -> None:
    async def scenario() -> None:
        clock = HybridLogicalClock("a")
        mark = ClockMark(None, clock, lambda: NOW_MS)
        mark.resume()
        await mark.stay_ahead()
        clock.observe(1 << 62)
        assert mark.allows_next()
        assert list(tmp_path.iterdir()) == []

    asyncio.run(scenario())
