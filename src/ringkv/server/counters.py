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
    repair_rounds: int = 0
    """Anti-entropy rounds run (scheduled or asked for)."""
    keys_repaired: int = 0
    """Keys anti-entropy pulled from or pushed to another replica."""
    tombstones_purged: int = 0
    """Tombstones and expired values removed after the tombstone grace."""
