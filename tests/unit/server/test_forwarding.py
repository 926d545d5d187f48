"""WriteForwarder against a real gRPC server: writes queued while calls wait
share the next call, each write's answer comes when it is ready, and a failed
call fails its writes with its own status. A peer of an older version gets
them one call each."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

import grpc
import pytest

from ringkv.api import forward_pb2, forward_pb2_grpc, kv_pb2
from ringkv.api.headers import FORWARD_HOPS
from ringkv.core.errors import InvalidArgument
from ringkv.core.hlc import HybridLogicalClock
from ringkv.server.services.forward_service import ForwardService
from ringkv.server.transport import rpc
from ringkv.server.transport.forwarding import WriteForwarder
from ringkv.server.transport.peers import Peer
from ringkv.server.transport.rpc import Context, Method, RelayedError, StreamMethod

TIMEOUT_S = 10.0


class Owner:
    """What the owner does with each forwarded write, in the test's hands:
    keys starting ``held`` wait until released, keys starting ``bad`` are
    refused. It records the keys of each call."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.release: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)

    async def set_forwarded(self, request: kv_pb2.SetRequest, _: float) -> kv_pb2.SetResponse:
        key = request.key
        if key.startswith("held"):
            await self.release[key].wait()
        if key.startswith("bad"):
            raise InvalidArgument(f"{key} is refused", reason="REFUSED")
        return kv_pb2.SetResponse(ok=True, version=len(key))

    async def delete_forwarded(
        self, request: kv_pb2.DeleteRequest, _: float
    ) -> kv_pb2.DeleteResponse:
        return kv_pb2.DeleteResponse(ok=True, version=len(request.key), found=True)

    async def called(self, count: int) -> None:
        """Until ``count`` calls have arrived (bounded)."""
        async with asyncio.timeout(TIMEOUT_S):
            while len(self.calls) < count:
                await asyncio.sleep(0.001)


class RecordedForwardService(ForwardService):
    """The real service, telling the owner which writes each call carried."""

    def __init__(self, owner: Owner) -> None:
        super().__init__(owner)
        self._owner = owner

    async def writes(
        self, request: forward_pb2.ForwardedWrites, context: Context
    ) -> AsyncGenerator[forward_pb2.ForwardedAnswers, None]:
        self._owner.calls.append([write.set.key for write in request.writes])
        async for answers in super().writes(request, context):
            yield answers


@asynccontextmanager
async def forwarding(
    owner: Owner, *, max_calls: int = 1, slot_hold_s: float = 3600.0
) -> AsyncIterator[tuple[WriteForwarder, grpc.aio.Server]]:
    """A forwarder to ``owner`` on a real server. A call holds its slot
    until its first answer (``slot_hold_s``: for as long as a test runs)."""
    server = grpc.aio.server()
    port = server.add_insecure_port("127.0.0.1:0")
    server.add_generic_rpc_handlers(
        [rpc.generic_handler(RecordedForwardService(owner), rpc.Gate())]
    )
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    stub = forward_pb2_grpc.ForwardStub(channel)
    forwarder = WriteForwarder(
        lambda writes, timeout_s: stub.Writes(writes, timeout=timeout_s),
        max_calls=max_calls,
        slot_hold_s=slot_hold_s,
    )
    try:
        yield forwarder, server
    finally:
        await forwarder.close()
        await channel.close()
        await server.stop(None)


def write(key: str) -> forward_pb2.ForwardedWrite:
    return forward_pb2.ForwardedWrite(set=kv_pb2.SetRequest(key=key, value=b"v"))


def sent(forwarder: WriteForwarder, key: str, timeout_s: float = TIMEOUT_S) -> asyncio.Task[int]:
    async def version() -> int:
        return (await forwarder.send(write(key), timeout_s)).set.version

    return asyncio.ensure_future(version())


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """The scenario, failed rather than hung if it outlasts a minute."""
    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_writes_sent_while_the_calls_wait_share_the_next_call() -> None:
    async def scenario() -> None:
        owner = Owner()
        async with forwarding(owner) as (forwarder, _):
            first = sent(forwarder, "held-1")
            await owner.called(1)
            rest = [sent(forwarder, key) for key in ("a", "bb", "ccc")]
            owner.release["held-1"].set()
            assert await first == len("held-1")
            assert await asyncio.gather(*rest) == [1, 2, 3]
            assert owner.calls == [["held-1"], ["a", "bb", "ccc"]]

    run(scenario)


def test_a_slow_write_holds_back_neither_its_call_mates_nor_the_writes_after_it() -> None:
    async def scenario() -> None:
        owner = Owner()
        async with forwarding(owner) as (forwarder, _):
            first = sent(forwarder, "held-1")
            await owner.called(1)
            slow, fast = sent(forwarder, "held-2"), sent(forwarder, "fast")
            owner.release["held-1"].set()
            await first
            async with asyncio.timeout(TIMEOUT_S):
                assert await fast == len("fast")  # held-2, in its call, is still out
            later = sent(forwarder, "later")
            async with asyncio.timeout(TIMEOUT_S):
                assert await later == len("later")  # the slot was given back
            assert not slow.done()
            owner.release["held-2"].set()
            assert await slow == len("held-2")
            assert owner.calls == [["held-1"], ["held-2", "fast"], ["later"]]

    run(scenario)


def test_a_call_with_no_answer_yet_gives_its_slot_up_after_a_while() -> None:
    async def scenario() -> None:
        owner = Owner()
        async with forwarding(owner, slot_hold_s=0.05) as (forwarder, _):
            held = sent(forwarder, "held-1")
            await owner.called(1)
            async with asyncio.timeout(TIMEOUT_S):
                assert await sent(forwarder, "next") == len("next")
            assert not held.done()
            owner.release["held-1"].set()
            assert await held == len("held-1")
            assert owner.calls == [["held-1"], ["next"]]

    run(scenario)


def test_an_error_answers_its_own_write_with_the_status_a_call_of_its_own_would_have() -> None:
    async def scenario() -> None:
        owner = Owner()
        async with forwarding(owner) as (forwarder, _):
            first = sent(forwarder, "held-1")
            await owner.called(1)
            bad, good = sent(forwarder, "bad"), sent(forwarder, "good")
            owner.release["held-1"].set()
            assert await good == len("good")
            with pytest.raises(RelayedError) as refused:
                await bad
            status = refused.value.status
            assert (status.code, status.details, status.reason) == (
                grpc.StatusCode.INVALID_ARGUMENT,
                "bad is refused",
                "REFUSED",
            )
            await first

    run(scenario)


def test_a_call_past_its_deadline_fails_each_write_still_out_with_the_calls_status() -> None:
    async def scenario() -> None:
        owner = Owner()
        async with forwarding(owner) as (forwarder, _):
            held = sent(forwarder, "held-1", timeout_s=0.2)
            with pytest.raises(RelayedError) as failed:
                await held
            status = failed.value.status
            assert (status.code, status.reason) == (grpc.StatusCode.DEADLINE_EXCEEDED, None)
            # The slot came back: the next write goes out.
            assert await sent(forwarder, "next") == len("next")

    run(scenario)


def test_a_peer_that_cannot_be_reached_fails_the_write_unavailable() -> None:
    async def scenario() -> None:
        owner = Owner()
        async with forwarding(owner) as (forwarder, server):
            await server.stop(None)
            with pytest.raises(RelayedError) as failed:
                await sent(forwarder, "a", timeout_s=2.0)
            status = failed.value.status
            assert (status.code, status.reason) == (grpc.StatusCode.UNAVAILABLE, None)

    run(scenario)


def test_closing_fails_the_writes_in_flight_unavailable_and_drops_the_queued_ones() -> None:
    async def scenario() -> None:
        owner = Owner()
        async with forwarding(owner) as (forwarder, _):
            in_flight = sent(forwarder, "held-1")
            await owner.called(1)
            queued = sent(forwarder, "queued")
            await asyncio.sleep(0)  # it queues behind the call in flight
            await forwarder.close()
            for write_ in (in_flight, queued):
                with pytest.raises(RelayedError) as failed:
                    await write_
                assert failed.value.status.code == grpc.StatusCode.UNAVAILABLE
            assert owner.calls == [["held-1"]]
            with pytest.raises(RelayedError):
                await sent(forwarder, "after")

    run(scenario)


def test_closing_before_a_call_has_started_fails_its_writes() -> None:
    async def scenario() -> None:
        async with forwarding(Owner()) as (forwarder, _):
            write_ = sent(forwarder, "a")
            await asyncio.sleep(0)  # queued, its call's task created but not yet run
            await forwarder.close()
            with pytest.raises(RelayedError) as failed:
                await write_
            assert failed.value.status.code == grpc.StatusCode.UNAVAILABLE

    run(scenario)


class OlderNode:
    """``kv.KeyValue`` Set and Delete as a node of an older version serves
    them, with no Forward service; it records the hop count each call carried."""

    name = "kv.KeyValue"

    def __init__(self) -> None:
        self.hops: list[str | bytes | None] = []

    def methods(self) -> dict[str, Method | StreamMethod]:
        return {
            "Set": Method(kv_pb2.SetRequest, self.set),
            "Delete": Method(kv_pb2.DeleteRequest, self.delete),
        }

    def _note(self, context: Context) -> None:
        self.hops.append(dict(context.invocation_metadata() or ()).get(FORWARD_HOPS))

    async def set(self, request: kv_pb2.SetRequest, context: Context) -> kv_pb2.SetResponse:
        self._note(context)
        return kv_pb2.SetResponse(ok=True, version=len(request.key))

    async def delete(
        self, request: kv_pb2.DeleteRequest, context: Context
    ) -> kv_pb2.DeleteResponse:
        self._note(context)
        return kv_pb2.DeleteResponse(ok=True, version=len(request.key), found=True)


class MethodLog(grpc.aio.ServerInterceptor):
    """Every method called on the server, served or not."""

    def __init__(self) -> None:
        self.methods: list[str] = []

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        self.methods.append(details.method)
        return await continuation(details)


def test_a_peer_without_the_forward_service_gets_its_writes_one_call_each() -> None:
    async def scenario() -> None:
        older, calls = OlderNode(), MethodLog()
        server = grpc.aio.server(interceptors=[calls])
        port = server.add_insecure_port("127.0.0.1:0")
        server.add_generic_rpc_handlers([rpc.generic_handler(older, rpc.Gate())])
        await server.start()
        peer = Peer("older", f"127.0.0.1:{port}", HybridLogicalClock("me"), timeout_s=TIMEOUT_S)
        try:
            first = await peer.forward(write("first"), TIMEOUT_S)
            delete = forward_pb2.ForwardedWrite(delete=kv_pb2.DeleteRequest(key="gone"))
            deleted = await peer.forward(delete, TIMEOUT_S)
        finally:
            await peer.close()
            await server.stop(None)
        assert first.set.version == len("first")
        assert (deleted.delete.found, deleted.delete.version) == (True, len("gone"))
        # Refused once (nothing ran), then each write alone, marked as forwarded.
        assert calls.methods == [
            "/ringkv.internal.Forward/Writes",
            "/kv.KeyValue/Set",
            "/kv.KeyValue/Delete",
        ]
        assert older.hops == ["1", "1"]

    run(scenario)
