"""Counts of what a node did since it started, reported by GetNodeStats and /metrics."""

from __future__ import annotations

from dataclasses import dataclass, field


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
    leaves_differing: int = 0
    """Merkle-tree leaves anti-entropy found different from another replica's."""
    merkle_tree_builds: int = 0
    """Merkle trees built from a scan of their ranges (the rest were kept up
    to date on write)."""
    merkle_leaves_rescanned: int = 0
    """Merkle-tree leaves scanned again after a change a kept tree could not
    apply (a purge, a Paxos commit, a write during a scan)."""
    tombstones_purged: int = 0
    """Tombstones and expired values removed after the tombstone grace."""
    replica_errors: dict[tuple[str, str], int] = field(default_factory=dict)
    """Failed calls to other replicas, by (peer id, call: read, write, scan, merkle)."""

    def replica_error(self, peer: str, call: str) -> None:
        """Count one failed call to a replica."""
        key = (peer, call)
        self.replica_errors[key] = self.replica_errors.get(key, 0) + 1
