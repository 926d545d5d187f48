"""The member link over real loopback sockets: calls on one connection are
answered as each is ready, errors and deadlines come back as the status a
gRPC call would have ended with, a lost connection fails its calls and the
next call dials again, and only a member credential gets in. A ``Peer``
finds a peer's link and falls back to gRPC where there is none."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from typing import Any

import grpc
import pytest

from ringkv.api import replica_pb2
from ringkv.core.errors import InvalidArgument
from ringkv.core.hlc import HybridLogicalClock, Version
from ringkv.core.records import Record
from ringkv.server.transport import rpc
from ringkv.server.transport.auth import Policy, Tokens
from ringkv.server.transport.link import (
    ANSWER,
    HEADER,
    REPLICA_READ,
    REPLICA_WRITE,
    WELCOME,
    LinkClient,
    LinkDialer,
    LinkMethod,
    LinkServer,
    LinkUnreachable,
    bind_link_socket,
)
from ringkv.server.transport.peers import Peer
from ringkv.server.transport.rpc import SHUTTING_DOWN, RelayedError
from tests.support.nodes import free_ports

TIMEOUT_S = 10.0
MAX_FRAME = 1 << 20
SERVICE = "ringkv.internal.Replica"


class Replica:
    """Answers reads of keys as the test says: ``held*`` keys wait until
    released, ``bad*`` keys are refused. It counts the calls each transport
    brought."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.over_link = 0
        self.over_grpc = 0
        self.cancelled = 0

    async def read(self, request: replica_pb2.ReadRequest) -> replica_pb2.ReadResponse:
        key = request.keys[0]
        if key.startswith(b"held"):
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        if key.startswith(b"bad"):
            raise InvalidArgument(f"{key.decode()} is refused", reason="REFUSED")
        return replica_pb2.ReadResponse(clock=len(key))

    async def write(self, request: replica_pb2.WriteRequest) -> replica_pb2.WriteResponse:
        count = len(request.records)
        return replica_pb2.WriteResponse(replaced_live=[False] * count, newer=[0] * count)

    def link_methods(self) -> dict[int, LinkMethod]:
        async def write(request: replica_pb2.WriteRequest) -> replica_pb2.WriteResponse:
            self.over_link += 1
            return await self.write(request)

        return {
            REPLICA_READ: LinkMethod(SERVICE, "Read", replica_pb2.ReadRequest, self.read),
            REPLICA_WRITE: LinkMethod(SERVICE, "Write", replica_pb2.WriteRequest, write),
        }


@asynccontextmanager
async def serving(
    replica: Replica, *, policy: Policy | None = None, gate: rpc.Gate | None = None
) -> AsyncIterator[tuple[LinkServer, int]]:
    sock = bind_link_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    server = LinkServer(
        "b",
        replica.link_methods(),
        gate or rpc.Gate(),
        (policy or Policy(Tokens(), member_certs=False)).admit_member,
        max_frame_bytes=MAX_FRAME,
    )
    await server.start(sock, None)
    try:
        yield server, port
    finally:
        await server.close()


def client(port: int, token: bytes | None = None, node_id: str = "b") -> LinkClient:
    return LinkClient(node_id, "127.0.0.1", port, token=token, tls=None, max_frame_bytes=MAX_FRAME)


async def read(link: LinkClient, key: bytes, timeout_s: float = TIMEOUT_S) -> int:
    request = replica_pb2.ReadRequest(keys=[key]).SerializeToString()
    answer = await link.call(REPLICA_READ, request, timeout_s)
    return replica_pb2.ReadResponse.FromString(answer).clock


def run(scenario: Coroutine[Any, Any, None]) -> None:
    """The scenario, failed rather than hung if it outlasts a minute."""
    asyncio.run(asyncio.wait_for(scenario, 60))


def test_calls_on_one_connection_are_answered_as_each_is_ready() -> None:
    async def scenario() -> None:
        replica = Replica()
        async with serving(replica) as (server, port):
            link = client(port)
            held = asyncio.ensure_future(read(link, b"held"))
            # Calls made after the held one are answered while it waits.
            assert await asyncio.gather(*(read(link, b"k" * n) for n in range(1, 50))) == list(
                range(1, 50)
            )
            assert not held.done()
            replica.release.set()
            assert await held == 4
            assert len(server.connections) == 1
            link.close()

    run(scenario())


def test_an_error_comes_back_with_its_code_message_and_reason() -> None:
    async def scenario() -> None:
        async with serving(Replica()) as (_, port):
            link = client(port)
            with pytest.raises(RelayedError) as failed:
                await read(link, b"bad-key")
            status = failed.value.status
            assert status.code is grpc.StatusCode.INVALID_ARGUMENT
            assert status.details == "bad-key is refused"
            assert status.reason == "REFUSED"
            assert await read(link, b"fine") == 4  # the connection serves on
            link.close()

    run(scenario())


def test_a_call_past_its_deadline_fails_and_the_server_stops_its_handler() -> None:
    async def scenario() -> None:
        replica = Replica()
        async with serving(replica) as (_, port):
            link = client(port)
            with pytest.raises(RelayedError) as failed:
                await read(link, b"held", timeout_s=0.2)
            assert failed.value.status.code is grpc.StatusCode.DEADLINE_EXCEEDED
            assert failed.value.status.reason is None  # the transport's, not the replica's
            async with asyncio.timeout(TIMEOUT_S):
                while replica.cancelled == 0:
                    await asyncio.sleep(0.01)
            link.close()

    run(scenario())


def test_a_lost_connection_fails_its_calls_and_the_next_call_dials_again() -> None:
    async def scenario() -> None:
        replica = Replica()
        async with serving(replica) as (server, port):
            link = client(port)
            held = asyncio.ensure_future(read(link, b"held"))
            async with asyncio.timeout(TIMEOUT_S):
                while not server.connections:
                    await asyncio.sleep(0.01)
            for connection in list(server.connections):
                connection.abort()
            with pytest.raises(RelayedError) as failed:
                await held
            assert failed.value.status.code is grpc.StatusCode.UNAVAILABLE
            assert await read(link, b"again") == 5
            link.close()
        # Nothing listens now: the call is never sent, and says so.
        with pytest.raises(LinkUnreachable):
            await read(client(port), b"k")

    run(scenario())


def test_a_closing_node_refuses_calls_as_shutting_down() -> None:
    async def scenario() -> None:
        gate = rpc.Gate()
        async with serving(Replica(), gate=gate) as (_, port):
            link = client(port)
            assert await read(link, b"k") == 1
            await gate.drain(TIMEOUT_S, quiet_s=0)
            with pytest.raises(RelayedError) as failed:
                await read(link, b"k")
            assert failed.value.status.code is grpc.StatusCode.UNAVAILABLE
            assert failed.value.status.reason == SHUTTING_DOWN
            link.close()

    run(scenario())


@pytest.mark.parametrize(
    ("token", "refusal"),
    [
        (None, "this node requires a token"),
        (b"Bearer wrong", "the token is not valid"),
        (b"Bearer client-secret", "this call is for members"),
        (b"Bearer member-secret", None),
    ],
)
def test_only_a_member_token_gets_in(token: bytes | None, refusal: str | None) -> None:
    async def scenario() -> None:
        policy = Policy(
            Tokens(client=("client-secret",), member=("member-secret",)), member_certs=False
        )
        async with serving(Replica(), policy=policy) as (_, port):
            link = client(port, token)
            if refusal is None:
                assert await read(link, b"k") == 1
            else:
                # Refused before anything is sent: the caller may try gRPC,
                # which gives the refusal its status.
                with pytest.raises(LinkUnreachable, match=refusal):
                    await read(link, b"k")
            link.close()

    run(scenario())


def test_a_link_answered_by_another_node_is_not_used() -> None:
    async def scenario() -> None:
        async with serving(Replica()) as (server, port):
            with pytest.raises(LinkUnreachable, match="'b'"):
                await read(client(port, node_id="c"), b"k")
            async with asyncio.timeout(TIMEOUT_S):
                while server.connections:
                    await asyncio.sleep(0.01)

    run(scenario())


def test_a_request_larger_than_the_server_takes_fails_alone() -> None:
    async def scenario() -> None:
        async with serving(Replica()) as (_, port):
            link = client(port)
            held = asyncio.ensure_future(read(link, b"held"))
            request = replica_pb2.ReadRequest(keys=[b"k" * MAX_FRAME]).SerializeToString()
            with pytest.raises(RelayedError) as failed:
                await link.call(REPLICA_READ, request, TIMEOUT_S)
            assert failed.value.status.code is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert failed.value.status.reason == "MESSAGE_TOO_LARGE"
            assert await read(link, b"after") == 5  # the connection serves on
            assert not held.done()
            link.close()
            with pytest.raises(RelayedError):
                await held

    run(scenario())


def test_a_dial_that_gets_no_welcome_is_unreachable_and_close_ends_it() -> None:
    async def scenario() -> None:
        # The kernel accepts the connection; nothing ever answers the hello.
        with bind_link_socket("127.0.0.1", 0) as silent:
            port = silent.getsockname()[1]
            link = LinkClient(
                "b",
                "127.0.0.1",
                port,
                token=None,
                tls=None,
                max_frame_bytes=MAX_FRAME,
                connect_timeout_s=0.2,
            )
            with pytest.raises(LinkUnreachable):
                await read(link, b"k")
            other = client(port)
            dialing = asyncio.ensure_future(read(other, b"k"))
            await asyncio.sleep(0.05)
            other.close()
            # Closed mid-dial: the caller goes on elsewhere, it is not cancelled.
            with pytest.raises(LinkUnreachable):
                await dialing

    run(scenario())


class ScriptedServer:
    """A link server by hand: it welcomes each connection as ``b`` after
    ``welcome_after_s`` (never when None), then answers every request with
    an empty answer, or closes the connection right after the welcome.
    It notes when a client's connection ends."""

    def __init__(self, welcome_after_s: float | None, *, close_after_welcome: bool = False) -> None:
        self.welcome_after_s = welcome_after_s
        self.close_after_welcome = close_after_welcome
        self.requests = 0
        self.ended = asyncio.Event()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readexactly(HEADER.size)  # the hello (no token: no body)
            if self.welcome_after_s is None:
                await reader.read()  # until the client goes
                return
            await asyncio.sleep(self.welcome_after_s)
            writer.write(HEADER.pack(1, WELCOME, 0) + b"b")
            if self.close_after_welcome:
                return
            while True:
                size, _, call_id = HEADER.unpack(await reader.readexactly(HEADER.size))
                await reader.readexactly(size)
                self.requests += 1
                writer.write(HEADER.pack(0, ANSWER, call_id))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.ended.set()
            writer.close()


@asynccontextmanager
async def scripted(server: ScriptedServer) -> AsyncIterator[int]:
    listening = await asyncio.start_server(server.serve, "127.0.0.1", 0)
    try:
        yield listening.sockets[0].getsockname()[1]
    finally:
        listening.close()


def test_each_caller_waits_for_a_shared_dial_only_as_long_as_its_own_deadline() -> None:
    async def scenario() -> None:
        server = ScriptedServer(welcome_after_s=0.8)  # within the dial's 1 s
        async with scripted(server) as port:
            link = client(port)
            patient = asyncio.ensure_future(link.call(REPLICA_READ, b"", TIMEOUT_S))
            await asyncio.sleep(0.05)
            loop = asyncio.get_running_loop()
            started = loop.time()
            # Joins the dial the patient call began: out of time before the
            # welcome, it fails as a gRPC call would, having sent nothing.
            with pytest.raises(RelayedError) as failed:
                await link.call(REPLICA_READ, b"", 0.1)
            assert failed.value.status.code is grpc.StatusCode.DEADLINE_EXCEEDED
            assert loop.time() - started < 0.7  # before the welcome
            assert await patient == b""
            assert server.requests == 1
            link.close()

        # The other way round: a hasty call begins the dial, a patient one
        # joins it, and the dial is not cut short by the first one's deadline.
        server = ScriptedServer(welcome_after_s=0.5)
        async with scripted(server) as port:
            link = client(port)
            hasty = asyncio.ensure_future(link.call(REPLICA_READ, b"", 0.1))
            await asyncio.sleep(0.02)
            assert await link.call(REPLICA_READ, b"", TIMEOUT_S) == b""
            with pytest.raises(RelayedError):
                await hasty
            link.close()

    run(scenario())


def test_a_connection_lost_right_after_its_welcome_does_not_hold_the_call() -> None:
    async def scenario() -> None:
        async with scripted(ScriptedServer(0.0, close_after_welcome=True)) as port:
            link = client(port)
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises((LinkUnreachable, RelayedError)) as failed:
                await link.call(REPLICA_READ, b"", TIMEOUT_S)
            if isinstance(failed.value, RelayedError):
                assert failed.value.status.code is grpc.StatusCode.UNAVAILABLE
            assert loop.time() - started < TIMEOUT_S / 2
            link.close()

    run(scenario())


def test_closing_a_link_mid_dial_closes_its_connection() -> None:
    async def scenario() -> None:
        server = ScriptedServer(welcome_after_s=None)
        async with scripted(server) as port:
            link = client(port)
            dialing = asyncio.ensure_future(link.call(REPLICA_READ, b"", TIMEOUT_S))
            await asyncio.sleep(0.1)
            link.close()
            with pytest.raises(LinkUnreachable):
                await dialing
            async with asyncio.timeout(TIMEOUT_S):
                await server.ended.wait()

    run(scenario())


class GrpcReplica:
    """The same replica behind gRPC, saying where its link is."""

    name = SERVICE

    def __init__(self, replica: Replica, link_port: int | None) -> None:
        self._replica = replica
        self._link_port = link_port
        self.lookups = 0

    def methods(self) -> dict[str, rpc.Method]:
        methods = {"Write": rpc.Method(replica_pb2.WriteRequest, self.write)}
        if self._link_port is not None:
            methods["Link"] = rpc.Method(replica_pb2.LinkRequest, self.link)
        return methods

    async def write(self, request: replica_pb2.WriteRequest, _: rpc.Context) -> Any:
        self._replica.over_grpc += 1
        return await self._replica.write(request)

    async def link(self, _: replica_pb2.LinkRequest, __: rpc.Context) -> Any:
        self.lookups += 1
        return replica_pb2.LinkResponse(port=self._link_port or 0)


@pytest.mark.parametrize("serves", ["a link", "a link on a closed port", "no link", "link 0"])
def test_a_peer_writes_over_its_link_when_it_has_one_and_over_grpc_otherwise(serves: str) -> None:
    async def scenario() -> None:
        replica = Replica()
        async with serving(replica) as (_, link_port):
            advertised = {
                "a link": link_port,
                "a link on a closed port": free_ports(1)[0],
                "no link": None,
                "link 0": 0,
            }[serves]
            grpc_replica = GrpcReplica(replica, advertised)
            server = grpc.aio.server()
            port = server.add_insecure_port("127.0.0.1:0")
            server.add_generic_rpc_handlers([rpc.generic_handler(grpc_replica, rpc.Gate())])
            await server.start()
            peer = Peer(
                "b",
                f"127.0.0.1:{port}",
                HybridLogicalClock("a"),
                TIMEOUT_S,
                link_dialer=LinkDialer(None, None, MAX_FRAME),
            )
            record = Record(b"k", b"v", Version(1, "a"))
            try:
                # The first write goes over gRPC and asks where the link is.
                await peer.write(record)
                assert (replica.over_grpc, replica.over_link) == (1, 0)
                async with asyncio.timeout(TIMEOUT_S):
                    while serves != "no link" and grpc_replica.lookups == 0:
                        await asyncio.sleep(0.01)
                for _ in range(20):
                    await peer.write(record)
                    await asyncio.sleep(0.005)
                if serves == "a link":
                    assert replica.over_link > 0
                    assert replica.over_grpc < 21
                else:
                    assert (replica.over_grpc, replica.over_link) == (21, 0)
                assert peer.alive
            finally:
                await peer.close()
                await server.stop(None)

    run(scenario())
