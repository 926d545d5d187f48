"""Hybrid logical clocks and record versions.

A timestamp is one integer: the physical milliseconds shifted left by
``LOGICAL_BITS``, plus a logical counter in the low bits. Ticking takes the
larger of "last + 1" and "now"; observing a remote timestamp moves the clock
up to it. So a write causally after another always gets a larger timestamp,
whatever the wall clocks say, and timestamps stay close to real time.
"""

from __future__ import annotations

from dataclasses import dataclass

LOGICAL_BITS = 16


def physical_ms(timestamp: int) -> int:
    """The wall-clock milliseconds part of a timestamp."""
    return timestamp >> LOGICAL_BITS


@dataclass(frozen=True, order=True, slots=True)
class Version:
    """The version of a record: larger wins (last-writer-wins).

    Ties between timestamps are broken by node id, so two nodes never give
    the same key two different values under one version.
    """

    timestamp: int
    """A hybrid logical clock timestamp."""
    node_id: str
    """The node that assigned the timestamp."""


class HybridLogicalClock:
    """The clock of one node. Not thread-safe: feed it from one thread."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self._last = 0

    @property
    def last(self) -> int:
        """The largest timestamp this clock has issued or observed."""
        return self._last

    def tick(self, now_ms: int) -> Version:
        """A new version, larger than every one issued or observed before."""
        self._last = max(self._last + 1, now_ms << LOGICAL_BITS)
        return Version(self._last, self.node_id)

    def observe(self, timestamp: int) -> None:
        """Move the clock past a timestamp seen in a message or on disk."""
        self._last = max(self._last, timestamp)
