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
MARK_WINDOW_MS = 10_000
"""How far past the clock a node's persisted mark is put (``next_mark``)."""


def next_mark(last: int, now_ms: int, mark: int) -> int | None:
    """The new persisted mark once the next stamp (above ``last``, at least
    ``now_ms``) would come within half a window of ``mark``; None while the
    mark is far enough ahead.

    A version is (timestamp, node id): two writes of one key that one node
    stamped alike are one version to every replica, and the later is taken
    for a copy of the earlier. The clock restarts from the wall clock, which
    may be behind what the node issued before it stopped (its clock ran ahead
    observing peers, or the wall clock was stepped back). So a node keeps a
    mark above every timestamp it issues, moved ahead by this rule before a
    stamp could reach it, and its clock starts past the mark.
    """
    upcoming = max(last, now_ms << LOGICAL_BITS)
    if upcoming + ((MARK_WINDOW_MS // 2) << LOGICAL_BITS) < mark:
        return None
    return upcoming + (MARK_WINDOW_MS << LOGICAL_BITS)


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
        self.peer_clocks_refused = 0
        """Peer clocks seen past the ceiling of ``observe_peer``, not adopted."""

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
            if timestamp > ceiling:
                self.peer_clocks_refused += 1
                timestamp = ceiling
        self.observe(timestamp)
