"""Hybrid logical clocks and record versions.

A timestamp is one integer: the physical milliseconds shifted left by
``LOGICAL_BITS``, plus a logical counter in the low bits. Ticking takes the
larger of "last + 1" and "now"; observing a remote timestamp moves the clock
up to it. So a write causally after another always gets a larger timestamp,
whatever the wall clocks say, and timestamps stay close to real time.
"""

from __future__ import annotations

from collections.abc import Callable
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
    """The clock of one node. Not thread-safe: feed it from one thread.

    ``now_ms`` (this node's wall clock) and ``max_peer_lead_ms`` bound what
    ``observe_peer`` adopts from other nodes' messages: one clock far ahead
    must not drag every node's clock forward for good (all would then tick
    logical counters from the same future instant, in no real-time order).
    """

    def __init__(
        self,
        node_id: str,
        *,
        now_ms: Callable[[], int] | None = None,
        max_peer_lead_ms: int = 0,
    ) -> None:
        self.node_id = node_id
        self._last = 0
        self._now_ms = now_ms
        self._max_peer_lead_ms = max_peer_lead_ms

    @property
    def last(self) -> int:
        """The largest timestamp this clock has issued or observed."""
        return self._last

    def tick(self, now_ms: int) -> Version:
        """A new version, larger than every one issued or observed before."""
        self._last = max(self._last + 1, now_ms << LOGICAL_BITS)
        return Version(self._last, self.node_id)

    def observe(self, timestamp: int) -> None:
        """Move the clock up to a record's version: a write that follows it must be newer."""
        self._last = max(self._last, timestamp)

    def observe_peer(self, timestamp: int) -> None:
        """Move the clock up to a peer's clock from a message, but not past this
        node's wall clock plus ``max_peer_lead_ms`` (when both are set).

        Record versions are observed in full (``observe``): ordering on a key
        rests on them, not on this gossip.
        """
        if self._now_ms is not None and self._max_peer_lead_ms > 0:
            ceiling = (self._now_ms() + self._max_peer_lead_ms) << LOGICAL_BITS
            timestamp = min(timestamp, ceiling)
        self.observe(timestamp)
