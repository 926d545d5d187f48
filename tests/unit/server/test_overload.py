"""The node's call limit (``--max-concurrent-calls``), over real gRPC: calls
past it are refused RESOURCE_EXHAUSTED (OVERLOADED) before any work, member
calls never are, and the SDK backs off and retries."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import grpc
import pytest

import ringkv
from ringkv.api import kv_pb2, replica_pb2
from ringkv.api.status import error_info
from ringkv.core.errors import Overloaded
from ringkv.server.transport import rpc
from ringkv.server.transport.auth import Access


class HeldGets:
    """``kv.KeyValue/Get`` that waits until released, counting the calls it ran."""

    name = "kv.KeyValue"

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.ran = 0

    def methods(self) -> Mapping[str, rpc.Method | rpc.StreamMethod]:
        return {"Get": rpc.Method(kv_pb2.GetRequest, self.get)}

    async def get(self, request: kv_pb2.GetRequest, _: rpc.Context) -> kv_pb2.GetResponse:
        self.ran += 1
        await self.release.wait()
        return kv_pb2.GetResponse(found=True, value=b"v")


class Replica:
    name = "ringkv.internal.Replica"

    def methods(self) -> Mapping[str, rpc.Method | rpc.StreamMethod]:
        return {"Read": rpc.Method(replica_pb2.ReadRequest, self.read)}

    async def read(
        self, request: replica_pb2.ReadRequest, _: rpc.Context
    ) -> replica_pb2.ReadResponse:
        return replica_pb2.ReadResponse()


def test_calls_past_the_limit_are_refused_overloaded_and_the_client_retries() -> None:
    refused: list[grpc.StatusCode] = []

    def observe(
        service: str, method: str, level: str, code: grpc.StatusCode, seconds: float
    ) -> None:
        if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
            refused.append(code)

    async def scenario() -> None:
        gets = HeldGets()
        gate = rpc.Gate(max_calls=1)
        server = grpc.aio.server()
        port = server.add_insecure_port("127.0.0.1:0")
        server.add_generic_rpc_handlers(
            [rpc.generic_handler(s, gate, observe) for s in (gets, Replica())]
        )
        await server.start()
        address = f"127.0.0.1:{port}"
        try:
            async with grpc.aio.insecure_channel(address) as channel:
                get = channel.unary_unary(
                    "/kv.KeyValue/Get",
                    request_serializer=kv_pb2.GetRequest.SerializeToString,
                    response_deserializer=kv_pb2.GetResponse.FromString,
                )
                held = asyncio.ensure_future(get(kv_pb2.GetRequest(key="a"), timeout=30))
                for _ in range(1000):  # bounded: until the first call is inside
                    if gets.ran:
                        break
                    await asyncio.sleep(0.01)
                assert gets.ran == 1

                # The second call is refused before its handler runs.
                with pytest.raises(grpc.aio.AioRpcError) as refusal:
                    await get(kv_pb2.GetRequest(key="b"), timeout=5)
                assert refusal.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
                info = error_info(refusal.value.trailing_metadata())
                assert info is not None and info.reason == "OVERLOADED"
                assert gets.ran == 1

                # A member call is served while clients are held off.
                read = channel.unary_unary(
                    "/ringkv.internal.Replica/Read",
                    request_serializer=replica_pb2.ReadRequest.SerializeToString,
                    response_deserializer=replica_pb2.ReadResponse.FromString,
                )
                await read(replica_pb2.ReadRequest(), timeout=5)

                # The SDK backs off on OVERLOADED and gets through once the
                # held call leaves.
                retry = ringkv.RetryPolicy(attempts=100, initial_backoff_s=0.01, max_backoff_s=0.05)
                async with ringkv.AsyncClient(address, token_aware=False, retry=retry) as client:
                    answer = asyncio.ensure_future(client.get("c", timeout=30))
                    before = len(refused)
                    for _ in range(1000):
                        if len(refused) > before:
                            break
                        await asyncio.sleep(0.01)
                    assert len(refused) > before, "the client was never refused"
                    gets.release.set()
                    entry = await answer
                    assert entry is not None and entry.value == b"v"
                await held
        finally:
            await server.stop(None)

    asyncio.run(scenario())


class HeldAnswers:
    """A servicer context's done callbacks, run when the test says the call is over."""

    def __init__(self) -> None:
        self.callbacks: list[Callable[[object], None]] = []

    def add_done_callback(self, callback: Callable[[object], None]) -> None:
        self.callbacks.append(callback)

    def finish(self) -> None:
        for callback in self.callbacks:
            callback(self)


def test_unsent_answers_are_counted_per_connection_until_their_calls_end() -> None:
    gate = rpc.Gate(max_unsent_bytes=400)
    quick = HeldAnswers()
    for _ in range(2):  # empty answers (an absent key) hold nothing
        gate.enter(Access.CLIENT, "quick")
        gate.leave(Access.CLIENT)
        gate.answered(Access.CLIENT, b"", quick, "quick")  # type: ignore[arg-type]
    quick.finish()
    reader, other = HeldAnswers(), HeldAnswers()
    for size in (0, 0, 100):
        gate.enter(Access.CLIENT, "slow")
        gate.leave(Access.CLIENT)
        gate.answered(Access.CLIENT, b"x" * size, reader, "slow")  # type: ignore[arg-type]
    assert gate.unsent_bytes == 100
    # A quarter of the budget is the slow connection's share: its next call is refused...
    with pytest.raises(Overloaded):
        gate.enter(Access.CLIENT, "slow")
    # ...and the others are served.
    gate.enter(Access.CLIENT, "other")
    gate.leave(Access.CLIENT)
    gate.answered(Access.CLIENT, b"y" * 300, other, "other")  # type: ignore[arg-type]
    with pytest.raises(Overloaded):  # the whole budget is held now
        gate.enter(Access.CLIENT, "third")
    gate.enter(Access.MEMBER, "peer")  # member calls never wait on clients' answers
    gate.leave(Access.MEMBER)
    reader.finish()
    other.finish()
    assert gate.unsent_bytes == 0
    gate.enter(Access.CLIENT, "slow")


def test_watches_are_counted_apart_from_the_calls_that_come_and_go() -> None:
    gate = rpc.Gate(max_calls=2)
    gate.enter(Access.CLIENT, endless=True)
    gate.enter(Access.CLIENT, endless=True)
    with pytest.raises(Overloaded, match="2 watches"):
        gate.enter(Access.CLIENT, endless=True)
    # Two watches open leave both call slots free.
    gate.enter(Access.CLIENT)
    gate.enter(Access.CLIENT)
    with pytest.raises(Overloaded, match="2 calls"):
        gate.enter(Access.CLIENT)
    gate.leave(Access.CLIENT, endless=True)
    gate.enter(Access.CLIENT, endless=True)
    # A member's stream (another node's watch) is never refused for load.
    gate.enter(Access.MEMBER, endless=True)
