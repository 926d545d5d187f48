"""A watch kept open through a fault schedule, and what its events must show.

The watch runs in a thread of its own through the SDK (``AsyncClient.watch``,
which reconnects through the other endpoints), from a version taken before
the workloads start. Afterwards:

- each key's events come in strictly increasing version order, none twice;
- once the faults healed and the replicas were repaired, the watch reports
  each key's final live version (it never stops short of the newest);
- the watch never ended with an error.

How many acknowledged writes it delivered is reported, not judged: a
version overwritten before it reached the replica a watch follows is
skipped by design (README, "What a watch delivers").
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import ringkv
from ringkv.core.errors import RingkvError
from ringkv.core.history import FinalRead, HistoryOp

START_WAIT_S = 30.0
"""How long the watch may take to start."""
FINAL_WAIT_S = 30.0
"""How long the watch may take to report the final versions after the heal."""


@dataclass(frozen=True, slots=True)
class WatchReport:
    events: int
    acked_delivered: int
    acked: int
    problems: list[str]

    def line(self) -> str:
        return (
            f"watch events {self.events}, acked writes delivered "
            f"{self.acked_delivered}/{self.acked}"
        )


class WatchObserver:
    """One watch of ``prefix`` for the length of a run."""

    def __init__(self, endpoints: Sequence[str], prefix: str) -> None:
        self._endpoints = list(endpoints)
        self._prefix = prefix
        self._events: list[tuple[str, int, str]] = []
        self._lock = threading.Lock()
        self.error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name="watch observer", daemon=True)

    def start(self) -> None:
        """Start watching from now, and return once the watch reports a write
        made after it started (the nodes' logs begin when they start, so a
        watch cannot reach back before that)."""
        self._thread.start()
        if not self._started.wait(timeout=START_WAIT_S):
            raise AssertionError("the watch thread never started")
        marker = f"{self._prefix}watch-start"
        deadline = time.monotonic() + START_WAIT_S
        with ringkv.Client(self._endpoints) as client:
            while time.monotonic() < deadline and self.error is None:
                try:
                    version = client.set(marker, "x")
                except RingkvError:
                    time.sleep(0.2)  # the cluster is still settling: ask again
                    continue
                seen = time.monotonic() + 1.0
                while time.monotonic() < seen:
                    if (marker, version, "put") in self.events():
                        return
                    time.sleep(0.05)
        raise AssertionError(f"the watch never reported a write (error: {self.error!r})")

    def _run(self) -> None:
        async def watch() -> None:
            async with ringkv.AsyncClient(self._endpoints, timeout=3.0) as client:
                async for event in client.watch(self._prefix):
                    with self._lock:
                        self._events.append((event.key, event.version, event.kind))

        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._task = asyncio.current_task()
            self._started.set()
            try:
                await watch()
            except asyncio.CancelledError:
                pass
            except BaseException as error:  # reported by check(), not lost in a thread
                self.error = error

        asyncio.run(main())

    def events(self) -> list[tuple[str, int, str]]:
        with self._lock:
            return list(self._events)

    def stop(self) -> None:
        """Cancel the watch and wait for its thread; idempotent."""
        if not self._thread.is_alive():
            return
        if self._loop is not None and self._task is not None:
            self._loop.call_soon_threadsafe(self._task.cancel)
        self._thread.join(timeout=10)

    def check(self, history: Iterable[HistoryOp], final: Mapping[str, FinalRead]) -> WatchReport:
        """Wait (bounded) for the final versions, stop, and judge the events."""
        wanted = {
            (key, read.version)
            for key, read in final.items()
            if read.value is not None and read.version is not None
        }
        deadline = time.monotonic() + FINAL_WAIT_S
        while self.error is None and time.monotonic() < deadline:
            if wanted <= {(key, version) for key, version, _ in self.events()}:
                break
            time.sleep(0.2)
        self.stop()
        events = self.events()
        seen = {(key, version) for key, version, _ in events}
        problems: list[str] = []
        if self.error is not None:
            problems.append(f"the watch ended with {self.error!r}")
        missing = sorted(wanted - seen)
        if missing:
            problems.append(
                f"the watch never reported the final version of {len(missing)} keys "
                f"(first: {missing[0][0]} at {missing[0][1]})"
            )
        last: dict[str, int] = {}
        disorder = 0
        for key, version, _ in events:
            if key in last and version <= last[key]:
                disorder += 1
            last[key] = max(version, last.get(key, 0))
        if disorder:
            problems.append(f"{disorder} watch events out of version order or repeated")
        acked = {
            (op.key, op.version)
            for op in history
            if op.is_write and op.ok and op.version is not None
        }
        return WatchReport(len(events), len(acked & seen), len(acked), problems)
