"""The internal peer API, service ``ringkv.internal.Replica``: this node's replica only."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from typing import Protocol

from ringkv.api import kv_pb2, replica_pb2
from ringkv.core import paxos, replica
from ringkv.core.errors import InvalidArgument, PreconditionFailed
from ringkv.core.hlc import HybridLogicalClock
from ringkv.core.membership import Liveness, Membership
from ringkv.core.merkle import MAX_DEPTH
from ringkv.core.replica import ReplicaRules
from ringkv.core.ring import TOKEN_SPACE
from ringkv.core.validation import MAX_BATCH_BYTES, Limits
from ringkv.server.data import scan_pages
from ringkv.server.data.change_feed import ChangeFeed, SpanSet
from ringkv.server.data.local_store import LocalStore
from ringkv.server.data.tree_cache import TreeCache
from ringkv.server.transport.link import REPLICA_READ, REPLICA_WRITE, LinkMethod
from ringkv.server.transport.rpc import Context, Method, StreamMethod
from ringkv.server.transport.wire import (
    add_records,
    ballot_from_wire,
    membership_to_wire,
    promise_to_wire,
    proposal_from_wire,
    record_from_wire,
    record_to_wire,
)
from ringkv.storage import Engine

log = logging.getLogger(__name__)


class MemberTableHolder(Protocol):
    """Where the replica finds the member table in effect (the cluster view)."""

    @property
    def membership(self) -> Membership: ...

    @property
    def liveness(self) -> dict[str, Liveness]: ...


class ReplicaService:
    """Versioned reads and writes of the local store, for coordinators on other nodes."""

    name = "ringkv.internal.Replica"

    def __init__(
        self,
        store: LocalStore,
        clock: HybridLogicalClock,
        now_ms: Callable[[], int],
        *,
        engine: Engine,
        tables: MemberTableHolder | None = None,
        limits: Limits | None = None,
        trees: TreeCache | None = None,
        changes: ChangeFeed | None = None,
        link_port: int = 0,
    ) -> None:
        self._link_port = link_port
        """Where this node serves the member link; 0 when it serves none."""
        self._changes = changes or ChangeFeed(engine, clock)
        """This node's change log, for the watches of other nodes."""
        self._store = store
        self._tables = tables
        """Fences reads and writes by member table; None in tests of one replica alone."""
        self._rules = ReplicaRules(
            clock, None if tables is None else lambda: tables.membership.fence, limits
        )
        self._clock = clock
        self._now_ms = now_ms
        if trees is None:
            trees = TreeCache(engine)
            store.observe(trees)
        self._trees = trees
        """Merkle trees, shared with this node's anti-entropy rounds."""
        # Scans go to the engine directly: the store reads and writes keys,
        # not ranges.
        self._engine = engine

    def methods(self) -> dict[str, Method | StreamMethod]:
        return {
            "Read": Method(replica_pb2.ReadRequest, self.read),
            "Write": Method(replica_pb2.WriteRequest, self.write),
            "Scan": Method(replica_pb2.ScanRequest, self.scan),
            "Merkle": Method(replica_pb2.MerkleRequest, self.merkle),
            "Watch": StreamMethod(replica_pb2.WatchRequest, self.watch, endless=True),
            "Clock": Method(replica_pb2.ClockRequest, self.clock),
            "Prepare": Method(replica_pb2.PrepareRequest, self.prepare),
            "Propose": Method(replica_pb2.ProposeRequest, self.propose),
            "Commit": Method(replica_pb2.CommitRequest, self.commit),
            "Link": Method(replica_pb2.LinkRequest, self.link),
        }

    def link_methods(self) -> dict[int, LinkMethod]:
        """The calls this service also answers on the member link."""
        return {
            REPLICA_READ: LinkMethod(self.name, "Read", replica_pb2.ReadRequest, self.read),
            REPLICA_WRITE: LinkMethod(self.name, "Write", replica_pb2.WriteRequest, self.write),
        }

    async def link(self, _: replica_pb2.LinkRequest, __: Context) -> replica_pb2.LinkResponse:
        return replica_pb2.LinkResponse(port=self._link_port)

    async def prepare(
        self, request: replica_pb2.PrepareRequest, _: Context
    ) -> replica_pb2.PrepareResponse:
        if self._refuses(request.fence, request.clock):
            return replica_pb2.PrepareResponse(newer_table=self._table(), clock=self._clock.last)
        _check_paxos_key(request.key)
        step = paxos.prepare_step(ballot_from_wire(request.ballot))
        response = promise_to_wire(await self._store.paxos(request.key, step))
        response.clock = self._clock.last
        return response

    async def propose(
        self, request: replica_pb2.ProposeRequest, _: Context
    ) -> replica_pb2.ProposeResponse:
        if self._refuses(request.fence, request.clock):
            return replica_pb2.ProposeResponse(newer_table=self._table(), clock=self._clock.last)
        proposal = proposal_from_wire(request.proposal)
        _check_paxos_key(proposal.record.key)
        accepted = await self._store.paxos(proposal.record.key, paxos.propose_step(proposal))
        return replica_pb2.ProposeResponse(accepted=accepted, clock=self._clock.last)

    async def commit(
        self, request: replica_pb2.CommitRequest, _: Context
    ) -> replica_pb2.CommitResponse:
        if self._refuses(request.fence, request.clock):
            return replica_pb2.CommitResponse(newer_table=self._table(), clock=self._clock.last)
        proposal = proposal_from_wire(request.proposal)
        _check_paxos_key(proposal.record.key)
        await self._store.paxos(proposal.record.key, paxos.commit_step(proposal))
        return replica_pb2.CommitResponse(clock=self._clock.last)

    async def clock(
        self, request: replica_pb2.ClockRequest, _: Context
    ) -> replica_pb2.ClockResponse:
        self._clock.observe_peer(request.clock)
        return replica_pb2.ClockResponse(wall_ms=self._now_ms(), clock=self._clock.last)

    def _refuses(self, fence: replica_pb2.Fence, caller_clock: int) -> bool:
        """Observe the caller's clock; whether this replica's table is newer than
        the call's (``ringkv.core.replica``): then it answers with ``_table()``."""
        return self._rules.admit((fence.epoch, fence.term), caller_clock) is not None

    def _table(self) -> kv_pb2.MemberTable:
        assert self._tables is not None  # a replica fenced by nothing refuses nothing
        return membership_to_wire(self._tables.membership, self._tables.liveness)

    async def read(
        self, request: replica_pb2.ReadRequest, _: Context | None = None
    ) -> replica_pb2.ReadResponse:
        if self._refuses(request.fence, request.clock):
            return replica_pb2.ReadResponse(newer_table=self._table(), clock=self._clock.last)
        # Answers the first keys up to a batch's bytes; the caller asks again
        # for the rest, so that no answer outgrows a message.
        results = []
        for record in self._store.read_each(request.keys, max_bytes=MAX_BATCH_BYTES):
            if record is None:
                results.append(replica_pb2.ReadResult(found=False))
                continue
            results.append(replica_pb2.ReadResult(found=True, record=record_to_wire(record)))
        return replica_pb2.ReadResponse(results=results, clock=self._clock.last)

    async def write(
        self, request: replica_pb2.WriteRequest, _: Context | None = None
    ) -> replica_pb2.WriteResponse:
        records = [record_from_wire(r) for r in request.records]
        to_persist = self._rules.write(
            records,
            fence=(request.fence.epoch, request.fence.term),
            caller_clock=request.clock,
            hint_for=request.hint_for or None,
            now_ms=self._now_ms(),
        )
        if not isinstance(to_persist, list):
            return replica_pb2.WriteResponse(newer_table=self._table(), clock=self._clock.last)
        applied = await self._store.persist(to_persist)
        response = replica_pb2.WriteResponse(clock=self._clock.last)
        for answer in replica.answers(records, applied, self._now_ms()):
            if isinstance(answer, Exception):
                log.warning("replica write failed", extra={"error": str(answer)})
                response.replaced_live.append(False)
                response.newer.append(0)
                response.failed.append(True)
                continue
            response.replaced_live.append(answer.replaced_live)
            response.newer.append(answer.newer)
            response.failed.append(False)
        return response

    async def scan(self, request: replica_pb2.ScanRequest, _: Context) -> replica_pb2.ScanResponse:
        self._clock.observe_peer(request.clock)
        if self._tables is not None:
            mine = self._tables.membership
            theirs = (request.fence.epoch, request.fence.term)
            if mine.fence < theirs:
                # A joiner pulling its ranges: were they served from this older
                # table, writes planned on it could still land here after the
                # pull passed, and the joiner would never see them. The table
                # arrives with the leader's next heartbeat; the puller retries.
                raise PreconditionFailed(
                    f"this replica is on member table epoch {mine.epoch} (term {mine.term}), "
                    f"behind the caller's epoch {theirs[0]}; retry once it has caught up",
                    reason="MEMBER_TABLE_BEHIND",
                    metadata={"epoch": str(mine.epoch)},
                )
        start, end = _span_from_wire(request.span)
        last = scan_pages.decode_cursor(request.cursor)
        if last is not None:
            start = max(start, last + 1)
        # An LMDB scan blocks on the disk: off the event loop.
        records, last_token = await asyncio.to_thread(
            scan_pages.scan_page, self._engine, start, end, request.limit, request.prefix
        )
        response = replica_pb2.ScanResponse(
            next_cursor=scan_pages.encode_cursor(last_token), clock=self._clock.last
        )
        add_records(response.records, records)
        return response

    async def watch(
        self, request: replica_pb2.WatchRequest, _: Context
    ) -> AsyncGenerator[replica_pb2.WatchResponse, None]:
        self._clock.observe_peer(request.clock)
        spans = SpanSet.of([_span_from_wire(span) for span in request.spans])
        feed = self._changes.follow(
            spans=spans,
            prefix=request.prefix,
            from_version=request.from_version,
            after_seq=request.after_seq,
        )
        async with aclosing(feed) as batches:
            async for batch in batches:
                response = replica_pb2.WatchResponse(
                    progress=batch.progress, clock=self._clock.last, last_seq=batch.last_seq
                )
                add_records(response.records, batch.records)
                yield response

    async def merkle(
        self, request: replica_pb2.MerkleRequest, _: Context
    ) -> replica_pb2.MerkleResponse:
        self._clock.observe_peer(request.clock)
        if request.depth > MAX_DEPTH:
            raise InvalidArgument(
                f"Merkle depth {request.depth} is over the limit of {MAX_DEPTH}",
                reason="MERKLE_TOO_DEEP",
            )
        spans = [_span_from_wire(span) for span in request.spans]
        tree = await self._trees.tree(spans, request.depth, request.purge_horizon_ms)
        return replica_pb2.MerkleResponse(leaves=tree.leaves, clock=self._clock.last)


def _check_paxos_key(key: bytes) -> None:
    if not key:
        raise InvalidArgument("a Paxos message names no key", reason="EMPTY_KEY")


def _span_from_wire(span: replica_pb2.TokenSpan) -> tuple[int, int]:
    return span.start, TOKEN_SPACE if span.to_end else span.end
