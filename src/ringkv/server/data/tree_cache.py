"""Merkle trees of this node's records, kept up to date as records change.

Anti-entropy compares the same ranges with the same peers round after round,
and a pair of replicas shares its ranges both ways, so a tree, once built,
is kept and updated on every write rather than built again: a leaf's hash is
a sum of one hash per record (``ringkv.core.merkle``), so a write that
replaces record ``old`` with ``new`` moves its leaf by ``h(new) - h(old)``.
A round on a million keys then costs no scan at all, however many writes
came between rounds.

The commit queue tells the cache what each commit applied (``applied``), and
what the Paxos steps and purges touched (``touched``: there the old record is
not at hand, so the key's leaf is marked to be scanned again, one leaf's
share of the data). A tree being built, or a leaf being scanned again, in a
worker thread cannot tell whether its scan saw a write that lands meanwhile;
such a write marks its leaf too, and the leaf is scanned again before the
tree is next handed out.

A tree belongs to one purge horizon, which moves in steps
(``anti_entropy.HORIZON_STEP_MS``): each step starts new trees, so every
tree is built from a scan again at least that often.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from ringkv.core import merkle
from ringkv.core.errors import InvalidArgument
from ringkv.core.merkle import MerkleTree, purgeable, record_hash
from ringkv.core.records import ApplyResult, Mutation, Outcome, Record
from ringkv.core.tokens import TOKEN_BITS, token_of
from ringkv.server.counters import Counters
from ringkv.storage import Engine

Span = tuple[int, int]
"""The tokens ``start <= t < end``; ``end`` is at most 2**64."""

_MASK = (1 << 64) - 1
RESCAN_PASSES = 4
"""Rescans of the leaves written meanwhile before a tree is handed out."""
_Hashed = tuple[Record, int]
"""A record and its ``record_hash``, computed once for every tree."""


def span_tree(
    engine: Engine, spans: Iterable[Span], depth: int, purge_horizon_ms: int
) -> MerkleTree:
    """The Merkle tree of the engine's records in ``spans`` (disjoint), without
    those garbage collection may purge at ``purge_horizon_ms``.

    Blocks on the engine's scans: run it in a thread.
    """
    records = itertools.chain.from_iterable(engine.scan(start, end) for start, end in spans)
    return merkle.build(records, depth, purge_horizon_ms=purge_horizon_ms)


def _leaf_hashes(
    engine: Engine, spans: Sequence[Span], depth: int, horizon: int, leaves: Sequence[int]
) -> list[int]:
    """The hashes of ``leaves`` of the tree over ``spans``, each from a scan of
    its own tokens. Blocks on the engine: run it in a thread."""
    hashes = []
    for leaf in leaves:
        window = merkle.leaf_range(leaf, depth)
        parts = [
            (max(start, window[0]), min(end, window[1]))
            for start, end in spans
            if start < window[1] and window[0] < end
        ]
        hashes.append(span_tree(engine, parts, depth, horizon).leaves[leaf])
    return hashes


@dataclass(slots=True)
class _Tree:
    spans: tuple[Span, ...]
    depth: int
    horizon: int
    leaves: list[int]
    building: bool = True
    """The whole tree is being scanned: every write marks its leaf."""
    rescanning: frozenset[int] = frozenset()
    """Leaves being scanned again: a write to one marks it again."""
    stale: set[int] = field(default_factory=set)
    """Leaves to scan again before the tree is handed out."""
    _starts: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._starts = [start for start, _ in self.spans]

    def covers(self, token: int) -> bool:
        i = bisect.bisect_right(self._starts, token) - 1
        return i >= 0 and token < self.spans[i][1]

    def changed(self, token: int, old: _Hashed | None, new: _Hashed) -> None:
        if not self.covers(token):
            return
        leaf = token >> (TOKEN_BITS - self.depth)
        if self.building or leaf in self.rescanning or leaf in self.stale:
            self.stale.add(leaf)
            return
        delta = self._share(new) - (0 if old is None else self._share(old))
        self.leaves[leaf] = (self.leaves[leaf] + delta) & _MASK

    def _share(self, hashed: _Hashed) -> int:
        """What a record adds to its leaf: nothing once it may be purged."""
        record, value = hashed
        return 0 if purgeable(record, self.horizon) else value

    def touched(self, token: int) -> None:
        if self.covers(token):
            self.stale.add(token >> (TOKEN_BITS - self.depth))


class TreeCache:
    """The trees of this node's records that anti-entropy and its peers asked
    for, the most recently used ``capacity`` of them, each kept up to date.

    This node's rounds and the trees its peers ask for share one cache and
    build one tree at a time: peers asking at once would otherwise share the
    CPU and each wait as long as all the builds together.

    Every write to the engine must reach ``applied`` or ``touched`` (the
    node's commit queue sends them): the cache reads the engine only to build.
    """

    def __init__(
        self, engine: Engine, counters: Counters | None = None, *, capacity: int = 32
    ) -> None:
        self._engine = engine
        self.counters = counters or Counters()
        """Where builds and rescans are counted."""
        self._capacity = capacity
        self._trees: OrderedDict[tuple[tuple[Span, ...], int, int], _Tree] = OrderedDict()
        self._lock = asyncio.Lock()
        self._in_flight: dict[int, Sequence[Mutation]] = {}
        """Batches on the commit thread: in the engine perhaps, not yet announced."""
        self._purged_below = 0
        """The newest purge horizon: a tree at an older one is not kept, since a
        purge removes records such a tree counts, and says nothing of them."""

    async def tree(self, spans: Sequence[Span], depth: int, horizon: int) -> MerkleTree:
        """The tree of the records in ``spans`` (disjoint) at ``depth``,
        without those purgeable at ``horizon``."""
        ordered = tuple(sorted(spans))
        if any(end > start for (_, end), (start, _) in itertools.pairwise(ordered)):
            raise InvalidArgument("a Merkle tree's spans must not overlap")
        key = (ordered, depth, horizon)
        async with self._lock:
            if horizon < self._purged_below:
                return await asyncio.to_thread(span_tree, self._engine, ordered, depth, horizon)
            held = self._trees.get(key)
            if held is None:
                held = await self._build(key)
            # A leaf written while it was scanned is scanned again. Under a
            # stream of writes to one leaf that could go on for good: after a
            # few passes the tree is handed out with that leaf as the scan left
            # it, still marked, like any tree built while writes go on.
            for _ in range(RESCAN_PASSES):
                if not held.stale:
                    break
                await self._rescan(held)
            self._trees.move_to_end(key)
            return MerkleTree(depth, tuple(held.leaves))

    async def _build(self, key: tuple[tuple[Span, ...], int, int]) -> _Tree:
        spans, depth, horizon = key
        held = self._trees[key] = _Tree(spans, depth, horizon, [0] * (1 << depth))
        while len(self._trees) > self._capacity:
            self._trees.popitem(last=False)
        try:
            built = await asyncio.to_thread(span_tree, self._engine, spans, depth, horizon)
        except BaseException:
            self._trees.pop(key, None)
            raise
        held.leaves = list(built.leaves)
        held.building = False
        self._mark_in_flight(held)
        self.counters.merkle_tree_builds += 1
        return held

    async def _rescan(self, held: _Tree) -> None:
        leaves = sorted(held.stale)
        held.stale = set()
        held.rescanning = frozenset(leaves)
        try:
            hashes = await asyncio.to_thread(
                _leaf_hashes, self._engine, held.spans, held.depth, held.horizon, leaves
            )
        except BaseException:
            held.stale.update(leaves)
            raise
        finally:
            held.rescanning = frozenset()
        self._mark_in_flight(held)
        for leaf, value in zip(leaves, hashes, strict=True):
            # A leaf written during the scan keeps what the scan found, and
            # its mark: a delta on top of a scan that may have seen the write
            # could count it twice.
            held.leaves[leaf] = value
        self.counters.merkle_leaves_rescanned += len(leaves)

    def _mark_in_flight(self, held: _Tree) -> None:
        """After a scan: a batch committed but not yet announced may be in what
        it saw, so its delta, when it comes, must not be added: its leaves are
        scanned again instead."""
        for mutations in self._in_flight.values():
            for mutation in mutations:
                if mutation.hint_for is None:
                    held.touched(token_of(mutation.record.key))

    def committing(self, mutations: Sequence[Mutation]) -> None:
        """A batch goes to the commit thread."""
        self._in_flight[id(mutations)] = mutations

    def purged(self, horizon: int) -> None:
        """Records purgeable at ``horizon`` are about to be removed for good: trees
        at that horizon or a later one leave them out already; older ones go."""
        self._purged_below = max(self._purged_below, horizon)
        for key in [key for key in self._trees if key[2] < horizon]:
            del self._trees[key]

    def applied(
        self, mutations: Sequence[Mutation], results: Sequence[ApplyResult | Exception]
    ) -> None:
        """A commit's outcome: each record it stored replaced the one before."""
        self._in_flight.pop(id(mutations), None)
        if not self._trees:
            return
        for mutation, result in zip(mutations, results, strict=True):
            if (
                mutation.hint_for is not None
                or not isinstance(result, ApplyResult)
                or result.outcome is not Outcome.APPLIED
            ):
                continue
            record, previous = mutation.record, result.previous
            token = token_of(record.key)
            new = (record, record_hash(record))
            old = None if previous is None else (previous, record_hash(previous))
            for held in self._trees.values():
                held.changed(token, old, new)

    def touched(self, keys: Iterable[bytes]) -> None:
        """Records of ``keys`` may have changed in ways the cache cannot see."""
        if not self._trees:
            return
        for key in keys:
            token = token_of(key)
            for held in self._trees.values():
                held.touched(token)
