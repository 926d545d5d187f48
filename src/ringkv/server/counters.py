"""Counts of what a node did since it started, reported by GetNodeStats."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Counters:
    forwarded_writes: int = 0
    """Writes passed on to their key's owner."""
    read_repairs: int = 0
    """Stale replicas sent the newest version after a read."""
    hints_replayed: int = 0
    """Hints delivered to the node they were held for."""
    hints_expired: int = 0
    """Hints dropped unsent after the hint TTL."""
