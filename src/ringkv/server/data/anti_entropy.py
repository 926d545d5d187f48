"""Anti-entropy: replicas compare Merkle trees of the ranges they share and
exchange the keys where they differ; and the purge of old tombstones.

One round, for each live peer: the token ranges both nodes replicate, a
Merkle tree of each side's records there (``ringkv.core.merkle``), and for
every leaf that differs, both sides' records of that leaf's tokens. Whoever
holds the newer version of a key gives it to the other: pulled records are
applied through the local store (the commit queue), pushed ones sent with an
ordinary replica write. Both are last-writer-wins, so a record that changed
meanwhile is never overwritten by an older one.

Deletes are tombstones, and a tombstone can only be dropped once no replica
still holds an older version of its key: otherwise repair would bring that
version back. So tombstones (and values past their expiry) are purged only
``tombstone_grace_ms`` after they were written (expired). The grace period
must be longer than the anti-entropy interval (every replica has seen the
tombstone by then), the hint TTL (a hint older than the tombstone could
otherwise be replayed after it is gone) and the clock skew between nodes.
Records past that horizon are left out of both sides' Merkle trees, and
never sent to a replica that lacks the key, so replicas that purge at
different moments do not keep trading them back.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from ringkv.core import merkle
from ringkv.core.errors import RingkvError
from ringkv.core.merkle import DEFAULT_DEPTH, MerkleTree, differing_leaves, purgeable
from ringkv.core.records import NO_EXPIRY, ApplyResult, Mutation, Outcome, Record
from ringkv.core.ring import TOKEN_SPACE, Ring
from ringkv.server.counters import Counters
from ringkv.server.data.local_store import LocalStore
from ringkv.server.data.tree_cache import Span, TreeCache
from ringkv.server.transport.peers import Peer
from ringkv.storage import Engine

log = logging.getLogger(__name__)

SCAN_PAGE_RECORDS = 1000
"""Records per Scan page asked of a peer (the most a peer sends)."""
PURGE_CHUNK = 256
"""Records purged per transaction: short ones, so writes never wait long behind a purge."""


class ReplicaView(Protocol):
    """What anti-entropy needs to know of the cluster (a ClusterView has it)."""

    @property
    def node_id(self) -> str: ...

    @property
    def ring(self) -> Ring: ...

    @property
    def replicas(self) -> int: ...

    @property
    def peers(self) -> Mapping[str, Peer]: ...

    def is_live(self, node_id: str) -> bool: ...


@dataclass(frozen=True, slots=True)
class PeerRepair:
    """What one peer's comparison found and fixed."""

    peer: str
    leaves_differing: int
    """Merkle leaves whose hashes differed; 0 when the replicas agreed."""
    keys_pulled: int
    """Records the peer had newer (or alone) and this node applied."""
    keys_pushed: int
    """Records this node had newer (or alone) and sent to the peer."""

    @property
    def in_sync(self) -> bool:
        """Whether the two Merkle trees were equal from the start."""
        return self.leaves_differing == 0


@dataclass(frozen=True, slots=True)
class RepairReport:
    """One round of anti-entropy."""

    repaired: tuple[PeerRepair, ...]
    """The peers compared, by id."""
    skipped: tuple[str, ...]
    """Peers down when the round reached them."""
    failed: tuple[str, ...]
    """Peers whose comparison failed part way (they went down, a write
    failed); the next round tries again."""

    @property
    def peers(self) -> int:
        """How many peers were compared."""
        return len(self.repaired)

    @property
    def leaves_differing(self) -> int:
        return sum(peer.leaves_differing for peer in self.repaired)

    @property
    def keys_pulled(self) -> int:
        return sum(peer.keys_pulled for peer in self.repaired)

    @property
    def keys_pushed(self) -> int:
        return sum(peer.keys_pushed for peer in self.repaired)


HORIZON_STEP_MS = 3600 * 1000
"""The purge horizon moves in steps of this (or a tenth of the grace period,
if less), so that a tree over records nobody wrote since stays the same tree
for that long; each step starts the cache's trees again from a scan."""


class AntiEntropy:
    """Repair rounds of this node against its peers, and tombstone purges.

    Runs only when called: the node decides how often.
    """

    def __init__(
        self,
        view: ReplicaView,
        store: LocalStore,
        engine: Engine,
        now_ms: Callable[[], int],
        *,
        tombstone_grace_ms: int,
        depth: int = DEFAULT_DEPTH,
        trees: TreeCache | None = None,
    ) -> None:
        self._view = view
        self._store = store
        self._engine = engine
        if trees is None:
            trees = TreeCache(engine)
            store.observe(trees)
        self._trees = trees
        self._purge_candidates = PurgeCandidates()
        store.observe(self._purge_candidates)
        self._purged_at: int | None = None
        """The horizon of the last purge that scanned."""
        self._now_ms = now_ms
        self._grace_ms = tombstone_grace_ms
        self._depth = depth

    def shared_spans(self, peer_id: str) -> list[Span]:
        """The token ranges that both this node and ``peer_id`` replicate,
        adjacent ones merged, in token order."""
        spans: list[Span] = []
        both = {self._view.node_id, peer_id}
        for token_range in self._view.ring.ranges(self._view.replicas):
            if not both <= set(token_range.replicas):
                continue
            if spans and spans[-1][1] == token_range.start:
                spans[-1] = (spans[-1][0], token_range.end)
            else:
                spans.append((token_range.start, token_range.end))
        return spans

    def purge_horizon_ms(self) -> int:
        """Records older than this may be purged (see the module docstring).

        Moves in steps (``HORIZON_STEP_MS``): the trees of both replicas and
        the purge use the same value, so a step only delays a purge a little.
        """
        horizon = self._now_ms() - self._grace_ms
        step = min(HORIZON_STEP_MS, self._grace_ms // 10)
        return horizon - horizon % step if step > 0 else horizon

    async def local_root(self, peer_id: str) -> int:
        """The root of this node's tree over the ranges it shares with ``peer_id``,
        at the current horizon: equal to the peer's when the two agree."""
        spans = self.shared_spans(peer_id)
        return (await self._local_tree(spans, self.purge_horizon_ms())).root

    async def run_round(self) -> RepairReport:
        """Compare with every live peer in turn and exchange what differs."""
        horizon = self.purge_horizon_ms()
        repaired: list[PeerRepair] = []
        skipped: list[str] = []
        failed: list[str] = []
        # A snapshot: the membership layer may change the peers meanwhile.
        for peer_id, peer in sorted(self._view.peers.items()):
            if not self._view.is_live(peer_id):
                skipped.append(peer_id)
                continue
            try:
                repaired.append(await self._repair(peer, horizon))
            except RingkvError as error:
                log.warning("anti-entropy failed", extra={"peer": peer_id, "error": str(error)})
                failed.append(peer_id)
        return RepairReport(tuple(repaired), tuple(skipped), tuple(failed))

    async def _repair(self, peer: Peer, horizon: int) -> PeerRepair:
        spans = self.shared_spans(peer.node_id)
        # Both sides build their trees at once: the round takes one build's time.
        local, remote_leaves = await asyncio.gather(
            self._local_tree(spans, horizon), peer.merkle(spans, self._depth, horizon)
        )
        remote = MerkleTree(self._depth, remote_leaves)
        leaves = differing_leaves(local, remote)
        pulled = pushed = 0
        for leaf in leaves:
            for start, end in _clip(spans, merkle.leaf_range(leaf, self._depth)):
                leaf_pulled, leaf_pushed = await self._exchange(peer, start, end, horizon)
                pulled += leaf_pulled
                pushed += leaf_pushed
        return PeerRepair(peer.node_id, len(leaves), pulled, pushed)

    async def _local_tree(self, spans: list[Span], horizon: int) -> MerkleTree:
        return await self._trees.tree(spans, self._depth, horizon)

    async def _exchange(self, peer: Peer, start: int, end: int, horizon: int) -> tuple[int, int]:
        """Give each side the other's newer records in ``[start, end)``: (pulled, pushed).

        Holds both sides' records of the span in memory: a leaf's share of
        the data, which the tree's depth keeps small.
        """
        ours = {r.key: r for r in await asyncio.to_thread(self._scan, start, end)}
        theirs: dict[bytes, Record] = {}
        cursor = b""
        while True:
            page, cursor = await peer.scan(start, end, cursor, SCAN_PAGE_RECORDS)
            theirs.update((r.key, r) for r in page)
            if not cursor:
                break
        keys = ours.keys() | theirs.keys()
        pulls = [theirs[k] for k in keys if _should_send(theirs.get(k), ours.get(k), horizon)]
        pushes = [ours[k] for k in keys if _should_send(ours.get(k), theirs.get(k), horizon)]
        await asyncio.gather(*(self._store.apply(record) for record in pulls))
        await asyncio.gather(*(peer.write(record) for record in pushes))
        return len(pulls), len(pushes)

    def _scan(self, start: int, end: int) -> list[Record]:
        return list(self._engine.scan(start, end))

    async def purge_expired_tombstones(self) -> int:
        """Drop for good the tombstones and expired values past the grace
        period; the number dropped.

        The purge goes to the engine from a worker thread rather than through
        the commit queue, and each record is purged only if it is still the
        version the scan saw: the engine checks that inside the purge's own
        write transaction, which it serializes with the commit thread's, so a
        write that replaced the record after the scan is kept.
        """
        horizon = self.purge_horizon_ms()
        if self._purged_at == horizon and not self._purge_candidates.written:
            return 0  # Nothing new to purge, and nothing newly old enough.
        # Before the scan: a candidate written during it is found next time.
        self._purge_candidates.written = False
        self._trees.purged(horizon)
        try:
            purged = await asyncio.to_thread(self._purge, horizon)
        except BaseException:
            self._purge_candidates.written = True
            raise
        self._purged_at = horizon
        return purged

    def _purge(self, horizon: int) -> int:
        doomed = (r for r in self._engine.scan(0, TOKEN_SPACE) if purgeable(r, horizon))
        purged = 0
        while chunk := list(itertools.islice(doomed, PURGE_CHUNK)):
            keys = [record.key for record in chunk]
            purged += self._engine.purge(keys, expected=[record.version for record in chunk])
        return purged


class PurgeCandidates:
    """Whether a record the purge may one day drop (a tombstone, a value that
    expires) was written since the last purge scanned: if not, and the
    horizon has not moved, a scan would find nothing new. A bulk load of
    plain values then costs no purge scan, however large the store."""

    def __init__(self) -> None:
        self.written = True  # Until the first scan: whatever the store held at startup.

    def committing(self, mutations: Sequence[Mutation]) -> None:
        pass  # Only what was stored counts.

    def applied(
        self, mutations: Sequence[Mutation], results: Sequence[ApplyResult | Exception]
    ) -> None:
        if self.written:
            return
        self.written = any(
            m.hint_for is None
            and (m.record.tombstone or m.record.expires_at_ms != NO_EXPIRY)
            and isinstance(r, ApplyResult)
            and r.outcome is Outcome.APPLIED
            for m, r in zip(mutations, results, strict=True)
        )

    def touched(self, keys: Iterable[bytes]) -> None:
        self.written = True  # A Paxos commit may have written a tombstone.


def _should_send(record: Record | None, other: Record | None, horizon: int) -> bool:
    """Whether a replica holding ``other`` (None: nothing) should get ``record``.

    When it is newer; but a record garbage collection may purge is not sent to
    fill an absence, which is what the purge leaves anyway.
    """
    if record is None:
        return False
    if other is None:
        return not purgeable(record, horizon)
    return record.version > other.version


def _clip(spans: Sequence[Span], window: Span) -> list[Span]:
    """The parts of ``spans`` inside ``window``."""
    low, high = window
    return [(max(start, low), min(end, high)) for start, end in spans if start < high and low < end]


class RepairSchedule:
    """Runs anti-entropy every ``interval_s`` (0: only when asked) and on demand.

    One round at a time: a ``ringkv cluster repair`` that arrives during a
    scheduled round waits for it and then runs its own.
    """

    def __init__(self, anti_entropy: AntiEntropy, counters: Counters, interval_s: float) -> None:
        self._anti_entropy = anti_entropy
        self._counters = counters
        self._interval_s = interval_s
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._interval_s > 0:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="anti-entropy")

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self.run()
            except Exception:  # a bad round must not end repair for good
                log.exception("anti-entropy round failed")

    async def run(self) -> RepairReport:
        """One round against every live peer, then the tombstone purge."""
        async with self._lock:
            report = await self._anti_entropy.run_round()
            purged = await self._anti_entropy.purge_expired_tombstones()
        self._counters.repair_rounds += 1
        self._counters.leaves_differing += report.leaves_differing
        self._counters.keys_repaired += report.keys_pulled + report.keys_pushed
        self._counters.tombstones_purged += purged
        if report.leaves_differing or purged:
            log.info(
                "anti-entropy round",
                extra={
                    "peers": report.peers,
                    "leaves_differing": report.leaves_differing,
                    "keys_pulled": report.keys_pulled,
                    "keys_pushed": report.keys_pushed,
                    "tombstones_purged": purged,
                },
            )
        return report

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
