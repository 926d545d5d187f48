"""Data movement when membership changes: pull gained ranges, drop handed-off ones.

When a member table with a change in flight is adopted, this node works out
the token ranges it replicates in the next ring but not in the current one
and pulls each from a quorum of its current replicas (paged ``Scan``
calls, applied by version, so writes that arrive meanwhile are never
overwritten by older data). A quorum, not one: a write acknowledged before
the change may be on a bare quorum of the old replicas, and only a quorum
of them is sure to include one that holds it. When every range is in, it
reports the epoch as synced in its heartbeat replies; the leader settles the
change once every gainer has.

Pulling waits ``settle_delay_s`` first, so that every node has adopted the
table and sends new writes to both rings before the scan passes their keys
(Cassandra's ring delay). After a change settles and ``cleanup_delay_s``
has passed, records of ranges this node no longer replicates are sent to
their replicas once more and then removed, each only if it is still the
version that was sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from ringkv.core.consistency import Consistency
from ringkv.core.errors import RingkvError
from ringkv.core.membership import Membership, replica_count
from ringkv.core.quorum import required_replies
from ringkv.core.records import Record
from ringkv.core.ring import TOKEN_SPACE, moved_ranges
from ringkv.core.tokens import token_of
from ringkv.server.cluster.cluster_view import ClusterView
from ringkv.server.data.local_store import LocalStore
from ringkv.storage import Engine

log = logging.getLogger(__name__)

PAGE_RECORDS = 500
PARALLEL_PULLS = 8
PURGE_CHUNK = 500
_RETRY_S = 1.0


@dataclass(frozen=True, slots=True)
class Pull:
    """A range to fetch and the nodes that hold it now."""

    start: int
    end: int
    sources: tuple[str, ...]


@dataclass(slots=True)
class Progress:
    epoch: int = 0
    ranges_total: int = 0
    ranges_done: int = 0
    records: int = 0


class Rebalancer:
    """Pulls this node's gained ranges for each change; cleans up after it."""

    def __init__(
        self,
        view: ClusterView,
        store: LocalStore,
        engine: Engine,
        *,
        settle_delay_s: float,
        cleanup_delay_s: float,
        quorum_patience_s: float = 0.0,
    ) -> None:
        self._quorum_patience_s = quorum_patience_s
        self._view = view
        self._store = store
        self._engine = engine
        self._settle_delay_s = settle_delay_s
        self._cleanup_delay_s = cleanup_delay_s
        self.synced_epoch = 0
        self.progress = Progress()
        self.records_removed = 0
        self._task: asyncio.Task[None] | None = None

    def adopted(self, membership: Membership) -> None:
        """React to a newly adopted member table (the view already uses it)."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if self._view.node_id not in membership.addresses:
            return
        pulls = self._gained() if membership.changing else []
        if not pulls:
            self.synced_epoch = membership.epoch
            if not membership.changing:
                self._start(self._clean_up(membership.epoch), "range cleanup")
            return
        # Kept after the pull, so `cluster status` shows what the last one moved.
        self.progress = Progress(membership.epoch, len(pulls))
        log.info(
            "pulling gained ranges",
            extra={"epoch": membership.epoch, "ranges": len(pulls)},
        )
        self._start(self._pull_all(membership.epoch, pulls), "range pull")

    def _start(self, work: Coroutine[Any, Any, None], name: str) -> None:
        self._task = asyncio.get_running_loop().create_task(work, name=name)

    def _gained(self) -> list[Pull]:
        view = self._view
        assert view.next_ring is not None
        n_now = view.replicas
        n_next = replica_count(view.replication_factor, view.next_ring)
        pulls = []
        for move in moved_ranges(view.ring, view.next_ring, max(n_now, n_next)):
            old, new = move.old_replicas[:n_now], move.new_replicas[:n_next]
            if view.node_id in new and view.node_id not in old:
                pulls.append(Pull(move.start, move.end, old))
        return pulls

    async def _pull_all(self, epoch: int, pulls: list[Pull]) -> None:
        await asyncio.sleep(self._settle_delay_s)
        # A few ranges at a time: most are small, and one call each in turn
        # would make a join wait on round trips rather than on data.
        limit = asyncio.Semaphore(PARALLEL_PULLS)
        loop = asyncio.get_running_loop()
        # One patience for the whole change, not one per range.
        patient_until = loop.time() + self._quorum_patience_s

        async def pull_one(pull: Pull) -> None:
            async with limit:
                pulled: set[str] = set()
                received: set[bytes] = set()
                while True:
                    impatient = loop.time() >= patient_until
                    await self._pull(pull, pulled, received, impatient)
                    if len(pulled) >= self._sources_needed(pull, impatient):
                        break
                    await asyncio.sleep(_RETRY_S)
                if len(pulled) < required_replies(Consistency.QUORUM, len(pull.sources)):
                    log.warning(
                        "range pulled from fewer than a quorum of its replicas",
                        extra={"pulled": ",".join(sorted(pulled)), "of": ",".join(pull.sources)},
                    )
                self.progress.ranges_done += 1

        await asyncio.gather(*(pull_one(pull) for pull in pulls))
        self.synced_epoch = epoch
        log.info("gained ranges pulled", extra={"epoch": epoch, "records": self.progress.records})

    def _sources_needed(self, pull: Pull, impatient: bool) -> int:
        """A quorum of the range's old replicas. Once ``impatient`` (a source
        stayed down for ``quorum_patience_s``), no more than are up and at
        least one: a join or a removal must not wait for good on a down member,
        and the removal of a dead one cannot start before this change ends
        (the hints held for it, read repair and anti-entropy fill in what it
        alone held; the log says so)."""
        quorum = required_replies(Consistency.QUORUM, len(pull.sources))
        if not impatient:
            return quorum
        live = sum(1 for source in pull.sources if self._view.is_live(source))
        return max(1, min(quorum, live))

    async def _pull(
        self, pull: Pull, pulled: set[str], received: set[bytes], impatient: bool
    ) -> None:
        """Fetch the range from the sources not yet ``pulled``, live ones first,
        until enough have served all of it; ``received``: the keys any sent."""
        sources = sorted(pull.sources, key=lambda node: not self._view.is_live(node))
        for source in sources:
            if len(pulled) >= self._sources_needed(pull, impatient):
                return
            if source in pulled:
                continue
            peer = self._view.peers.get(source)
            if peer is None:
                continue
            cursor = b""
            try:
                while True:
                    records, cursor = await peer.scan(pull.start, pull.end, cursor, PAGE_RECORDS)
                    for result in await self._store.apply_many(records):
                        if isinstance(result, Exception):
                            raise result
                    # A key a second source sends again is not counted twice.
                    fresh = {record.key for record in records} - received
                    received |= fresh
                    self.progress.records += len(fresh)
                    if not cursor:
                        pulled.add(source)
                        break
            except RingkvError as error:
                log.info("range pull failed", extra={"peer": source, "error": str(error)})

    async def _clean_up(self, epoch: int) -> None:
        """Hand off, then remove, the records of ranges this node no longer replicates."""
        await asyncio.sleep(self._cleanup_delay_s)
        if self._view.epoch != epoch:
            return
        delivered = await self.hand_off()
        removed = 0
        for first in range(0, len(delivered), PURGE_CHUNK):
            if self._view.epoch != epoch:
                return  # Another change started: its rings decide what to keep.
            removed += await self._store.purge(delivered[first : first + PURGE_CHUNK])
        self.records_removed += removed
        if removed:
            log.info("handed-off records removed", extra={"epoch": epoch, "records": removed})

    async def hand_off(self) -> list[Record]:
        """Send each record this node no longer replicates to the key's replicas; the
        records every live replica acknowledged.

        The new replicas pulled these ranges already, but a coordinator that
        adopted the change late may have written a key only here after the
        pull passed it: sending every record again (newest version wins)
        closes that gap before the copy here is dropped, and is how a
        decommissioned node gives its data away before it stops.
        """
        records = await asyncio.to_thread(self._unowned_records)
        delivered: list[Record] = []

        async def send(record: Record) -> None:
            view = self._view
            replicas = view.ring.preference_list(token_of(record.key), view.replicas)
            peers = [
                view.peers[node]
                for node in replicas
                if node != view.node_id and node in view.peers and view.is_live(node)
            ]
            if not peers:
                return  # Nowhere to send it: keep it.
            results = await asyncio.gather(
                *(peer.write(record) for peer in peers), return_exceptions=True
            )
            if not any(isinstance(result, BaseException) for result in results):
                delivered.append(record)

        for first in range(0, len(records), PURGE_CHUNK):
            await asyncio.gather(*(send(r) for r in records[first : first + PURGE_CHUNK]))
        return delivered

    def _unowned_records(self) -> list[Record]:
        view = self._view
        return [
            record
            for record in self._engine.scan(0, TOKEN_SPACE)
            if not view.holds(token_of(record.key))
        ]

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
