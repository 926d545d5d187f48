"""Records, the writes that change them, and the rules that order them."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ringkv.core.errors import PreconditionFailed
from ringkv.core.hlc import Version

NO_EXPIRY = 0
EXPECT_ABSENT = -1


@dataclass(frozen=True, slots=True)
class Record:
    """One version of one key: a value, or a tombstone that says it was deleted."""

    key: bytes
    """The key, UTF-8 encoded."""
    value: bytes
    """The value; empty for a tombstone."""
    version: Version
    """Orders the versions of one key; the largest wins."""
    tombstone: bool = False
    """Whether this version deletes the key."""
    expires_at_ms: int = NO_EXPIRY
    """Unix milliseconds after which the value reads as absent; 0 for never."""

    def is_live(self, now_ms: int) -> bool:
        """Whether a read at ``now_ms`` sees this record as a present value."""
        if self.tombstone:
            return False
        return self.expires_at_ms == NO_EXPIRY or now_ms < self.expires_at_ms


@dataclass(frozen=True, slots=True)
class Mutation:
    """A record to store if it is newer than the stored one."""

    record: Record
    hint_for: str | None = None
    """Hold the record as a hint for this (down) node instead of storing it
    as this node's own replica."""
    delivered: bool = False
    """With ``hint_for``: the hint reached its node, so drop it if it is still
    this version (a newer hint that arrived meanwhile stays)."""


class Outcome(enum.Enum):
    """What a storage engine did with one mutation."""

    APPLIED = "applied"
    """The record is now the key's newest version (for a delivered hint: the
    hint is gone)."""
    STALE = "stale"
    """A newer (or equal) version was already stored; nothing changed."""


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """The outcome of one mutation, with the record it replaced or lost to."""

    outcome: Outcome
    previous: Record | None
    """The record stored before this mutation, if any."""

    def previous_was_live(self, now_ms: int) -> bool:
        """Whether a live value stood before this mutation."""
        return self.previous is not None and self.previous.is_live(now_ms)


@dataclass(frozen=True, slots=True)
class ReplicaAck:
    """A replica's answer to a coordinated write."""

    replaced_live: bool
    """Whether a live value stood before the write."""
    newer: int = 0
    """0 if the record is now held; otherwise the timestamp of the newer
    version that beat it, which the coordinator must write past."""


def ack(record: Record, result: ApplyResult, now_ms: int) -> ReplicaAck:
    """The answer a replica gives for ``record`` after applying it.

    An equal version is the same write arriving again: it counts as held.
    """
    previous = result.previous
    beaten = previous is not None and previous.version > record.version
    return ReplicaAck(
        replaced_live=result.previous_was_live(now_ms),
        newer=previous.version.timestamp if beaten and previous is not None else 0,
    )


def resolve(mutation: Mutation, current: Record | None) -> ApplyResult:
    """Decide a mutation against the stored record: the rule every engine applies."""
    if mutation.delivered:
        same = current is not None and current.version == mutation.record.version
        return ApplyResult(Outcome.APPLIED if same else Outcome.STALE, current)
    if current is not None and current.version >= mutation.record.version:
        return ApplyResult(Outcome.STALE, current)
    return ApplyResult(Outcome.APPLIED, current)


def check_precondition(expected: int | None, current: Record | None, now_ms: int) -> None:
    """Raise PreconditionFailed unless the newest record satisfies a conditional write.

    ``expected`` None: unconditional. EXPECT_ABSENT: no live value may exist.
    Otherwise the live value's version timestamp must equal it. Expired values
    and tombstones count as absent.
    """
    if expected is None:
        return
    live = current if current is not None and current.is_live(now_ms) else None
    if expected == EXPECT_ABSENT and live is None:
        return
    if live is not None and live.version.timestamp == expected:
        return
    wanted = "absent" if expected == EXPECT_ABSENT else f"version {expected}"
    found = f"version {live.version.timestamp}" if live is not None else "absent"
    raise PreconditionFailed(
        f"expected the key {wanted}, found it {found}",
        metadata={
            "expected": str(expected),
            "actual": str(live.version.timestamp if live is not None else 0),
        },
    )
