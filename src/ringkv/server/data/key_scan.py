"""Client scans: the live keys under a prefix, one page at a time, in token order.

A page walks the read ring's token ranges from where the last page ended.
Each range is read from as many of its replicas as the level needs (this
node's own store first when it is one, then live replicas, then the rest),
each asked for the same stretch; the pages are merged newest-version-wins up
to the last token all of them cover (``ringkv.core.scan``), and the next
round resumes after it. A replica that fails is replaced by another of the
same range, so a node lost mid-scan costs a retry, not the scan.

What a scan sees of writes made while it runs: each key is read once, when
its token is reached; a key written before the scan began and untouched
during it is returned exactly once (at QUORUM or ALL, if it was written at
QUORUM or above); a key written or deleted during the scan may show either
way. There is no snapshot across keys, as in Cassandra's token-range scans.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from itertools import islice

from ringkv.core.consistency import Consistency
from ringkv.core.errors import RingkvError, Unavailable
from ringkv.core.quorum import required_replies
from ringkv.core.records import Record
from ringkv.core.ring import TOKEN_SPACE, TokenRange
from ringkv.core.scan import ReplicaPage, merge_pages, take_visible
from ringkv.server.cluster.cluster_view import ClusterView
from ringkv.server.cluster.leader_lease import LeaderLease
from ringkv.server.data import scan_pages
from ringkv.storage import Engine

PAGE_BYTES = 4 << 20
"""A client page ends once its keys and values pass this many bytes."""


@dataclass(frozen=True, slots=True)
class ScanPage:
    records: list[Record]
    """Live records, in token order."""
    last_token: int | None
    """The token to resume after; None when the scan is done."""


class KeyScanner:
    """Serves client scan pages from the replicas of each token range."""

    def __init__(
        self,
        view: ClusterView,
        engine: Engine,
        now_ms: Callable[[], int],
        lease: LeaderLease,
    ) -> None:
        self._view = view
        self._engine = engine
        self._now_ms = now_ms
        self._lease = lease

    async def page(
        self, prefix: bytes, after: int | None, limit: int, level: Consistency, timeout_s: float
    ) -> ScanPage:
        """Up to ``limit`` live keys under ``prefix`` past token ``after``
        (None: from the start) read at ``level`` (ONE, QUORUM or ALL).

        Ends early, with a cursor, once half of ``timeout_s`` is spent: a
        sparse prefix then returns a short page rather than a timeout.
        """
        loop = asyncio.get_running_loop()
        if level is not Consistency.ONE and not self._lease.held:
            # Without a lease this node's member table may be out of date.
            await self._lease.require(timeout_s / 2)
        soft_deadline = loop.time() + timeout_s / 2
        position = 0 if after is None else after + 1
        found: list[Record] = []
        size = 0
        while position < TOKEN_SPACE:
            token_range = self._view.range_at(position)
            merged, covered_to = await self._read_range(
                token_range, position, prefix, limit - len(found), level
            )
            taken, covered_to = take_visible(
                merged, covered_to, self._now_ms(), limit - len(found), PAGE_BYTES - size
            )
            found.extend(taken)
            size += sum(len(record.key) + len(record.value) for record in taken)
            position = covered_to + 1
            if len(found) >= limit or size >= PAGE_BYTES or loop.time() >= soft_deadline:
                break
        return ScanPage(found, None if position >= TOKEN_SPACE else position - 1)

    async def _read_range(
        self, token_range: TokenRange, start: int, prefix: bytes, limit: int, level: Consistency
    ) -> tuple[list[Record], int]:
        """The newest records from ``start`` on in one range, as many
        replicas as ``level`` needs agree, and the last token they cover."""
        replicas = token_range.replicas
        needed = required_replies(level, len(replicas))
        if not replicas:
            raise Unavailable("the ring has no members to scan")
        view = self._view
        # This node first (no round trip), then live replicas, then the rest.
        candidates = sorted(replicas, key=lambda n: (n != view.node_id, not view.is_live(n)))
        pages: list[ReplicaPage] = []
        failures: list[str] = []
        pending = iter(candidates)
        while len(pages) < needed:
            asked = list(islice(pending, needed - len(pages)))
            if not asked:
                raise Unavailable(
                    f"a scan at {level.name} needs {needed} of the replicas "
                    f"{', '.join(replicas)} of its token range; "
                    f"{len(pages)} answered ({'; '.join(failures)})",
                    reason="NOT_ENOUGH_REPLICAS",
                )
            answers = await asyncio.gather(
                *(self._read_replica(node, token_range, start, prefix, limit) for node in asked),
                return_exceptions=True,
            )
            for node, answer in zip(asked, answers, strict=True):
                if isinstance(answer, RingkvError):
                    failures.append(f"{node}: {answer}")
                elif isinstance(answer, BaseException):
                    raise answer
                else:
                    pages.append(answer)
        return merge_pages(pages)

    async def _read_replica(
        self, node: str, token_range: TokenRange, start: int, prefix: bytes, limit: int
    ) -> ReplicaPage:
        end = token_range.end
        if node == self._view.node_id:
            # An LMDB scan blocks on the disk: off the event loop.
            records, last = await asyncio.to_thread(
                scan_pages.scan_page, self._engine, start, end, limit, prefix
            )
        else:
            peer = self._view.peers.get(node)
            if peer is None:
                raise Unavailable(f"{node} is not a member this node can reach")
            records, cursor = await peer.scan(start, end, b"", limit, prefix)
            last = scan_pages.decode_cursor(cursor)
        # Filtered here too: a node of an older version ignores the prefix.
        kept = [record for record in records if record.key.startswith(prefix)]
        return ReplicaPage(kept, end - 1 if last is None else last)
