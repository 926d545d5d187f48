"""This node's replica of the data: versioned reads and writes on its engine."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ringkv.core.errors import InternalError, PreconditionFailed
from ringkv.core.hlc import HybridLogicalClock
from ringkv.core.records import NO_EXPIRY, Mutation, Outcome, Record
from ringkv.server.commit import CommitQueue
from ringkv.storage import Engine

# A write loses to a stored version only when this node's clock ran behind
# what it stored before (a restart after the wall clock stepped back); after
# observing that version the clock is ahead of it, so one retry suffices.
_MAX_WRITE_ATTEMPTS = 2


@dataclass(frozen=True, slots=True)
class WriteResult:
    """A write that this replica applied."""

    record: Record
    replaced_live: bool
    """Whether a live value stood before it."""


class LocalStore:
    """Reads and writes of this node's engine, versioned by its clock."""

    def __init__(
        self,
        engine: Engine,
        commits: CommitQueue,
        clock: HybridLogicalClock,
        now_ms: Callable[[], int],
    ) -> None:
        self._engine = engine
        self._commits = commits
        self._clock = clock
        self._now_ms = now_ms

    def read(self, key: bytes) -> Record | None:
        """The key's live record, or None when it is absent, deleted or expired."""
        record = self._engine.get(key)
        if record is None or not record.is_live(self._now_ms()):
            return None
        return record

    async def write(
        self,
        key: bytes,
        value: bytes,
        *,
        tombstone: bool = False,
        ttl_ms: int = 0,
        expected: int | None = None,
    ) -> WriteResult:
        """Write a new version of a key, newer than any this node has stored."""
        for _ in range(_MAX_WRITE_ATTEMPTS):
            now = self._now_ms()
            record = Record(
                key=key,
                value=value,
                version=self._clock.tick(now),
                tombstone=tombstone,
                expires_at_ms=now + ttl_ms if ttl_ms else NO_EXPIRY,
            )
            result = await self._commits.submit(Mutation(record, expected, now))
            if result.outcome is Outcome.APPLIED:
                return WriteResult(record, result.previous_was_live(now))
            if result.outcome is Outcome.PRECONDITION_FAILED:
                raise _precondition_failed(expected, result.previous, now)
            assert result.previous is not None  # STALE always names the winner
            self._clock.observe(result.previous.version.timestamp)
        raise InternalError(f"could not order a write after {_MAX_WRITE_ATTEMPTS} attempts")


def _precondition_failed(expected: int | None, current: Record | None, now_ms: int) -> Exception:
    live = current is not None and current.is_live(now_ms)
    actual = current.version.timestamp if live and current is not None else 0
    wanted = "absent" if expected == -1 else f"version {expected}"
    found = f"version {actual}" if live else "absent"
    return PreconditionFailed(
        f"expected the key {wanted}, found it {found}",
        metadata={"expected": str(expected), "actual": str(actual)},
    )
