"""The client API, service ``kv.KeyValue``: validate, route, coordinate, answer.

Every check runs before anything is written, so a rejected request changes
nothing. Reads are coordinated by the node that receives them. Writes are
coordinated by the key's owner (its first live replica), as in the seed:
another node forwards the request there, with a hop limit and the caller's
remaining deadline, and coordinates it itself if the owner cannot be reached
or may not stamp versions. Plain writes to one owner share forward calls
(``ringkv.server.transport.forwarding``); conditional ones go alone. A
node whose own clock may not stamp (``ringkv.server.cluster.clock_guard``)
forwards its writes to another node instead.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Protocol, TypeVar

import grpc

from ringkv.api import forward_pb2, kv_pb2
from ringkv.api.headers import FORWARD_HOPS, RING_EPOCH
from ringkv.core.consistency import Consistency
from ringkv.core.errors import DeadlineExceeded, InvalidArgument, ResourceExhausted, RingkvError
from ringkv.core.records import Record
from ringkv.core.scan import decode_cursor, encode_cursor
from ringkv.core.validation import MESSAGE_OVERHEAD_BYTES, Limits, expected_version, ttl_ms
from ringkv.server.cluster.clock_guard import CLOCK_OFFSET, CLOCK_UNCHECKED, ClockGuard
from ringkv.server.cluster.cluster_view import ClusterView
from ringkv.server.cluster.leader_lease import NO_LEADER_LEASE
from ringkv.server.counters import Counters
from ringkv.server.data.coordinator import Coordinator
from ringkv.server.data.key_scan import KeyScanner
from ringkv.server.data.watch_coordinator import WatchCoordinator
from ringkv.server.transport.peers import Peer
from ringkv.server.transport.rpc import (
    SHUTTING_DOWN,
    Context,
    Method,
    PeerStatus,
    RelayedError,
    StreamMethod,
)

RequestT = TypeVar("RequestT")
ResponseT = TypeVar("ResponseT")
MAX_HOPS = 1
"""A write passes through one node at most before the one that coordinates
it. Batched forwards (``ringkv.internal.Forward``) carry no hop count: the
owner never forwards them again."""
MAX_KEYS_PER_CALL = 1000


class _LeveledRequest(Protocol):
    @property
    def consistency(self) -> int: ...


class KeyValueService:
    """Handlers of ``kv.KeyValue``."""

    name = "kv.KeyValue"

    def __init__(
        self,
        view: ClusterView,
        coordinator: Coordinator,
        scanner: KeyScanner,
        watches: WatchCoordinator,
        limits: Limits,
        *,
        read_level: Consistency,
        write_level: Consistency,
        request_timeout_s: float,
        counters: Counters,
        clock_guard: ClockGuard,
    ) -> None:
        self._counters = counters
        self._clock_guard = clock_guard
        self._view = view
        self._coordinator = coordinator
        self._scanner = scanner
        self._watches = watches
        self._limits = limits
        self._read_level = read_level
        self._write_level = write_level
        self._request_timeout_s = request_timeout_s

    def methods(self) -> dict[str, Method | StreamMethod]:
        read, write = self._read_level_name, self._write_level_name
        return {
            "Get": Method(kv_pb2.GetRequest, self.get, read),
            "Set": Method(kv_pb2.SetRequest, self.set, write),
            "Delete": Method(kv_pb2.DeleteRequest, self.delete, write),
            "Replicate": Method(
                kv_pb2.ReplicateRequest, self.replicate, lambda _: self._write_level.name.lower()
            ),
            "Ping": Method(kv_pb2.PingRequest, self.ping),
            "MultiGet": Method(kv_pb2.MultiGetRequest, self.multi_get, read),
            "MultiSet": Method(kv_pb2.MultiSetRequest, self.multi_set, write),
            "Scan": Method(kv_pb2.ScanRequest, self.scan, read),
            "Watch": StreamMethod(kv_pb2.WatchRequest, self.watch, endless=True),
        }

    def _read_level_name(self, request: _LeveledRequest) -> str:
        """The level a read runs at, for metrics."""
        return self._level(request.consistency, self._read_level).name.lower()

    def _write_level_name(self, request: _LeveledRequest) -> str:
        """The level a write runs at, for metrics."""
        return self._level(request.consistency, self._write_level).name.lower()

    def _answer(self, context: Context) -> None:
        """Tell the caller our ring epoch, so a token-aware client knows when to refresh."""
        context.set_trailing_metadata(((RING_EPOCH, str(self._view.epoch)),))

    def _timeout(self, context: Context) -> float:
        remaining = context.time_remaining()
        return (
            self._request_timeout_s
            if remaining is None
            else min(remaining, self._request_timeout_s)
        )

    @staticmethod
    def _level(requested: int, default: Consistency) -> Consistency:
        level = Consistency.from_wire(requested)
        return default if level is Consistency.DEFAULT else level

    async def get(self, request: kv_pb2.GetRequest, context: Context) -> kv_pb2.GetResponse:
        self._answer(context)
        key = self._limits.key(request.key)
        level = self._level(request.consistency, self._read_level)
        return _get_response(await self._coordinator.read(key, level, self._timeout(context)))

    async def set(self, request: kv_pb2.SetRequest, context: Context) -> kv_pb2.SetResponse:
        self._answer(context)
        return await self._set(request, self._call(context))

    async def set_forwarded(
        self, request: kv_pb2.SetRequest, timeout_s: float
    ) -> kv_pb2.SetResponse:
        """A Set another node forwarded here (``ForwardService``)."""
        return await self._set(request, self._forwarded_call(timeout_s))

    async def _set(self, request: kv_pb2.SetRequest, call: _Call) -> kv_pb2.SetResponse:
        key = self._limits.key(request.key)
        value = self._limits.value(request.value)
        expected = expected_version(request.version)
        ttl = ttl_ms(request.ttl_ms)
        level = self._level(request.consistency, self._write_level)
        conditional = expected is not None or level is Consistency.LINEARIZABLE

        async def send(peer: Peer, timeout_s: float) -> kv_pb2.SetResponse:
            if conditional:
                return await _alone(peer.kv.Set, request, timeout_s, call.hops)
            answer = await peer.forward(forward_pb2.ForwardedWrite(set=request), timeout_s)
            return answer.set

        forwarded = await self._forward(key, send, call, conditional=conditional)
        if forwarded is not None:
            return forwarded
        timeout = call.timeout_s()
        written = await self._coordinator.write(
            key,
            value,
            level=level,
            timeout_s=timeout,
            ttl_ms=ttl,
            expected=expected,
            clock_wait_s=call.clock_wait_s(timeout),
        )
        return kv_pb2.SetResponse(ok=True, version=written.record.version.timestamp)

    async def delete(
        self, request: kv_pb2.DeleteRequest, context: Context
    ) -> kv_pb2.DeleteResponse:
        self._answer(context)
        return await self._delete(request, self._call(context))

    async def delete_forwarded(
        self, request: kv_pb2.DeleteRequest, timeout_s: float
    ) -> kv_pb2.DeleteResponse:
        """A Delete another node forwarded here (``ForwardService``)."""
        return await self._delete(request, self._forwarded_call(timeout_s))

    async def _delete(self, request: kv_pb2.DeleteRequest, call: _Call) -> kv_pb2.DeleteResponse:
        key = self._limits.key(request.key)
        expected = expected_version(request.version)
        level = self._level(request.consistency, self._write_level)
        conditional = expected is not None or level is Consistency.LINEARIZABLE

        async def send(peer: Peer, timeout_s: float) -> kv_pb2.DeleteResponse:
            if conditional:
                return await _alone(peer.kv.Delete, request, timeout_s, call.hops)
            answer = await peer.forward(forward_pb2.ForwardedWrite(delete=request), timeout_s)
            return answer.delete

        forwarded = await self._forward(key, send, call, conditional=conditional)
        if forwarded is not None:
            return forwarded
        timeout = call.timeout_s()
        written = await self._coordinator.write(
            key,
            b"",
            level=level,
            timeout_s=timeout,
            tombstone=True,
            expected=expected,
            clock_wait_s=call.clock_wait_s(timeout),
        )
        return kv_pb2.DeleteResponse(
            ok=True, version=written.record.version.timestamp, found=written.replaced_live
        )

    async def replicate(
        self, request: kv_pb2.ReplicateRequest, context: Context
    ) -> kv_pb2.ReplicateResponse:
        key = self._limits.key(request.key)
        value = b"" if request.is_delete else self._limits.value(request.value)
        call = self._call(context)
        forwarded = await self._forward(
            key,
            lambda peer, timeout_s: _alone(peer.kv.Replicate, request, timeout_s, call.hops),
            call,
            conditional=self._write_level is Consistency.LINEARIZABLE,
        )
        if forwarded is not None:
            return forwarded
        timeout = call.timeout_s()
        await self._coordinator.write(
            key,
            value,
            level=self._write_level,
            timeout_s=timeout,
            tombstone=request.is_delete,
            clock_wait_s=call.clock_wait_s(timeout),
        )
        return kv_pb2.ReplicateResponse(ok=True)

    async def multi_get(
        self, request: kv_pb2.MultiGetRequest, context: Context
    ) -> kv_pb2.MultiGetResponse:
        self._answer(context)
        _check_batch_size(len(request.keys))
        keys = [self._limits.key(key) for key in request.keys]
        level = self._level(request.consistency, self._read_level)
        timeout = self._timeout(context)
        records = await self._read_within(keys, level, timeout)
        return kv_pb2.MultiGetResponse(results=[_get_response(records[k]) for k in keys])

    async def _read_within(
        self, keys: list[bytes], level: Consistency, timeout: float
    ) -> dict[bytes, Record | None]:
        """Each distinct key read once, or ResourceExhausted as soon as the
        answer would outgrow a message (the reads still out are cancelled)."""
        limit = self._limits.message_bytes - MESSAGE_OVERHEAD_BYTES
        reads = {
            key: asyncio.ensure_future(self._coordinator.read(key, level, timeout))
            for key in dict.fromkeys(keys)
        }
        # A key asked for twice is answered twice.
        repeats = Counter(keys)
        size = 0
        try:
            for read in asyncio.as_completed(reads.values()):
                record = await read
                if record is not None:
                    size += (len(record.key) + len(record.value)) * repeats[record.key]
                if size > limit:
                    raise ResourceExhausted(
                        f"the answer would be over {limit} bytes: ask for fewer keys per call",
                        reason="RESPONSE_TOO_LARGE",
                        metadata={"limit": str(limit)},
                    )
        finally:
            for read in reads.values():
                read.cancel()
        return {key: read.result() for key, read in reads.items()}

    async def multi_set(
        self, request: kv_pb2.MultiSetRequest, context: Context
    ) -> kv_pb2.MultiSetResponse:
        self._answer(context)
        _check_batch_size(len(request.entries))
        level = self._level(request.consistency, self._write_level)
        entries = []
        for entry in request.entries:
            if entry.version or entry.consistency:
                raise InvalidArgument(
                    "MultiSet entries take no version or consistency of their own",
                    reason="UNSUPPORTED_IN_BATCH",
                )
            entries.append(
                (self._limits.key(entry.key), self._limits.value(entry.value), ttl_ms(entry.ttl_ms))
            )
        call = self._call(context)
        if not self._clock_guard.check().may_stamp and entries:
            forwarded = await self._forward(
                entries[0][0],
                lambda peer, timeout_s: _alone(peer.kv.MultiSet, request, timeout_s, call.hops),
                call,
                conditional=False,
            )
            if forwarded is not None:
                return forwarded
        timeout = call.timeout_s()
        outcomes = await self._coordinator.write_many(
            entries, level=level, timeout_s=timeout, clock_wait_s=call.clock_wait_s(timeout)
        )
        # The call fails if any of its writes did (MultiSet is not atomic:
        # the others may have taken effect), with the first key's error.
        written = []
        for outcome in outcomes:
            if isinstance(outcome, RingkvError):
                raise outcome
            written.append(outcome)
        return kv_pb2.MultiSetResponse(
            results=[
                kv_pb2.SetResponse(ok=True, version=w.record.version.timestamp) for w in written
            ]
        )

    async def scan(self, request: kv_pb2.ScanRequest, context: Context) -> kv_pb2.ScanResponse:
        self._answer(context)
        prefix = self._limits.prefix(request.prefix)
        after = decode_cursor(request.cursor)
        level = self._level(request.consistency, self._read_level)
        if level is Consistency.LINEARIZABLE:
            if request.consistency:
                raise InvalidArgument(
                    "a scan reads at ONE, QUORUM or ALL, not LINEARIZABLE",
                    reason="LEVEL_NOT_SUPPORTED",
                )
            # The node's default read level: a scan's closest is QUORUM.
            level = Consistency.QUORUM
        limit = min(request.limit or MAX_KEYS_PER_CALL, MAX_KEYS_PER_CALL)
        page = await self._scanner.page(prefix, after, limit, level, self._timeout(context))
        response = kv_pb2.ScanResponse(
            next_cursor=b"" if page.last_token is None else encode_cursor(page.last_token)
        )
        add = response.entries.add
        for record in page.records:
            add(
                key=record.key.decode("utf-8"),
                value=b"" if request.keys_only else record.value,
                version=record.version.timestamp,
                expires_at_ms=record.expires_at_ms,
            )
        return response

    async def watch(
        self, request: kv_pb2.WatchRequest, _: Context
    ) -> AsyncGenerator[kv_pb2.WatchResponse, None]:
        prefix = self._limits.prefix(request.prefix)
        if request.from_version < 0:
            raise InvalidArgument(
                f"from_version must not be negative, got {request.from_version}",
                reason="NEGATIVE_VERSION",
            )
        async with aclosing(self._watches.watch(prefix, request.from_version)) as batches:
            async for batch in batches:
                response = kv_pb2.WatchResponse(resume_version=batch.resume_version)
                add = response.events.add
                for record in batch.records:
                    add(
                        key=record.key.decode("utf-8"),
                        value=record.value,
                        version=record.version.timestamp,
                        kind=kv_pb2.EVENT_DELETE if record.tombstone else kv_pb2.EVENT_PUT,
                        expires_at_ms=record.expires_at_ms,
                    )
                yield response

    async def ping(self, _request: kv_pb2.PingRequest, _: Context) -> kv_pb2.PingResponse:
        return kv_pb2.PingResponse(node_id=self._view.node_id)

    def _call(self, context: Context) -> _Call:
        return _Call(_hops(context), _now() + self._timeout(context))

    def _forwarded_call(self, timeout_s: float) -> _Call:
        return _Call(MAX_HOPS, _now() + min(timeout_s, self._request_timeout_s))

    async def _forward(
        self,
        key: bytes,
        send: Callable[[Peer, float], Awaitable[ResponseT]],
        call: _Call,
        *,
        conditional: bool,
    ) -> ResponseT | None:
        """The owner's answer when the write belongs there; None to coordinate here.

        While this node's clock may not stamp versions, the other live nodes
        (the key's replicas first) are tried in turn until one answers:
        conditional writes too, since their Paxos rounds are safe from any
        coordinator.
        """
        if call.hops >= MAX_HOPS:
            return None
        for _ in range(len(self._view.peers)):
            # Until its first verdict a node (just started) keeps its writes:
            # it waits for the verdict rather than send everything elsewhere.
            may_stamp = (
                self._clock_guard.check().may_stamp or not self._clock_guard.first_verdict.is_set()
            )
            target = self._view.owner(key) if may_stamp else self._view.first_live_other(key)
            if target is None or target == self._view.node_id:
                return None
            answer = await self._relay(
                self._view.peers[target], send, call, conditional=conditional
            )
            if answer is not None or may_stamp:
                return answer
        return None

    async def _relay(
        self,
        peer: Peer,
        send: Callable[[Peer, float], Awaitable[ResponseT]],
        call: _Call,
        *,
        conditional: bool,
    ) -> ResponseT | None:
        """The peer's answer to a forwarded write; None if it did not run there."""
        self._counters.forwarded_writes += 1
        try:
            return await send(peer, call.timeout_s())
        except RelayedError as relayed:
            error = relayed.status
            reason = error.reason
            if reason in (CLOCK_OFFSET, CLOCK_UNCHECKED, NO_LEADER_LEASE):
                return None  # it does not coordinate now; nothing ran there
            if reason is None and error.code == grpc.StatusCode.UNAVAILABLE:
                peer.mark_down()
                if conditional and not _never_connected(error):
                    # The connection broke during the call: the check-and-write
                    # may have run there, and running it again here could fail
                    # on its own first run (VERSION_MISMATCH for a stored write).
                    raise DeadlineExceeded(
                        f"{peer.node_id} dropped the forwarded conditional write; "
                        "it may or may not have been applied",
                        reason="WRITE_UNCERTAIN",
                    ) from None
                return None  # Unreachable: another node may coordinate instead.
            if reason == SHUTTING_DOWN:
                # Nothing ran there: it is closing, and another node may
                # coordinate instead.
                peer.mark_down()
                return None
            if reason is None and error.code == grpc.StatusCode.DEADLINE_EXCEEDED:
                # A hung node: it may have run the write, so its outcome is
                # unknown to the caller, but later writes go elsewhere.
                peer.mark_down()
            raise


@dataclass(frozen=True, slots=True)
class _Call:
    """Where a write came from and when its caller stops waiting for it."""

    hops: int
    """Nodes it passed through before this one: 0 when a client sent it here."""
    deadline: float
    """On the event loop's clock."""

    def timeout_s(self) -> float:
        return max(0.0, self.deadline - _now())

    def clock_wait_s(self, timeout_s: float) -> float:
        """How long a write may wait for this node's first clock verdict: half
        its deadline when a client sent it here, none when another node
        forwarded it (that node can coordinate it itself)."""
        return timeout_s / 2 if self.hops == 0 else 0.0


def _now() -> float:
    return asyncio.get_running_loop().time()


async def _alone(
    method: grpc.aio.UnaryUnaryMultiCallable[RequestT, ResponseT],
    request: RequestT,
    timeout_s: float,
    hops: int,
) -> ResponseT:
    """A write forwarded in a call of its own, as a client call to the peer."""
    try:
        return await method(request, timeout=timeout_s, metadata=((FORWARD_HOPS, str(hops + 1)),))
    except grpc.aio.AioRpcError as error:
        raise RelayedError(PeerStatus.of_call(error)) from None


def _never_connected(error: PeerStatus) -> bool:
    """Whether an UNAVAILABLE call never reached the peer (so nothing ran there)."""
    details = error.details.lower()
    return "failed to connect" in details or "connection refused" in details


def _get_response(record: Record | None) -> kv_pb2.GetResponse:
    if record is None:
        return kv_pb2.GetResponse(found=False)
    return kv_pb2.GetResponse(
        value=record.value,
        found=True,
        version=record.version.timestamp,
        expires_at_ms=record.expires_at_ms,
    )


def _check_batch_size(count: int) -> None:
    if count > MAX_KEYS_PER_CALL:
        raise InvalidArgument(
            f"{count} keys in one call, the limit is {MAX_KEYS_PER_CALL}",
            reason="TOO_MANY_KEYS",
            metadata={"count": str(count), "limit": str(MAX_KEYS_PER_CALL)},
        )


def _hops(context: Context) -> int:
    for key, value in context.invocation_metadata() or ():
        if key == FORWARD_HOPS:
            return int(value) if str(value).isdigit() else MAX_HOPS
    return 0
