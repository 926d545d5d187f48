"""Client load for integration tests: concurrent writers and bulk read-back."""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections.abc import Callable, Mapping
from types import TracebackType

import ringkv
from ringkv.core.errors import RingkvError
from tests.support.nodes import wait_for

MAX_WRITES = 20_000
"""Upper bound on the writes one writer starts, whatever happens."""
MAX_LOAD_SECONDS = 45.0
"""Upper bound on how long one writer keeps writing, whatever happens."""


def value_for(key: str) -> bytes:
    """A value derived from the key: 32-256 bytes that differ for every key."""
    digest = hashlib.sha256(key.encode()).digest()
    return digest * (1 + digest[0] % 8)


def large_value_for(key: str) -> bytes:
    """A 128 KiB value derived from the key."""
    return hashlib.sha256(key.encode()).digest() * 4096


class ConcurrentWriter:
    """Writes unique keys with many calls in flight, on its own thread and event loop.

    A write lands in ``acked`` only after its call returned successfully. Each
    of the ``concurrency`` workers stops at its first failed call (recorded in
    ``failures``), when ``stop`` is called, or when ``max_writes`` writes were
    started or ``max_seconds`` passed in all. With ``keep_going`` a worker
    records a failure and goes on with its next key (steady load through
    failovers and membership changes).
    """

    def __init__(
        self,
        address: str,
        *,
        prefix: str,
        concurrency: int = 48,
        value_of: Callable[[str], bytes] = value_for,
        max_writes: int = MAX_WRITES,
        max_seconds: float = MAX_LOAD_SECONDS,
        call_timeout: float = 10.0,
        keep_going: bool = False,
        token_aware: bool = True,
    ) -> None:
        self.address = address
        self.prefix = prefix
        self.concurrency = concurrency
        self.value_of = value_of
        self.max_writes = max_writes
        self.max_seconds = max_seconds
        self.call_timeout = call_timeout
        self.keep_going = keep_going
        self.token_aware = token_aware
        self.acked: dict[str, bytes] = {}
        self.versions: dict[str, int] = {}
        """The version each acknowledged write was given."""
        self.attempted: list[str] = []
        self.failures: list[RingkvError] = []
        self.crash: BaseException | None = None
        self.started = 0
        self.in_flight = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"writer-{prefix}", daemon=True)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Start no more writes and wait for the calls in flight to end."""
        self._stop.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise AssertionError(f"writer {self.prefix} still running {timeout}s after stop")
        if self.crash is not None:
            raise AssertionError(f"writer {self.prefix} crashed") from self.crash

    def wait_for_acks(self, count: int, *, timeout: float = 60.0) -> None:
        """Wait until ``count`` writes were acknowledged (the writer still running)."""
        wait_for(
            lambda: len(self.acked) >= count or not self.running,
            timeout=timeout,
            what=f"{count} acknowledged writes",
        )
        assert self.running, (
            f"writer stopped after {len(self.acked)} acks: crash={self.crash!r} "
            f"failures={self.failures[:3]!r}"
        )

    def __enter__(self) -> ConcurrentWriter:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as error:  # reported by stop(), never lost in the thread
            self.crash = error

    async def _main(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        retry = ringkv.RetryPolicy(attempts=1)  # a failed call is a failure, not a retry
        async with ringkv.AsyncClient(
            self.address, timeout=self.call_timeout, retry=retry, token_aware=self.token_aware
        ) as client:
            await asyncio.gather(
                *(self._worker(client, worker, deadline) for worker in range(self.concurrency))
            )

    async def _worker(self, client: ringkv.AsyncClient, worker: int, deadline: float) -> None:
        sequence = 0
        while (
            not self._stop.is_set()
            and self.started < self.max_writes
            and time.monotonic() < deadline
        ):
            key = f"{self.prefix}/{worker:03d}/{sequence:06d}"
            sequence += 1
            value = self.value_of(key)
            self.attempted.append(key)
            self.started += 1
            self.in_flight += 1
            try:
                version = await client.set(key, value)
            except RingkvError as error:
                self.failures.append(error)
                if not self.keep_going:
                    return
                await asyncio.sleep(0.05)
                continue
            finally:
                self.in_flight -= 1
            self.versions[key] = version
            self.acked[key] = value


def read_back(address: str, keys: list[str], *, concurrency: int = 32) -> dict[str, bytes | None]:
    """The value of every key (None if absent), read with many calls in flight."""

    async def read_all() -> dict[str, bytes | None]:
        found: dict[str, bytes | None] = {}
        limit = asyncio.Semaphore(concurrency)
        async with ringkv.AsyncClient(address, timeout=10.0) as client:

            async def read(key: str) -> None:
                async with limit:
                    entry = await client.get(key)
                found[key] = None if entry is None else entry.value

            await asyncio.gather(*(read(key) for key in keys))
        return found

    return asyncio.run(read_all())


def assert_all_present(address: str, expected: Mapping[str, bytes]) -> None:
    """Every key in ``expected`` is stored with exactly its value."""
    found = read_back(address, list(expected))
    missing = [key for key in expected if found[key] is None]
    wrong = [key for key in expected if found[key] is not None and found[key] != expected[key]]
    assert not missing, (
        f"{len(missing)} of {len(expected)} acknowledged writes missing, e.g. {missing[:5]}"
    )
    assert not wrong, f"{len(wrong)} of {len(expected)} with a wrong value, e.g. {wrong[:5]}"
