"""The member link: replica reads and writes and forwarded writes between
nodes as frames on one TCP connection per peer, instead of gRPC calls.

A gRPC unary call costs about 390 µs of CPU over both ends on loopback one
at a time and 210 at 16 in flight, a frame on a long-lived connection 65 and
26 (``bench/link_frames.py``): grpc's call object, metadata, deadline and
completion-queue hops on each end, against a length prefix and a future.
The replica and forward calls are most of a write's node-to-node traffic,
so they move here; everything else (Paxos, scans, Merkle trees, watches,
membership) stays on gRPC, as does the client API.

A frame is a header (``>IBI``: the length of what follows the header, the
kind, the call id) and a body:

- ``HELLO`` (id 0, first on a connection): the member token, if any. Members
  that use certificates prove them in the TLS handshake instead.
- ``WELCOME`` (id 0): the server's node id. The client sends nothing more
  until it has it, and drops a connection to another node than the one it
  asked for (one that took the port after that one left it).
- ``REQUEST``: the method (one byte), the caller's timeout in milliseconds
  (``>I``) and the serialized request.
- ``ANSWER``: the serialized response.
- ``FAILED``: a serialized ``google.rpc.Status``, as a gRPC call would have
  ended with. With id 0 it refuses the hello (a bad credential) and the
  server closes the connection.

A frame larger than the receiver takes is skipped, and fails its call
alone (``RESOURCE_EXHAUSTED``), as grpc refuses a message past its limit.

Calls on one connection are answered in any order: each runs in a task of
its own on the server, as gRPC runs each call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import socket
import ssl
import struct
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import grpc
from google.protobuf.message import Message
from google.rpc import status_pb2

from ringkv.core.errors import InternalError, ResourceExhausted, RingkvError
from ringkv.server.transport.auth import Access
from ringkv.server.transport.errors import status_code, status_details
from ringkv.server.transport.rpc import (
    Gate,
    PeerStatus,
    RelayedError,
    RequestObserver,
    parse_request,
)

log = logging.getLogger(__name__)

HEADER = struct.Struct(">IBI")
REQUEST_HEAD = struct.Struct(">BI")
HELLO, REQUEST, ANSWER, FAILED, WELCOME = 1, 2, 3, 4, 5
REPLICA_READ, REPLICA_WRITE, FORWARD_WRITE = 1, 2, 3
"""The methods, by the byte a request names them with."""

USER_TIMEOUT_MS = 2000
"""How long data sent may go unacknowledged before the kernel gives the
connection up (``TCP_USER_TIMEOUT``), with keepalive probes as often on an
idle one: a peer behind a cut link is found dead within two seconds, as
grpc's keepalive finds it on the gRPC channels, and the next call dials again
instead of waiting for TCP's retransmissions to resume after the heal."""


@dataclass(frozen=True, slots=True)
class LinkMethod:
    """A call the link serves: its names (for metrics), its request type and
    the coroutine that answers it."""

    service: str
    method: str
    request_type: type[Message]
    handler: Callable[[Any], Awaitable[Message]]


Admit = Callable[[bytes | None, "ssl.SSLObject | None"], None]
"""Checks a connection's credentials (the token of its hello, the TLS session
that carried it) and raises Unauthenticated or PermissionDenied unless they
are a member's (``Policy.admit_member``)."""


def _tune(sock: socket.socket | None) -> None:
    if sock is None:
        return
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    seconds = USER_TIMEOUT_MS // 1000
    for option, value in (
        ("TCP_USER_TIMEOUT", USER_TIMEOUT_MS),
        ("TCP_KEEPIDLE", seconds),
        ("TCP_KEEPINTVL", seconds),
        ("TCP_KEEPCNT", 2),
    ):
        if hasattr(socket, option):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)


class _Frames(asyncio.Protocol):
    """Cuts a byte stream into frames and hands each to ``frame``; a frame
    larger than ``max_frame_bytes`` goes to ``oversized`` and is skipped."""

    def __init__(self, max_frame_bytes: int) -> None:
        self._buffer = bytearray()
        self._max_frame_bytes = max_frame_bytes
        self._skip = 0
        """Bytes still to drop of an oversized frame."""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses; they do its job.
        self.transport = cast(asyncio.Transport, transport)
        _tune(transport.get_extra_info("socket"))

    @property
    def closing(self) -> bool:
        return self.transport is None or self.transport.is_closing()

    def data_received(self, data: bytes) -> None:
        if self._skip:
            dropped = min(self._skip, len(data))
            self._skip -= dropped
            data = data[dropped:]
        buffer = self._buffer
        buffer += data
        start = 0
        # Nothing more is read once the connection is closing: a refused
        # hello's answer must leave before anything could abort it.
        while len(buffer) - start >= HEADER.size and not self.closing:
            size, kind, call_id = HEADER.unpack_from(buffer, start)
            body_start = start + HEADER.size
            if size > self._max_frame_bytes:
                self.oversized(kind, call_id, size)
                start = min(len(buffer), body_start + size)
                self._skip = body_start + size - start
                continue
            end = body_start + size
            if len(buffer) < end:
                break
            self.frame(kind, call_id, bytes(buffer[body_start:end]))
            start = end
        del buffer[:start]

    def frame(self, kind: int, call_id: int, body: bytes) -> None:
        raise NotImplementedError

    def oversized(self, kind: int, call_id: int, size: int) -> None:
        raise NotImplementedError

    def send(self, kind: int, call_id: int, *body: bytes) -> None:
        if not self.closing:
            assert self.transport is not None
            size = sum(map(len, body))
            self.transport.write(b"".join((HEADER.pack(size, kind, call_id), *body)))

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


def _status(code: grpc.StatusCode, message: str) -> bytes:
    return status_pb2.Status(code=code.value[0], message=message).SerializeToString()


class _ServerConnection(_Frames):
    def __init__(self, server: LinkServer) -> None:
        super().__init__(server.max_frame_bytes)
        self._server = server
        self._admitted = False
        self.tasks: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self._server.closed:  # its handshake outlasted the close
            self.abort()
            return
        self._server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.connections.discard(self)
        for task in self.tasks:
            task.cancel()  # its caller is gone, as when a gRPC call is cancelled

    def frame(self, kind: int, call_id: int, body: bytes) -> None:
        assert self.transport is not None
        if kind == HELLO and not self._admitted:
            try:
                self._server.admit(body or None, self.transport.get_extra_info("ssl_object"))
            except RingkvError as error:
                self.send(FAILED, 0, status_details(error, status_code(error)))
                self.transport.close()
                return
            self._admitted = True
            self.send(WELCOME, 0, self._server.node_id.encode())
        elif kind == REQUEST and self._admitted and len(body) >= REQUEST_HEAD.size:
            method_id, timeout_ms = REQUEST_HEAD.unpack_from(body)
            task = asyncio.get_running_loop().create_task(
                self._serve(call_id, method_id, timeout_ms / 1000, body[REQUEST_HEAD.size :])
            )
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        else:
            log.warning("a link peer broke the protocol; closing", extra={"kind": kind})
            self.abort()

    def oversized(self, kind: int, call_id: int, size: int) -> None:
        if kind != REQUEST or not self._admitted:
            log.warning("a link peer broke the protocol; closing", extra={"kind": kind})
            self.abort()
            return
        # Refused alone, as grpc refuses a message past its limit.
        refused = ResourceExhausted(
            f"a request of {size} bytes is larger than this node takes "
            f"({self._server.max_frame_bytes})",
            reason="MESSAGE_TOO_LARGE",
        )
        self.send(FAILED, call_id, status_details(refused, status_code(refused)))

    async def _serve(self, call_id: int, method_id: int, timeout_s: float, raw: bytes) -> None:
        method = self._server.methods.get(method_id)
        if method is None:
            self.send(FAILED, call_id, _status(grpc.StatusCode.UNIMPLEMENTED, "no such method"))
            return
        started = time.perf_counter()
        code = grpc.StatusCode.CANCELLED
        gate = self._server.gate
        try:
            gate.enter(Access.MEMBER)
        except RingkvError as error:
            code = status_code(error)
            self.send(FAILED, call_id, status_details(error, code))
            self._server.observe_call(method, code, started)
            return
        try:
            request = parse_request(method.request_type, raw)
            async with asyncio.timeout(timeout_s):
                response = await method.handler(request)
            code = grpc.StatusCode.OK
            self.send(ANSWER, call_id, response.SerializeToString())
        except TimeoutError:
            code = grpc.StatusCode.DEADLINE_EXCEEDED
            self.send(FAILED, call_id, _status(code, "deadline exceeded"))
        except RingkvError as error:
            code = status_code(error)
            self.send(FAILED, call_id, status_details(error, code))
        except Exception:
            log.exception("unexpected error in %s/%s", method.service, method.method)
            code = grpc.StatusCode.INTERNAL
            failed = InternalError(f"internal error in {method.service}/{method.method}")
            self.send(FAILED, call_id, status_details(failed, code))
        finally:
            gate.leave(Access.MEMBER)
            self._server.observe_call(method, code, started)


class LinkServer:
    """Serves ``methods`` on a listening socket, through the node's gate, as
    member calls; it answers a connection's hello with ``node_id``."""

    def __init__(
        self,
        node_id: str,
        methods: Mapping[int, LinkMethod],
        gate: Gate,
        admit: Admit,
        *,
        max_frame_bytes: int,
        observe: RequestObserver | None = None,
    ) -> None:
        self.node_id = node_id
        self.methods = methods
        self.gate = gate
        self.admit = admit
        self.max_frame_bytes = max_frame_bytes
        self._observe = observe
        self.connections: set[_ServerConnection] = set()
        self._server: asyncio.Server | None = None
        self.closed = False

    def observe_call(self, method: LinkMethod, code: grpc.StatusCode, started: float) -> None:
        if self._observe is not None:
            self._observe(method.service, method.method, "", code, time.perf_counter() - started)

    async def start(self, sock: socket.socket, tls: ssl.SSLContext | None) -> None:
        """Serve on a socket bound (``bind_link_socket``) before the node opened its data."""
        self._server = await asyncio.get_running_loop().create_server(
            lambda: _ServerConnection(self), sock=sock, ssl=tls
        )

    async def close(self) -> None:
        """Stop listening, drop every connection and wait until the calls
        still running (past the gate's drain) have stopped: what they use
        closes next."""
        self.closed = True
        if self._server is not None:
            self._server.close()
        tasks = [task for connection in self.connections for task in connection.tasks]
        for connection in list(self.connections):
            connection.abort()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        if self._server is not None:
            await self._server.wait_closed()


EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def bind_link_socket(host: str, port: int, *, rng: random.Random | None = None) -> socket.socket:
    """A listening socket for the link.

    Port 0 picks a free port above the kernel's ephemeral range (61000-65535
    by default), where the kernel never hands one out by itself: a port the
    kernel picked would be one another node, restarting on the port it had
    before, or a test that picked its ports the same way, could find taken.
    Where that range is empty or full, any free port.
    """
    if port != 0:
        return _listen(host, port)
    rng = rng or random.Random()
    try:
        top = int(EPHEMERAL_RANGE.read_text().split()[1])
    except (OSError, ValueError, IndexError):
        top = 65535
    candidates = list(range(top + 1, 65536))
    rng.shuffle(candidates)
    for candidate in candidates[:64]:
        with contextlib.suppress(OSError):
            return _listen(host, candidate)
    return _listen(host, 0)


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


class LinkUnreachable(Exception):
    """The link could not be dialed, or the node there is not the one asked
    for: nothing was sent, and the caller may make the call over gRPC."""


class _ClientConnection(_Frames):
    def __init__(self, peer: str, max_frame_bytes: int) -> None:
        super().__init__(max_frame_bytes)
        self._peer = peer
        self.waiting: dict[int, asyncio.Future[bytes]] = {}
        self.welcome: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        """The node id the server answered the hello with."""
        self.received_at = 0.0
        """When bytes last arrived (``time.monotonic``)."""
        self.lost = False

    @property
    def usable(self) -> bool:
        return not self.lost and not self.closing and self.welcome.done()

    def data_received(self, data: bytes) -> None:
        self.received_at = time.monotonic()
        super().data_received(data)

    def frame(self, kind: int, call_id: int, body: bytes) -> None:
        if call_id == 0 and kind in (WELCOME, FAILED) and not self.welcome.done():
            if kind == WELCOME:
                self.welcome.set_result(body.decode(errors="replace"))
            else:
                self.welcome.set_exception(RelayedError(PeerStatus.of_status(body)))
                self.abort()
            return
        if kind not in (ANSWER, FAILED) or call_id == 0:
            log.warning("a link peer broke the protocol; closing", extra={"kind": kind})
            self.abort()
            return
        future = self.waiting.pop(call_id, None)
        if future is None or future.done():
            return
        if kind == ANSWER:
            future.set_result(body)
        else:
            future.set_exception(RelayedError(PeerStatus.of_status(body)))

    def oversized(self, kind: int, call_id: int, size: int) -> None:
        future = self.waiting.pop(call_id, None)
        if future is None or future.done():
            return
        message = f"an answer of {size} bytes is larger than this node takes"
        future.set_exception(
            RelayedError(PeerStatus(grpc.StatusCode.RESOURCE_EXHAUSTED, message, ()))
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        status = PeerStatus(grpc.StatusCode.UNAVAILABLE, f"the link to {self._peer} was lost", ())
        if not self.welcome.done():
            self.welcome.set_exception(RelayedError(status))
            self.welcome.exception()  # retrieved: its dial may have been given up
        waiting, self.waiting = self.waiting, {}
        for future in waiting.values():
            if not future.done():
                future.set_exception(RelayedError(status))


_DEADLINE_EXCEEDED = PeerStatus(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded", ())


class LinkClient:
    """One peer's link: a connection dialed on first use and again after it
    is lost, carrying any number of calls at once."""

    def __init__(
        self,
        node_id: str,
        host: str,
        port: int,
        *,
        token: bytes | None,
        tls: ssl.SSLContext | None,
        max_frame_bytes: int,
        connect_timeout_s: float = 1.0,
    ) -> None:
        self._node_id = node_id
        self._host = host
        self._port = port
        self._token = token or b""
        self._tls = tls
        self._max_frame_bytes = max_frame_bytes
        self._connect_timeout_s = connect_timeout_s
        self._connection: _ClientConnection | None = None
        self._dialing: asyncio.Future[_ClientConnection] | None = None
        self._next_id = 0
        self._closed = False

    @property
    def name(self) -> str:
        return f"{self._node_id} at {self._host}:{self._port}"

    async def connect(self, timeout_s: float) -> None:
        """Dial unless connected: LinkUnreachable if the dial fails,
        DEADLINE_EXCEEDED (RelayedError) if ``timeout_s`` passes first."""
        await self._connection_by(asyncio.get_running_loop().time() + timeout_s)

    async def _connection_by(self, deadline: float) -> _ClientConnection:
        """A welcomed connection, dialed if need be, by ``deadline``.

        A dial is shared by every caller that needs it, and each waits for
        it only as long as its own deadline: a caller out of time gets
        DEADLINE_EXCEEDED, as a gRPC call would, and the dial goes on for
        the others (it has its own timeout). Nothing has been sent either way.
        """
        connection = self._connection
        if connection is not None and connection.usable:
            return connection
        try:
            async with asyncio.timeout_at(deadline):
                connection = await self._connect()
        except TimeoutError:
            raise RelayedError(_DEADLINE_EXCEEDED) from None
        if not connection.usable:
            # Lost between the dial and this caller's turn.
            raise LinkUnreachable(f"the link of {self.name} was lost as it was dialed")
        return connection

    async def call(self, method_id: int, request: bytes, timeout_s: float) -> bytes:
        """The serialized answer, within ``timeout_s`` (a dial included).

        Raises LinkUnreachable when the connection could not be made
        (nothing was sent); RelayedError with the peer's status, UNAVAILABLE
        when the connection was lost, or DEADLINE_EXCEEDED.

        A call that times out with nothing received on its connection since
        it was sent drops the connection (its other calls fail UNAVAILABLE):
        the link looks dead, and a new connection finds out sooner.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        connection = await self._connection_by(deadline)
        left = deadline - loop.time()
        if left <= 0:
            raise RelayedError(_DEADLINE_EXCEEDED)  # the dial took it all; nothing sent
        self._next_id = call_id = self._next_id % 0xFFFFFFFF + 1
        future: asyncio.Future[bytes] = loop.create_future()
        connection.waiting[call_id] = future
        sent_at = time.monotonic()
        connection.send(
            REQUEST, call_id, REQUEST_HEAD.pack(method_id, max(1, math.ceil(left * 1000))), request
        )
        try:
            async with asyncio.timeout_at(deadline):
                return await future
        except TimeoutError:
            if connection.received_at < sent_at:
                connection.abort()
            raise RelayedError(_DEADLINE_EXCEEDED) from None
        finally:
            connection.waiting.pop(call_id, None)

    async def _connect(self) -> _ClientConnection:
        if self._closed:
            raise LinkUnreachable("the link is closed")
        dialing = self._dialing
        if dialing is None:
            dialing = self._dialing = asyncio.ensure_future(self._dial())
            dialing.add_done_callback(self._dialed)
        try:
            return await asyncio.shield(dialing)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if dialing.cancelled() and not (task is not None and task.cancelling()):
                raise LinkUnreachable("the link was closed while dialing") from None
            raise

    def _dialed(self, dialing: asyncio.Future[_ClientConnection]) -> None:
        if self._dialing is dialing:
            self._dialing = None
        if not dialing.cancelled():
            dialing.exception()  # retrieved: every caller may have left meanwhile

    async def _dial(self) -> _ClientConnection:
        """A connection whose server took this node's hello and is the node asked for."""
        loop = asyncio.get_running_loop()
        connection: _ClientConnection | None = None
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                _, connection = await loop.create_connection(
                    lambda: _ClientConnection(self.name, self._max_frame_bytes),
                    self._host,
                    self._port,
                    ssl=self._tls,
                    server_hostname=self._host if self._tls is not None else None,
                )
                connection.send(HELLO, 0, self._token)
                answered_by = await connection.welcome
        except (OSError, TimeoutError, RelayedError) as error:
            if connection is not None:
                connection.abort()
            why = error.status.details if isinstance(error, RelayedError) else error
            raise LinkUnreachable(f"cannot dial the link of {self.name}: {why}") from None
        except BaseException:  # cancelled (the link closed): no socket left behind
            if connection is not None:
                connection.abort()
            raise
        if answered_by != self._node_id:
            # Another node took the port after the one asked for left it.
            connection.abort()
            raise LinkUnreachable(f"the link of {self.name} is {answered_by!r}'s")
        self._connection = connection
        return connection

    def close(self) -> None:
        """Drop the connection: calls on it fail UNAVAILABLE, later ones LinkUnreachable."""
        self._closed = True
        if self._dialing is not None:
            self._dialing.cancel()
        if self._connection is not None:
            self._connection.abort()


@dataclass(frozen=True, slots=True)
class LinkDialer:
    """How this node dials other nodes' links: its member credentials."""

    token: bytes | None
    tls: ssl.SSLContext | None
    max_frame_bytes: int

    def dial(self, node_id: str, address: str, port: int) -> LinkClient:
        """The link of ``node_id`` at ``address`` (``host:port``, its member
        address), which serves it on ``port`` of the same host."""
        host = address.rpartition(":")[0].removeprefix("[").removesuffix("]")
        return LinkClient(
            node_id,
            host,
            port,
            token=self.token,
            tls=self.tls,
            max_frame_bytes=self.max_frame_bytes,
        )
