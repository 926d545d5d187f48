"""Bearer tokens on the wire: the ``authorization`` header every call of a
channel carries, added by a client interceptor (blocking or asyncio).

An interceptor rather than call credentials: grpc only sends call
credentials over TLS, and a token must also work on a plaintext port.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import grpc

AUTHORIZATION = "authorization"
"""Request header: ``Bearer <token>``."""

BEARER_PREFIX = "Bearer "


def header_value(token: str) -> str:
    """The ``authorization`` header of a token."""
    return BEARER_PREFIX + token


class _CallDetails(NamedTuple):
    method: str
    timeout: float | None
    metadata: Any
    credentials: Any
    wait_for_ready: Any
    compression: Any


class _Details(_CallDetails, grpc.ClientCallDetails):
    """The call's details with the token header added (the blocking API's form)."""


class TokenInterceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
):
    """Adds ``authorization: Bearer <token>`` to every call of a blocking channel."""

    def __init__(self, token: str) -> None:
        self._header = (AUTHORIZATION, header_value(token))

    def _details(self, details: grpc.ClientCallDetails) -> _Details:
        metadata = [*(getattr(details, "metadata", None) or ()), self._header]
        return _Details(
            details.method,
            details.timeout,
            metadata,
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )

    def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        return continuation(self._details(client_call_details), request)


def _with_header(details: grpc.aio.ClientCallDetails, header: tuple[str, str]) -> Any:
    existing: Iterable[tuple[str, str | bytes]] = details.metadata or ()
    return grpc.aio.ClientCallDetails(
        details.method,
        details.timeout,
        grpc.aio.Metadata(*existing, header),
        details.credentials,
        details.wait_for_ready,
    )


class AsyncUnaryTokenInterceptor(grpc.aio.UnaryUnaryClientInterceptor):
    """Adds the token header to every unary call of an asyncio channel."""

    def __init__(self, token: str) -> None:
        self._header = (AUTHORIZATION, header_value(token))

    async def intercept_unary_unary(
        self, continuation: Any, client_call_details: Any, request: Any
    ) -> Any:
        return await continuation(_with_header(client_call_details, self._header), request)


class AsyncStreamTokenInterceptor(grpc.aio.UnaryStreamClientInterceptor):
    """Adds the token header to every server-streaming call of an asyncio channel."""

    def __init__(self, token: str) -> None:
        self._header = (AUTHORIZATION, header_value(token))

    async def intercept_unary_stream(
        self, continuation: Any, client_call_details: Any, request: Any
    ) -> Any:
        return await continuation(_with_header(client_call_details, self._header), request)


def async_interceptors(token: str | None) -> list[grpc.aio.ClientInterceptor]:
    """The interceptors that make an asyncio channel carry ``token`` (none without one)."""
    if token is None:
        return []
    return [AsyncUnaryTokenInterceptor(token), AsyncStreamTokenInterceptor(token)]
