"""One lazily opened channel per address a client talks to, and the
credentials (TLS, token) every channel of a client is opened with."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeAlias, TypeVar

import grpc

from ringkv.api.bearer import TokenInterceptor, async_interceptors
from ringkv.core.errors import InvalidArgument

ChannelT = TypeVar("ChannelT")


class ChannelPool(Generic[ChannelT]):
    """Long-lived channels by address."""

    def __init__(self, open_channel: Callable[[str], ChannelT]) -> None:
        self._open_channel = open_channel
        self._channels: dict[str, ChannelT] = {}

    def get(self, address: str) -> ChannelT:
        """The channel to ``address``, opened on first use."""
        channel = self._channels.get(address)
        if channel is None:
            channel = self._channels[address] = self._open_channel(address)
        return channel

    def take_all(self) -> list[ChannelT]:
        """Every open channel, forgotten by the pool (for closing)."""
        channels = list(self._channels.values())
        self._channels.clear()
        return channels


def endpoint_list(endpoints: str | Sequence[str]) -> list[str]:
    """Endpoints from a comma-separated string or a sequence."""
    items = endpoints.split(",") if isinstance(endpoints, str) else list(endpoints)
    cleaned = [item.strip() for item in items if item.strip()]
    if not cleaned:
        raise ValueError("at least one endpoint is needed")
    return cleaned


PemSource: TypeAlias = "str | os.PathLike[str] | bytes | None"
"""A PEM file's path, or its bytes."""


def _pem(source: PemSource, what: str) -> bytes | None:
    if source is None or isinstance(source, bytes):
        return source
    try:
        return Path(source).read_bytes()
    except OSError as error:
        raise InvalidArgument(
            f"cannot read {what} {source}: {error.strerror or error}", reason="BAD_TLS_FILE"
        ) from None


@dataclass(frozen=True, slots=True)
class Security:
    """How a client proves who it is and checks whom it talks to.

    ``tls_ca`` (a path or PEM bytes) turns TLS on and verifies the nodes'
    certificates with that CA; ``tls_cert``/``tls_key`` add a client
    certificate (for the member port of nodes started with ``--tls-ca``, or
    for their only port with ``--peer-port-offset 0``); ``token`` is
    sent as ``authorization: Bearer <token>`` on every call (nodes started
    with ``--auth-token-file``). TLS is on when any of the three TLS options
    is given (without ``tls_ca`` the system's roots verify the nodes).
    """

    tls_ca: bytes | None = None
    tls_cert: bytes | None = None
    tls_key: bytes | None = None
    token: str | None = None

    @classmethod
    def of(
        cls,
        *,
        tls_ca: PemSource = None,
        tls_cert: PemSource = None,
        tls_key: PemSource = None,
        token: str | None = None,
    ) -> Security:
        """Read the PEM files named (bytes are taken as they are)."""
        if (tls_cert is None) != (tls_key is None):
            raise InvalidArgument("tls_cert and tls_key go together", reason="BAD_TLS_OPTIONS")
        return cls(
            _pem(tls_ca, "the TLS CA"),
            _pem(tls_cert, "the TLS certificate"),
            _pem(tls_key, "the TLS key"),
            token.strip() if token else None,
        )

    @property
    def tls(self) -> bool:
        return self.tls_ca is not None or self.tls_cert is not None

    def _credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.tls_ca, private_key=self.tls_key, certificate_chain=self.tls_cert
        )

    def channel(
        self, target: str, options: Sequence[tuple[str, Any]] | None = None
    ) -> grpc.Channel:
        """A blocking channel to ``target`` with these credentials."""
        channel = (
            grpc.secure_channel(target, self._credentials(), options=options)
            if self.tls
            else grpc.insecure_channel(target, options=options)
        )
        if self.token is None:
            return channel
        return grpc.intercept_channel(channel, TokenInterceptor(self.token))

    def aio_channel(
        self, target: str, options: Sequence[tuple[str, Any]] | None = None
    ) -> grpc.aio.Channel:
        """An asyncio channel to ``target`` with these credentials."""
        interceptors = async_interceptors(self.token)
        if self.tls:
            return grpc.aio.secure_channel(
                target, self._credentials(), options=options, interceptors=interceptors
            )
        return grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)


PLAINTEXT = Security()
"""No TLS, no token."""
