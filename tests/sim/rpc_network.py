"""gRPC channels over a simulated network, for real node code on virtual time.

A node's code dials peers through a ``ChannelOpener``; this module's opener
returns a :class:`SimChannel`, which the real generated stubs use like a
``grpc.aio.Channel``. A call's request is serialized by the stub, carried to
the node serving the address after a delay, parsed and handled there by the
node's real handler, and its answer (or the error the handler raised, mapped
to a status as the server edge maps it) carried back. The caller sees
``grpc.aio.AioRpcError`` for a deadline, a refused connection or an error
answer, exactly as over a real channel.

Faults act on each direction of a link when a message is sent: a cut link
or a drop loses it (the caller waits out its deadline); a delay holds it,
possibly past the caller's deadline, and the handler still runs when it
arrives (as a server runs a call whose caller already gave up). A message in
flight when a link is cut still arrives: TCP holds it, as with a heartbeat
delivered after a partition heals.
"""

from __future__ import annotations

import asyncio
import functools
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import Message

from ringkv.api.headers import STATUS_DETAILS
from ringkv.core.errors import RingkvError
from ringkv.server.transport.errors import status_code, status_details
from ringkv.server.transport.rpc import RelayedError

Handler = Callable[[Any], Awaitable[Message]]
"""Serves one parsed request (a node's real handler)."""


@dataclass(frozen=True, slots=True)
class Route:
    """One method a simulated node serves: its request type and handler."""

    request_type: type[Message]
    handler: Handler


@dataclass(frozen=True, slots=True)
class LinkFaults:
    """How the network treats the messages it does not cut."""

    drop: float = 0.0
    """Probability that a message is lost."""
    min_delay_ms: float = 0.5
    max_delay_ms: float = 5.0
    long_delay_chance: float = 0.0
    """Probability that a message is held for ``long_delay_ms`` instead."""
    long_delay_ms: tuple[float, float] = (0.0, 0.0)


def rpc_error(code: grpc.StatusCode, details: str, trailing: tuple[Any, ...] = ()) -> Exception:
    return grpc.aio.AioRpcError(
        code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailing), details=details
    )


def error_answer(error: BaseException) -> Exception | None:
    """The error a caller sees for what a handler raised; None for a bug."""
    if isinstance(error, RelayedError):
        status = error.status
        return rpc_error(status.code, status.details, status.trailing_metadata)
    if isinstance(error, RingkvError):
        code = status_code(error)
        return rpc_error(code, error.message, ((STATUS_DETAILS, status_details(error, code)),))
    return None


class RpcNetwork:
    """Every simulated node's routes, by address, and the links between nodes."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._servers: dict[str, tuple[str, Mapping[str, Route]]] = {}
        self._node_at: dict[str, str] = {}
        """Which node an address belongs to, served or not."""
        self._serving: dict[str, set[asyncio.Task[None]]] = {}
        self._unanswered: dict[str, dict[asyncio.Future[bytes], str]] = {}
        """Per node, the calls sent to it and not answered yet, with their callers."""
        self.cut: set[tuple[str, str]] = set()
        """Directed (sender, receiver) pairs of node ids whose messages are lost."""
        self.held: set[tuple[str, str]] = set()
        """Directed pairs whose messages are each held for a time in ``held_ms``."""
        self.held_ms = (0.0, 0.0)
        self.faults = LinkFaults()
        self.bugs: list[str] = []
        """Handlers that raised something other than a domain error."""
        self.calls = 0

    def serve(self, node_id: str, address: str, routes: Mapping[str, Route]) -> None:
        self._servers[address] = (node_id, routes)
        self._node_at[address] = node_id
        self._serving.setdefault(node_id, set())

    def stop_serving(self, node_id: str, address: str) -> None:
        """The node is gone: nothing reaches it, calls it was serving die, and
        their callers learn it as over a real connection: UNAVAILABLE, once
        the reset crosses the link (if it can)."""
        self._servers.pop(address, None)
        for task in self._serving.pop(node_id, set()):
            task.cancel()
        for answer, caller in list(self._unanswered.get(node_id, {}).items()):
            self._reset(caller, node_id, answer)

    def _reset(self, caller: str, node_id: str, answer: asyncio.Future[bytes]) -> None:
        if self._passes(node_id, caller):
            error = rpc_error(grpc.StatusCode.UNAVAILABLE, "connection reset")
            delay = self._delay_s(node_id, caller)
            asyncio.get_running_loop().call_later(delay, _settle, answer, error)

    def opener(self, node_id: str) -> Callable[[str], SimChannel]:
        """The ``ChannelOpener`` of one node."""
        return lambda address: SimChannel(self, node_id, address)

    def _passes(self, sender: str, receiver: str) -> bool:
        return (sender, receiver) not in self.cut and self._rng.random() >= self.faults.drop

    def _delay_s(self, sender: str, receiver: str) -> float:
        if (sender, receiver) in self.held:
            return self._rng.uniform(*self.held_ms) / 1000
        faults = self.faults
        if faults.long_delay_chance and self._rng.random() < faults.long_delay_chance:
            return self._rng.uniform(*faults.long_delay_ms) / 1000
        return self._rng.uniform(faults.min_delay_ms, faults.max_delay_ms) / 1000

    async def call(
        self, sender: str, address: str, method: str, raw: bytes, timeout_s: float | None
    ) -> bytes:
        self.calls += 1
        loop = asyncio.get_running_loop()
        server = self._servers.get(address)
        if server is None:
            # Refused, if the refusal can come back; lost otherwise.
            down = self._node_at.get(address)
            if down is not None and ((sender, down) in self.cut or (down, sender) in self.cut):
                await asyncio.sleep(timeout_s or 0)
                raise rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded")
            await asyncio.sleep(0.001)
            raise rpc_error(grpc.StatusCode.UNAVAILABLE, "connection refused")
        receiver, routes = server
        route = routes.get(method)
        if route is None:
            raise rpc_error(grpc.StatusCode.UNIMPLEMENTED, f"{method} is not simulated")
        answer: asyncio.Future[bytes] = loop.create_future()
        unanswered = self._unanswered.setdefault(receiver, {})
        unanswered[answer] = sender
        answer.add_done_callback(lambda done: unanswered.pop(done, None))
        if self._passes(sender, receiver):
            delay = self._delay_s(sender, receiver)
            arrive = functools.partial(self._arrive, routes=routes, route=route)
            loop.call_later(delay, arrive, sender, address, raw, answer)
        try:
            return await asyncio.wait_for(answer, timeout_s)
        except TimeoutError:
            raise rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded") from None

    def _arrive(
        self,
        sender: str,
        address: str,
        raw: bytes,
        answer: asyncio.Future[bytes],
        *,
        routes: Mapping[str, Route],
        route: Route,
    ) -> None:
        server = self._servers.get(address)
        if server is None or server[1] is not routes:
            # The node went down while the request was on its way, and perhaps
            # came back: the request was on the dead process's connection, and
            # no handler of the old process may run (cluster sim seed 32337: a
            # heartbeat held past a crash was handled by the crashed node's
            # manager, after its restart).
            self._reset(sender, self._node_at[address], answer)
            return
        receiver = server[0]
        task = asyncio.get_running_loop().create_task(
            self._handle(sender, receiver, route, raw, answer)
        )
        serving = self._serving[receiver]
        serving.add(task)
        task.add_done_callback(serving.discard)

    async def _handle(
        self,
        sender: str,
        receiver: str,
        route: Route,
        raw: bytes,
        answer: asyncio.Future[bytes],
    ) -> None:
        result: bytes | Exception
        try:
            response = await route.handler(route.request_type.FromString(raw))
            result = response.SerializeToString()
        except Exception as error:
            mapped = error_answer(error)
            if mapped is None:
                self.bugs.append(f"{receiver} failed {route.request_type.__name__}: {error!r}")
                mapped = rpc_error(grpc.StatusCode.INTERNAL, repr(error))
            result = mapped
        if self._passes(receiver, sender):
            delay = self._delay_s(receiver, sender)
            asyncio.get_running_loop().call_later(delay, _settle, answer, result)


def _settle(answer: asyncio.Future[bytes], result: bytes | Exception) -> None:
    if answer.done():
        return  # the caller gave up waiting
    if isinstance(result, Exception):
        answer.set_exception(result)
    else:
        answer.set_result(result)


class _MultiCallable:
    def __init__(
        self,
        channel: SimChannel,
        method: str,
        request_serializer: Callable[[Any], bytes],
        response_deserializer: Callable[[bytes], Any],
    ) -> None:
        self._channel = channel
        self._method = method
        self._serialize = request_serializer
        self._deserialize = response_deserializer

    async def __call__(self, request: Any, *, timeout: float | None = None, **_: Any) -> Any:
        channel = self._channel
        raw = await channel.network.call(
            channel.sender, channel.address, self._method, self._serialize(request), timeout
        )
        return self._deserialize(raw)


class SimChannel:
    """What the generated stubs need of a ``grpc.aio.Channel``: unary calls.

    Streaming methods exist (the stubs make them) but are not simulated.
    """

    def __init__(self, network: RpcNetwork, sender: str, address: str) -> None:
        self.network = network
        self.sender = sender
        self.address = address

    def unary_unary(
        self,
        method: str,
        request_serializer: Callable[[Any], bytes],
        response_deserializer: Callable[[bytes], Any],
        **_: Any,
    ) -> _MultiCallable:
        return _MultiCallable(self, method, request_serializer, response_deserializer)

    def unary_stream(self, method: str, *_: Any, **__: Any) -> None:
        return None

    stream_unary = unary_stream
    stream_stream = unary_stream

    async def close(self, grace: float | None = None) -> None:
        return None

    async def __aenter__(self) -> SimChannel:
        return self

    async def __aexit__(self, *_: object) -> None:
        return None
