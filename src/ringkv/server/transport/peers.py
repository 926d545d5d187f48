"""The other members: one long-lived channel each, replica calls, and liveness.

Liveness here is what calls observe: a peer that fails a call with
UNAVAILABLE or a deadline is marked down and probed with Ping until it
answers again. The membership layer refines this with heartbeats.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncGenerator, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol, TypeVar

import grpc

from ringkv.api import (
    forward_pb2,
    forward_pb2_grpc,
    kv_pb2,
    kv_pb2_grpc,
    replica_pb2,
    replica_pb2_grpc,
)
from ringkv.api.headers import FORWARD_HOPS
from ringkv.api.status import error_info
from ringkv.core.errors import (
    Compacted,
    InternalError,
    StaleMemberTable,
    Unavailable,
    WatchDisabled,
)
from ringkv.core.hlc import HybridLogicalClock
from ringkv.core.membership import Membership
from ringkv.core.paxos import Ballot, Promise, Proposal
from ringkv.core.records import Record, ReplicaAck
from ringkv.core.replica import Fence
from ringkv.core.validation import MAX_BATCH_BYTES
from ringkv.server.counters import Counters
from ringkv.server.transport.auth import CHANNEL_OPTIONS, NodeSecurity
from ringkv.server.transport.batching import Batcher, ItemT, ResultT
from ringkv.server.transport.forwarding import DEADLINE_GRACE_S, WriteForwarder
from ringkv.server.transport.link import (
    FORWARD_WRITE,
    REPLICA_READ,
    REPLICA_WRITE,
    LinkClient,
    LinkDialer,
    LinkUnreachable,
)
from ringkv.server.transport.rpc import PeerStatus, RelayedError
from ringkv.server.transport.wire import (
    add_records,
    ballot_to_wire,
    membership_from_wire,
    promise_from_wire,
    proposal_to_wire,
    record_from_wire,
)

log = logging.getLogger(__name__)

__all__ = ["CHANNEL_OPTIONS", "Fencing", "Peer", "PeerProber"]

ChannelOpener = Callable[[str], grpc.aio.Channel]
"""Opens a channel to another node's address with the node's credentials
(``NodeSecurity.open_channel``)."""
MAX_RECORDS_PER_CALL = 512
PIPELINE_DEPTH = 4
"""Replica calls in flight per peer and kind: the next batch leaves while
earlier ones are still on the wire or syncing on the replica (one HTTP/2
connection carries them all, in order)."""
_DOWN_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
LINK_RETRY_S = 30.0
"""How long a peer that serves no member link goes unasked again."""
LINK_REDIAL_S = 1.0
"""How long after its link could not be found or dialed a peer is asked again
(it may have restarted on another port): its calls go over gRPC meanwhile."""
FORWARD_RETRY_S = 30.0
"""How long a peer that refused batched forwards gets writes one by one."""
MERKLE_TIMEOUT_S = 120.0
"""How long a peer may take to build a Merkle tree: about ten seconds per
million keys on a loaded core, so a tenfold margin at that size. A peer's
other calls keep the short peer timeout."""


@dataclass(frozen=True, slots=True)
class Fencing:
    """How replica calls are fenced by member table (``replica.proto``'s Fence)."""

    table: Callable[[], Membership]
    """The table requests are planned on: its (epoch, term) goes with each call."""
    offer: Callable[[Membership], None]
    """Takes the newer table a replica refused a call with."""


class _Fenced(Protocol):
    """A replica request that carries the table it was planned on."""

    @property
    def fence(self) -> replica_pb2.Fence: ...

    def SerializeToString(self, *, deterministic: bool = ...) -> bytes: ...  # noqa: N802


class _FencedAnswer(Protocol):
    """A replica answer: the peer's clock, and its table if it refused."""

    @property
    def clock(self) -> int: ...

    @property
    def newer_table(self) -> kv_pb2.MemberTable: ...

    def ParseFromString(self, serialized: bytes) -> int: ...  # noqa: N802


FencedRequest = TypeVar("FencedRequest", bound=_Fenced)
FencedResponse = TypeVar("FencedResponse", bound=_FencedAnswer)

UNFENCED = Fencing(lambda: Membership(0, ()), lambda _: None)
"""For tools and tests that talk to one replica directly."""


class Peer:
    """Another member, reached over one channel."""

    def __init__(
        self,
        node_id: str,
        address: str,
        clock: HybridLogicalClock,
        timeout_s: float,
        *,
        counters: Counters | None = None,
        open_channel: ChannelOpener | None = None,
        fencing: Fencing = UNFENCED,
        link_dialer: LinkDialer | None = None,
    ) -> None:
        self.node_id = node_id
        self._fencing = fencing
        self.address = address
        self.alive = True
        self._clock = clock
        self._timeout_s = timeout_s
        self._counters = counters
        """Where failed replica calls are counted (``replica_errors``), if anywhere."""
        self._channel = (open_channel or NodeSecurity().open_channel)(address)
        self._replica = replica_pb2_grpc.ReplicaStub(self._channel)
        self.kv = kv_pb2_grpc.KeyValueStub(self._channel)
        """The peer's client API, for forwarding conditional writes to it."""
        forward = forward_pb2_grpc.ForwardStub(self._channel)
        self._forwarder = WriteForwarder(
            lambda writes, timeout_s: forward.Writes(writes, timeout=timeout_s)
        )
        self._batched_forwards_refused_until = 0.0
        """Until when (event loop time) writes go to the peer one call each."""
        self.cluster = kv_pb2_grpc.ClusterStub(self._channel)
        """The peer's membership API: heartbeats, elections, joins."""
        self._link_dialer = link_dialer
        self._link: LinkClient | None = None
        self._link_lookup: asyncio.Task[None] | None = None
        self._link_lookup_after = 0.0
        """When (event loop time) the peer may be asked again where its link is."""
        self._link_failures = 0
        """Links found and then not dialed since the last call one carried."""
        self._writers: dict[str, Batcher[tuple[Record, Fence | None], ReplicaAck]] = {}
        self._reader: Batcher[tuple[bytes, Fence | None], Record | None] | None = None

    def _failed(
        self, code: grpc.StatusCode, what: str, *, slow_is_down: bool = True
    ) -> Unavailable:
        if self._counters is not None:
            self._counters.replica_error(self.node_id, what.removeprefix("replica "))
        down = code is grpc.StatusCode.UNAVAILABLE or (slow_is_down and code in _DOWN_CODES)
        if down and self.alive:
            self.alive = False
            log.warning("peer down", extra={"peer": self.node_id, "during": what})
        return Unavailable(f"{what} on {self.node_id} failed: {code.name}")

    def _linked(self) -> LinkClient | None:
        """The peer's member link, once known; until then (and for a peer that
        serves none) calls go over gRPC, and the first asks where it is."""
        if self._link is not None or self._link_dialer is None:
            return self._link
        loop = asyncio.get_running_loop()
        if self._link_lookup is None and loop.time() >= self._link_lookup_after:
            self._link_lookup = loop.create_task(self._look_up_link(self._link_dialer))
        return None

    async def _look_up_link(self, dialer: LinkDialer) -> None:
        loop = asyncio.get_running_loop()
        try:
            answer = await self._replica.Link(replica_pb2.LinkRequest(), timeout=self._timeout_s)
        except grpc.aio.AioRpcError as error:
            # An older version serves no link: ask again after a while, as it
            # may be upgraded meanwhile; a peer that did not answer, soon.
            unimplemented = error.code() is grpc.StatusCode.UNIMPLEMENTED
            self._link_lookup_after = loop.time() + (
                LINK_RETRY_S if unimplemented else LINK_REDIAL_S
            )
        else:
            if answer.port:
                self._link = dialer.dial(self.node_id, self.address, answer.port)
            else:
                self._link_lookup_after = loop.time() + LINK_RETRY_S
        finally:
            self._link_lookup = None

    def _unlinked(self, link: LinkClient, why: LinkUnreachable) -> None:
        """Forget a link that could not be dialed (the peer restarted on
        another port, or serves none now): the next call asks again."""
        if self._link is link:
            self._link = None
            # Doubling up to LINK_RETRY_S: a link a firewall blocks costs a
            # failed dial now and then, not every second.
            delay = min(LINK_RETRY_S, LINK_REDIAL_S * 2**self._link_failures)
            self._link_failures += 1
            self._link_lookup_after = asyncio.get_running_loop().time() + delay
            log.info("member link unreachable", extra={"peer": self.node_id, "error": str(why)})
            link.close()

    def mark_down(self) -> None:
        """Note a failure seen on a call made outside this class (forwarding)."""
        if self.alive:
            self.alive = False
            log.warning("peer down", extra={"peer": self.node_id, "during": "forward"})

    async def read(self, key: bytes, *, fence: Fence | None = None) -> Record | None:
        """The peer's newest version of a key (None if it holds nothing).

        ``fence``: the (epoch, term) of the table the read was planned on; None
        for this node's table now. Concurrent reads from this peer share one call.
        """
        (answer,) = await self.read_many([(key, fence)])
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def read_many(
        self, reads: list[tuple[bytes, Fence | None]]
    ) -> list[Record | Exception | None]:
        """``read`` for many keys, each with its fence: one answer each, in one
        batch with whatever else is being read from this peer."""
        if self._reader is None:
            self._reader = Batcher(
                self._read_batch,
                max_batch=MAX_RECORDS_PER_CALL,
                name=f"reads from {self.node_id}",
                max_in_flight=PIPELINE_DEPTH,
            )
        return await _in_pieces(self._reader, reads, lambda read: len(read[0]))

    async def _read_batch(self, reads: list[tuple[bytes, Fence | None]]) -> list[Record | None]:
        fence = self._fence(fence for _, fence in reads)
        keys = [key for key, _ in reads]
        records: list[Record | None] = []
        # A replica answers the first keys up to a batch's bytes: ask again
        # for the rest.
        while len(records) < len(keys):
            request = replica_pb2.ReadRequest(
                keys=keys[len(records) :], clock=self._clock.last, fence=fence
            )
            response = await self._fenced_call(
                self._replica.Read,
                request,
                "replica read",
                linked=(REPLICA_READ, replica_pb2.ReadResponse),
            )
            if not response.results:
                raise InternalError(f"{self.node_id} answered a read of {len(keys)} keys with none")
            records += [record_from_wire(r.record) if r.found else None for r in response.results]
        return records

    async def write(
        self, record: Record, *, hint_for: str | None = None, fence: Fence | None = None
    ) -> ReplicaAck:
        """Send one record; the replica's answer.

        ``fence`` as for ``read``. Concurrent writes to this peer share one call.
        """
        (answer,) = await self.write_many([(record, fence)], hint_for=hint_for)
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def write_many(
        self, writes: list[tuple[Record, Fence | None]], *, hint_for: str | None = None
    ) -> list[ReplicaAck | Exception]:
        """``write`` for many records, each with its fence: one answer each, in
        as few calls as the batch limits allow."""
        target = hint_for or ""
        writer = self._writers.get(target)
        if writer is None:
            writer = self._writers[target] = Batcher(
                lambda records: self._write_batch(records, target),
                max_batch=MAX_RECORDS_PER_CALL,
                max_bytes=MAX_BATCH_BYTES,
                size_of=_write_size,
                name=f"writes to {self.node_id}",
                max_in_flight=PIPELINE_DEPTH,
            )
        return await _in_pieces(writer, writes, _write_size)

    async def _write_batch(
        self, writes: list[tuple[Record, Fence | None]], hint_for: str
    ) -> list[ReplicaAck | Exception]:
        records = [record for record, _ in writes]
        request = replica_pb2.WriteRequest(
            hint_for=hint_for,
            clock=self._clock.last,
            fence=self._fence(fence for _, fence in writes),
        )
        add_records(request.records, records)
        response = await self._fenced_call(
            self._replica.Write,
            request,
            "replica write",
            linked=(REPLICA_WRITE, replica_pb2.WriteResponse),
        )
        if not len(response.replaced_live) == len(response.newer) == len(records):
            raise InternalError(f"{self.node_id} answered a write of {len(records)} records oddly")
        return [
            InternalError(f"{self.node_id} could not store the record")
            if i < len(response.failed) and response.failed[i]
            else ReplicaAck(response.replaced_live[i], response.newer[i])
            for i in range(len(records))
        ]

    async def prepare(self, key: bytes, ballot: Ballot) -> Promise:
        """The peer's promise for ``ballot`` on ``key``, with its copy of the key."""
        request = replica_pb2.PrepareRequest(
            key=key, ballot=ballot_to_wire(ballot), clock=self._clock.last, fence=self._fence()
        )
        response = await self._fenced_call(self._replica.Prepare, request, "replica prepare")
        return promise_from_wire(response)

    async def propose(self, proposal: Proposal) -> bool:
        """Whether the peer accepted the proposal."""
        request = replica_pb2.ProposeRequest(
            proposal=proposal_to_wire(proposal), clock=self._clock.last, fence=self._fence()
        )
        response = await self._fenced_call(self._replica.Propose, request, "replica propose")
        return response.accepted

    async def commit(self, proposal: Proposal) -> None:
        """Have the peer apply a chosen proposal."""
        request = replica_pb2.CommitRequest(
            proposal=proposal_to_wire(proposal), clock=self._clock.last, fence=self._fence()
        )
        await self._fenced_call(self._replica.Commit, request, "replica commit")

    async def _fenced_call(
        self,
        method: grpc.aio.UnaryUnaryMultiCallable[FencedRequest, FencedResponse],
        request: FencedRequest,
        what: str,
        *,
        linked: tuple[int, type[FencedResponse]] | None = None,
    ) -> FencedResponse:
        """Make one fenced replica call: its answer, after the peer's clock is
        observed; StaleMemberTable if the peer refused the request's table.

        ``linked``: the call's method and answer type on the member link,
        which carries it when the peer has one."""
        link = self._linked() if linked is not None else None
        try:
            response = None
            timeout_s = self._timeout_s
            if link is not None and linked is not None:
                started = time.monotonic()
                response = await self._over_link(link, linked, request)
                timeout_s -= time.monotonic() - started  # what the dial left
            if response is None:
                response = await method(request, timeout=max(0.0, timeout_s))
        except grpc.aio.AioRpcError as error:
            raise self._failed(error.code(), what) from None
        except RelayedError as failed:
            raise self._failed(failed.status.code, what) from None
        self._clock.observe_peer(response.clock)
        self._check_fence(response.newer_table, request.fence)
        return response

    async def _over_link(
        self,
        link: LinkClient,
        linked: tuple[int, type[FencedResponse]],
        request: FencedRequest,
    ) -> FencedResponse | None:
        """The answer over the member link; None if it could not be dialed
        (nothing was sent: the caller makes the call over gRPC)."""
        method_id, answer_type = linked
        try:
            raw = await link.call(method_id, request.SerializeToString(), self._timeout_s)
        except LinkUnreachable as why:
            self._unlinked(link, why)
            return None
        self._link_failures = 0
        answer = answer_type()
        answer.ParseFromString(raw)
        return answer

    def _fence(self, planned: Iterable[Fence | None] = ()) -> replica_pb2.Fence:
        """The fence a call carries: the oldest table any of its items was
        planned on (this node's table now for an item planned on none), so
        the replica refuses the call if it is newer than any of them."""
        now = self._fencing.table().fence
        epoch, term = min((fence or now for fence in planned), default=now)
        return replica_pb2.Fence(epoch=epoch, term=term)

    def _check_fence(self, newer: kv_pb2.MemberTable, sent: replica_pb2.Fence) -> None:
        """Raise StaleMemberTable if the peer refused the call, after offering its table."""
        table = membership_from_wire(newer)
        if table is None:
            return
        self._fencing.offer(table)
        raise StaleMemberTable(
            f"{self.node_id} is on member table epoch {table.epoch} (term {table.term}); "
            f"the request was planned on epoch {sent.epoch} (term {sent.term})",
            metadata={"epoch": str(table.epoch)},
        )

    async def probe(self) -> bool:
        """Ping the peer; mark it alive again if it answers."""
        try:
            await self.kv.Ping(kv_pb2.PingRequest(), timeout=min(1.0, self._timeout_s))
        except grpc.aio.AioRpcError as error:
            # Refused for load (OVERLOADED) is an answer: the peer is up.
            if error.code() is not grpc.StatusCode.RESOURCE_EXHAUSTED:
                return False
        if not self.alive:
            self.alive = True
            log.info("peer up", extra={"peer": self.node_id})
        return True

    async def forward(
        self, write: forward_pb2.ForwardedWrite, timeout_s: float
    ) -> forward_pb2.ForwardedAnswer:
        """The peer's answer to a plain write it owns (``WriteForwarder.send``).

        A peer that does not serve ``Forward/Writes`` (an older version,
        during a rolling upgrade) gets its writes one by one as client calls
        instead, as it did before, and is asked again after
        ``FORWARD_RETRY_S``: nothing ran there when it refused.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        link = self._linked()
        if link is not None:
            try:
                await link.connect(timeout_s)
                # Each write alone: a frame costs little, so sharing one buys
                # nothing. It carries what is left of its deadline as it leaves.
                left = deadline - loop.time()
                write.timeout_ms = max(1, math.ceil(left * 1000))
                raw = await link.call(
                    FORWARD_WRITE, write.SerializeToString(), left + DEADLINE_GRACE_S
                )
            except LinkUnreachable as why:
                self._unlinked(link, why)
            else:
                self._link_failures = 0
                answer = forward_pb2.ForwardedAnswer.FromString(raw)
                if answer.HasField("error"):
                    raise RelayedError(PeerStatus.of_status(answer.error))
                return answer
        if loop.time() >= self._batched_forwards_refused_until:
            try:
                return await self._forwarder.send(write, max(0.0, deadline - loop.time()))
            except RelayedError as failed:
                if failed.status.code is not grpc.StatusCode.UNIMPLEMENTED:
                    raise
                self._batched_forwards_refused_until = loop.time() + FORWARD_RETRY_S
                log.warning("peer does not take batched forwards", extra={"peer": self.node_id})
        return await self._forward_alone(write, max(0.0, deadline - loop.time()))

    async def _forward_alone(
        self, write: forward_pb2.ForwardedWrite, timeout_s: float
    ) -> forward_pb2.ForwardedAnswer:
        hops = ((FORWARD_HOPS, "1"),)
        try:
            if write.HasField("delete"):
                deleted = await self.kv.Delete(write.delete, timeout=timeout_s, metadata=hops)
                return forward_pb2.ForwardedAnswer(delete=deleted)
            written = await self.kv.Set(write.set, timeout=timeout_s, metadata=hops)
            return forward_pb2.ForwardedAnswer(set=written)
        except grpc.aio.AioRpcError as error:
            raise RelayedError(PeerStatus.of_call(error)) from None

    async def close(self) -> None:
        self._link_dialer = None  # no lookups from now on
        if self._link_lookup is not None:
            self._link_lookup.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._link_lookup
        if self._link is not None:
            self._link.close()
        await self._forwarder.close()
        for writer in self._writers.values():
            await writer.close()
        if self._reader is not None:
            await self._reader.close()
        await self._channel.close()

    async def scan(
        self, start: int, end: int, cursor: bytes, limit: int, prefix: bytes = b""
    ) -> tuple[list[Record], bytes]:
        """One page of the peer's records with ``start <= token < end`` (``end``
        up to 2**64) and keys under ``prefix``, tombstones included, and the
        cursor of the next page.
        PreconditionFailed (MEMBER_TABLE_BEHIND) while the peer is on an older
        member table than this node's.

        Start with an empty cursor; an empty cursor back means the span is
        done. The peer caps ``limit`` (at 1000) and cuts pages of large values
        shorter.
        """
        request = replica_pb2.ScanRequest(
            span=self._span(start, end),
            cursor=cursor,
            limit=limit,
            clock=self._clock.last,
            fence=self._fence(),
            prefix=prefix,
        )
        try:
            response = await self._replica.Scan(request, timeout=self._timeout_s)
        except grpc.aio.AioRpcError as error:
            raise self._failed(error.code(), "replica scan") from None
        self._clock.observe_peer(response.clock)
        return [record_from_wire(r) for r in response.records], response.next_cursor

    async def watch(
        self,
        spans: Iterable[tuple[int, int]],
        prefix: bytes,
        from_version: int,
        after_seq: int = 0,
    ) -> AsyncGenerator[tuple[list[Record], int, int], None]:
        """The peer's changes to keys under ``prefix`` in ``spans`` above
        ``from_version``, with its progress marks, as they come
        (``ringkv.server.data.change_feed``); until cancelled or it fails.

        Compacted when its log no longer reaches back to ``from_version``,
        Unavailable when the stream breaks.
        """
        request = replica_pb2.WatchRequest(
            spans=[self._span(start, end) for start, end in spans],
            prefix=prefix,
            from_version=from_version,
            clock=self._clock.last,
            after_seq=after_seq,
        )
        # No deadline: the stream lives as long as the watch.
        call = self._replica.Watch(request)
        try:
            async for response in call:
                self._clock.observe_peer(response.clock)
                records = [record_from_wire(r) for r in response.records]
                yield records, response.progress, response.last_seq
        except grpc.aio.AioRpcError as error:
            info = error_info(error.trailing_metadata())
            if info is not None and info.reason == Compacted.default_reason:
                raise Compacted(error.details() or "", metadata=dict(info.metadata)) from None
            if info is not None and info.reason == WatchDisabled.default_reason:
                raise WatchDisabled(error.details() or "") from None
            raise self._failed(error.code(), "replica watch", slow_is_down=False) from None
        finally:
            call.cancel()
        raise Unavailable(f"{self.node_id} ended a watch stream")

    async def merkle(
        self, spans: list[tuple[int, int]], depth: int, purge_horizon_ms: int
    ) -> tuple[int, ...]:
        """The leaves of the peer's Merkle tree (``ringkv.core.merkle``) of
        ``depth`` over its records in ``spans`` (disjoint), leaving out what
        garbage collection may purge at ``purge_horizon_ms``."""
        request = replica_pb2.MerkleRequest(
            spans=[self._span(start, end) for start, end in spans],
            depth=depth,
            purge_horizon_ms=purge_horizon_ms,
            clock=self._clock.last,
        )
        try:
            response = await self._replica.Merkle(request, timeout=MERKLE_TIMEOUT_S)
        except grpc.aio.AioRpcError as error:
            # Slow is not down: a tree of many keys takes the peer a while.
            raise self._failed(error.code(), "replica merkle", slow_is_down=False) from None
        self._clock.observe_peer(response.clock)
        if len(response.leaves) != 1 << depth:
            raise InternalError(f"{self.node_id} answered a Merkle request of depth {depth} oddly")
        return tuple(response.leaves)

    @staticmethod
    def _span(start: int, end: int) -> replica_pb2.TokenSpan:
        # 2**64 does not fit a uint64: the wire says "to the end" instead.
        if end >= 1 << 64:
            return replica_pb2.TokenSpan(start=start, to_end=True)
        return replica_pb2.TokenSpan(start=start, end=end)


def _write_size(write: tuple[Record, Fence | None]) -> int:
    return len(write[0].key) + len(write[0].value)


async def _in_pieces(
    batcher: Batcher[ItemT, ResultT], items: list[ItemT], size_of: Callable[[ItemT], int]
) -> list[ResultT | Exception]:
    """Submit ``items`` in pieces of at most a call's records and bytes (a
    group travels in one call), all at once; one result each, in order."""
    pieces: list[list[ItemT]] = [[]]
    size = 0
    for item in items:
        item_size = size_of(item)
        if pieces[-1] and (
            len(pieces[-1]) >= MAX_RECORDS_PER_CALL or size + item_size > MAX_BATCH_BYTES
        ):
            pieces.append([])
            size = 0
        pieces[-1].append(item)
        size += item_size
    if len(pieces) == 1:
        return await batcher.submit_many(pieces[0])
    answers = await asyncio.gather(
        *(batcher.submit_many(piece) for piece in pieces), return_exceptions=True
    )
    # A piece whose call failed fails its own items, not the other pieces'.
    results: list[ResultT | Exception] = []
    for piece, answer in zip(pieces, answers, strict=True):
        if isinstance(answer, BaseException):
            if not isinstance(answer, Exception):
                raise answer  # cancellation
            results += [answer] * len(piece)
        else:
            results += answer
    return results


class PeerProber:
    """Pings every down peer periodically so it is used again once it is back."""

    def __init__(self, peers: Mapping[str, Peer], interval_s: float) -> None:
        self._peers = peers
        self._interval_s = interval_s
        self._task = asyncio.get_running_loop().create_task(self._run(), name="peer-prober")

    async def _run(self) -> None:
        while True:
            down = [peer for peer in self._peers.values() if not peer.alive]
            await asyncio.gather(*(peer.probe() for peer in down))
            await asyncio.sleep(self._interval_s)

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
