"""Turning async handler functions into gRPC services.

Requests arrive as raw bytes and are parsed here rather than by grpc, so a
malformed message (bad wire format, invalid UTF-8 in a string field) gets
INVALID_ARGUMENT with a reason instead of grpc's opaque INTERNAL.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias

import grpc
from google.protobuf.message import DecodeError, Message

from ringkv.core.errors import InternalError, InvalidArgument, RingkvError, Unavailable
from ringkv.server.errors import abort_with

log = logging.getLogger(__name__)

SHUTTING_DOWN = "SHUTTING_DOWN"
"""The reason a closing node gives: nothing of the request ran there."""

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
Handler = Callable[[Any, Context], Awaitable[Message]]


@dataclass(frozen=True, slots=True)
class Method:
    """One unary RPC: its request type and the coroutine that serves it."""

    request_type: type[Message]
    handler: Handler


class Service(Protocol):
    """A gRPC service made of unary methods."""

    name: str
    """The full service name, such as ``kv.KeyValue``."""

    def methods(self) -> dict[str, Method]:
        """The service's methods by name."""
        ...


class RelayedError(Exception):
    """Another node's error answer, passed on to the caller unchanged."""

    def __init__(self, error: grpc.aio.AioRpcError) -> None:
        super().__init__(error.details())
        self.error = error


def parse_request(request_type: type[Message], raw: bytes) -> Message:
    """Parse a request, or InvalidArgument saying what is wrong with it."""
    try:
        return request_type.FromString(raw)
    except DecodeError as exc:
        if "UTF-8" in str(exc):
            raise InvalidArgument(
                "a string field is not valid UTF-8", reason="INVALID_UTF8"
            ) from None
        raise InvalidArgument(
            f"malformed {request_type.DESCRIPTOR.full_name}", reason="MALFORMED_REQUEST"
        ) from None


class Gate:
    """Counts calls inside handlers; once closed it refuses new calls.

    A node that is shutting down closes the gate and waits for it to drain
    before stopping the gRPC server: calls that arrive meanwhile get a
    retryable UNAVAILABLE (reason SHUTTING_DOWN) instead of being cancelled
    mid-way by the stop.
    """

    def __init__(self) -> None:
        self._active = 0
        self._closed = False
        self._arrivals = 0

    def enter(self) -> None:
        self._arrivals += 1
        if self._closed:
            raise Unavailable("the node is shutting down", reason=SHUTTING_DOWN)
        self._active += 1

    def leave(self) -> None:
        self._active -= 1

    async def drain(self, timeout_s: float, *, quiet_s: float = 0.05) -> None:
        """Close, then wait (at most ``timeout_s``) until no call is inside a
        handler and none arrived for ``quiet_s``.

        Calls already on their way when the gate closes still reach a handler
        and are refused there; the quiet period lets them. Refused callers
        retry elsewhere, so the arrivals stop.
        """
        self._closed = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline:
            arrivals = self._arrivals
            await asyncio.sleep(quiet_s)
            if self._active == 0 and self._arrivals == arrivals:
                return


def _serve(
    method: Method, full_name: str, gate: Gate
) -> Callable[[bytes, Context], Awaitable[bytes]]:
    async def serve(raw: bytes, context: Context) -> bytes:
        try:
            gate.enter()
        except Unavailable as error:
            await abort_with(context, error)
        try:
            request = parse_request(method.request_type, raw)
            response = await method.handler(request, context)
        except RingkvError as error:
            await abort_with(context, error)
        except RelayedError as relayed:
            answer = relayed.error
            await context.abort(
                answer.code(),
                answer.details() or "",
                trailing_metadata=tuple(answer.trailing_metadata() or ()),
            )
        except Exception:
            log.exception("unexpected error in %s", full_name)
            await abort_with(context, InternalError(f"internal error in {full_name}"))
        finally:
            gate.leave()
        return response.SerializeToString()

    return serve


def generic_handler(service: Service, gate: Gate) -> grpc.GenericRpcHandler:
    """A grpc handler that serves ``service`` through ``gate``."""
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
        method_name: grpc.unary_unary_rpc_method_handler(
            _serve(method, f"{service.name}/{method_name}", gate)
        )
        for method_name, method in service.methods().items()
    }
    return grpc.method_handlers_generic_handler(service.name, handlers)
