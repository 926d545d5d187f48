"""Merkle trees over the token space: how two replicas find where they differ.

A tree of depth ``d`` has ``2**d`` leaves; leaf ``i`` covers the tokens whose
top ``d`` bits are ``i`` (:func:`leaf_range`). A leaf's hash is the sum,
modulo 2**64, of one 64-bit hash per record (of its key and version), so a
tree is built in one pass over records in any order: a storage scan, a list
received from a peer, or both sides of a comparison built independently
agree exactly when they hold the same versions of the same keys. A sum
rather than XOR, so that two records can never cancel each other out.

The value is not hashed: a version is assigned once per write, so equal
versions of a key carry equal values.

Records that garbage collection may purge (:func:`purgeable`) can be left out
of a tree: a replica that purged one and a replica that has not yet must
still build equal trees.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass

import xxhash

from ringkv.core.hlc import physical_ms
from ringkv.core.records import NO_EXPIRY, Record
from ringkv.core.tokens import TOKEN_BITS, token_of

DEFAULT_DEPTH = 10
"""1,024 leaves: 8 KiB of hashes per exchange, each leaf 1/1024 of the data."""
MAX_DEPTH = 20
"""About a million leaves (8 MiB of hashes); a peer may not ask for more."""

_MASK = (1 << 64) - 1
# Key length first and the variable-length node id last, so no two distinct
# (key, version, tombstone) tuples encode to the same bytes.
_RECORD_HEAD = struct.Struct(">Iq?")
_PAIR = struct.Struct(">QQ")


def _check_depth(depth: int) -> None:
    if not 0 <= depth <= MAX_DEPTH:
        raise ValueError(f"a Merkle tree's depth must be in [0, {MAX_DEPTH}], got {depth}")


def record_hash(record: Record) -> int:
    """The 64-bit hash of a record's key, version and tombstone flag."""
    head = _RECORD_HEAD.pack(len(record.key), record.version.timestamp, record.tombstone)
    node = record.version.node_id.encode("utf-8")
    return int(xxhash.xxh3_64_intdigest(head + record.key + node))


def leaf_index(token: int, depth: int) -> int:
    """The leaf whose range holds ``token``: its top ``depth`` bits."""
    return token >> (TOKEN_BITS - depth)


def leaf_range(index: int, depth: int) -> tuple[int, int]:
    """The tokens ``start <= t < end`` of leaf ``index``; the last leaf ends at 2**64."""
    _check_depth(depth)
    if not 0 <= index < 1 << depth:
        raise ValueError(f"leaf {index} is not in a tree of depth {depth}")
    width = 1 << (TOKEN_BITS - depth)
    return index * width, (index + 1) * width


def purgeable(record: Record, horizon_ms: int) -> bool:
    """Whether garbage collection may drop ``record`` for good at ``horizon_ms``
    (now minus the tombstone grace period).

    A tombstone written before the horizon, or a value that expired before
    it: by then every replica is expected to have the record (anti-entropy
    runs more often than the grace period), so no older version of the key
    is left anywhere to come back once it is gone.
    """
    if record.tombstone:
        return physical_ms(record.version.timestamp) < horizon_ms
    return record.expires_at_ms != NO_EXPIRY and record.expires_at_ms < horizon_ms


@dataclass(frozen=True, slots=True)
class MerkleTree:
    """The leaf hashes of a tree; inner hashes are derived on demand."""

    depth: int
    leaves: tuple[int, ...]
    """``2**depth`` hashes; an empty leaf is 0."""

    def __post_init__(self) -> None:
        _check_depth(self.depth)
        if len(self.leaves) != 1 << self.depth:
            raise ValueError(
                f"a tree of depth {self.depth} has {1 << self.depth} leaves, got {len(self.leaves)}"
            )

    @property
    def root(self) -> int:
        """The hash of the whole tree: each inner node hashes its two children."""
        level = self.leaves
        while len(level) > 1:
            level = tuple(
                int(xxhash.xxh3_64_intdigest(_PAIR.pack(level[i], level[i + 1])))
                for i in range(0, len(level), 2)
            )
        return level[0]


def build(
    records: Iterable[Record], depth: int = DEFAULT_DEPTH, *, purge_horizon_ms: int | None = None
) -> MerkleTree:
    """The tree of ``records``, in any order.

    With ``purge_horizon_ms``, records :func:`purgeable` at that horizon are
    left out, so a replica that already purged them builds the same tree.
    """
    _check_depth(depth)
    leaves = [0] * (1 << depth)
    for record in records:
        if purge_horizon_ms is not None and purgeable(record, purge_horizon_ms):
            continue
        index = leaf_index(token_of(record.key), depth)
        leaves[index] = (leaves[index] + record_hash(record)) & _MASK
    return MerkleTree(depth, tuple(leaves))


def differing_leaves(a: MerkleTree, b: MerkleTree) -> list[int]:
    """The indexes of the leaves whose hashes differ, ascending.

    Compared leaf by leaf rather than by descending from the root: a peer
    sends all its leaves in one answer (8 KiB at the default depth), so a
    level-by-level exchange would cost a round trip per level to save a few
    kilobytes, and both find the same leaves.
    """
    if a.depth != b.depth:
        raise ValueError(f"cannot compare trees of depths {a.depth} and {b.depth}")
    return [i for i, (x, y) in enumerate(zip(a.leaves, b.leaves, strict=True)) if x != y]
