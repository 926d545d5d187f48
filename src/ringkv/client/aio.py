"""The asyncio client: the same calls as ``Client``, awaited."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, TypeAlias, TypeVar

import grpc

from ringkv.api import kv_pb2, kv_pb2_grpc
from ringkv.client import requests
from ringkv.client.calls import TOPOLOGY_TIMEOUT_S, CallPolicy
from ringkv.client.channels import ChannelPool, PemSource, Security
from ringkv.client.requests import (
    CHANNEL_OPTIONS,
    DEFAULT_ENDPOINT,
    Entry,
    KeyEntry,
    Level,
    ScanPage,
)
from ringkv.client.retry import RetryPolicy
from ringkv.client.watching import DEFAULT_RECONNECT_S, STALL_S, WatchEvent, WatchState

if TYPE_CHECKING:  # the async stub type exists only in the generated .pyi
    from ringkv.api.kv_pb2_grpc import KeyValueAsyncStub

RequestT = TypeVar("RequestT")
ResponseT = TypeVar("ResponseT")
Method: TypeAlias = Callable[
    ["KeyValueAsyncStub"], "grpc.aio.UnaryUnaryMultiCallable[RequestT, ResponseT]"
]


class AsyncClient:
    """An asyncio connection to ringkv; see ``Client`` for the behaviour."""

    def __init__(
        self,
        endpoints: str | Sequence[str] = DEFAULT_ENDPOINT,
        *,
        timeout: float = 5.0,
        retry: RetryPolicy | None = None,
        rng: random.Random | None = None,
        token_aware: bool = True,
        tls_ca: PemSource = None,
        tls_cert: PemSource = None,
        tls_key: PemSource = None,
        token: str | None = None,
    ) -> None:
        security = Security.of(tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key, token=token)
        self._pool = ChannelPool(lambda target: security.aio_channel(target, CHANNEL_OPTIONS))
        self._policy = CallPolicy(
            endpoints, timeout=timeout, retry=retry, rng=rng, token_aware=token_aware
        )

    async def _call(
        self,
        method: Method[RequestT, ResponseT],
        request: RequestT,
        timeout: float | None,
        key: str | None = None,
        *,
        retry: bool = True,
    ) -> ResponseT:
        if self._policy.needs_topology(key):
            await self._learn_topology()
        call = self._policy.start(key, timeout, retry=retry)
        for address in call.addresses:
            stub = kv_pb2_grpc.KeyValueStub(self._pool.get(address))
            try:
                pending = method(stub)(request, timeout=call.timeout)
                response = await pending
                call.answered(await pending.trailing_metadata())
                return response
            except grpc.RpcError as error:
                delay = call.failed(address, error)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable: the addresses cycle forever")

    async def _learn_topology(self) -> None:
        """Learn the ring from the first node that describes it."""
        for address in self._policy.topology_sources():
            stub = kv_pb2_grpc.ClusterStub(self._pool.get(address))
            request = kv_pb2.GetClusterStateRequest()
            try:
                state = await stub.GetClusterState(request, timeout=TOPOLOGY_TIMEOUT_S)
            except grpc.RpcError:
                self._policy.topology_failed(address)
                continue
            self._policy.topology_learnt(state)
            return
        self._policy.topology_learnt(None)

    async def get(
        self, key: str, *, consistency: Level = None, timeout: float | None = None
    ) -> Entry | None:
        """The key's value and version, or None if it is absent."""
        request = requests.get_request(key, consistency)
        return requests.entry(await self._call(lambda stub: stub.Get, request, timeout, key))

    async def set(
        self,
        key: str,
        value: bytes | str,
        *,
        ttl: float | None = None,
        if_version: int | None = None,
        if_absent: bool = False,
        consistency: Level = None,
        timeout: float | None = None,
    ) -> int:
        """Store a value and return its version; see ``Client.set``."""
        request = requests.set_request(
            key, value, ttl=ttl, if_version=if_version, if_absent=if_absent, consistency=consistency
        )
        # A conditional write must not be sent twice: a retry could fail on
        # the very write the first attempt made.
        conditional = if_version is not None or if_absent
        response = await self._call(
            lambda stub: stub.Set, request, timeout, key, retry=not conditional
        )
        return response.version

    async def delete(
        self,
        key: str,
        *,
        if_version: int | None = None,
        consistency: Level = None,
        timeout: float | None = None,
    ) -> bool:
        """Delete a key; returns whether a live value was deleted."""
        request = requests.delete_request(key, if_version, consistency)
        response = await self._call(
            lambda stub: stub.Delete, request, timeout, key, retry=if_version is None
        )
        return response.found

    async def get_many(
        self, keys: Sequence[str], *, consistency: Level = None, timeout: float | None = None
    ) -> dict[str, Entry | None]:
        """Many keys in one call: each key with its entry, or None where absent."""
        request = requests.multi_get_request(keys, consistency)
        response = await self._call(lambda stub: stub.MultiGet, request, timeout)
        return requests.entries(keys, response)

    async def set_many(
        self,
        items: Mapping[str, bytes | str],
        *,
        ttl: float | None = None,
        consistency: Level = None,
        timeout: float | None = None,
    ) -> dict[str, int]:
        """Many unconditional writes in one call (not atomic); each key's version."""
        request = requests.multi_set_request(items, ttl, consistency)
        response = await self._call(lambda stub: stub.MultiSet, request, timeout)
        return {key: r.version for key, r in zip(items, response.results, strict=True)}

    async def scan_page(
        self,
        prefix: str = "",
        cursor: bytes = b"",
        *,
        limit: int = 0,
        keys_only: bool = False,
        consistency: Level = None,
        timeout: float | None = None,
    ) -> ScanPage:
        """One page of the live keys under ``prefix``; see ``Client.scan_page``."""
        request = requests.scan_request(prefix, cursor, limit, keys_only, consistency)
        return requests.scan_page(await self._call(lambda stub: stub.Scan, request, timeout))

    async def scan(
        self,
        prefix: str = "",
        *,
        limit: int | None = None,
        keys_only: bool = False,
        consistency: Level = None,
        timeout: float | None = None,
    ) -> AsyncIterator[KeyEntry]:
        """Every live key under ``prefix``; see ``Client.scan``."""
        pager = requests.ScanPager(limit)
        while not pager.done:
            page = await self.scan_page(
                prefix,
                pager.cursor,
                limit=pager.page_limit,
                keys_only=keys_only,
                consistency=consistency,
                timeout=timeout,
            )
            for entry in pager.take(page):
                yield entry

    async def watch(
        self,
        prefix: str = "",
        *,
        from_version: int = 0,
        reconnect_s: float = DEFAULT_RECONNECT_S,
    ) -> AsyncGenerator[WatchEvent, None]:
        """Every change to keys under ``prefix``; see ``Client.watch``."""
        state = WatchState(prefix, from_version, reconnect_s, self._policy.rng, self._policy.retry)
        while True:
            for address in self._policy.topology_sources():
                stream = kv_pb2_grpc.KeyValueStub(self._pool.get(address)).Watch(state.request())
                try:
                    while True:
                        # A stream silent past its heartbeats is taken for broken.
                        async with asyncio.timeout(STALL_S):
                            response = await stream.read()
                        if not isinstance(response, kv_pb2.WatchResponse):
                            break  # EOF: the node ended the stream
                        for event in state.events(response):
                            yield event
                    delay = 0.0  # go on elsewhere
                except TimeoutError:
                    self._policy.topology_failed(address)
                    delay = state.stalled(time.monotonic())
                except grpc.RpcError as error:
                    self._policy.topology_failed(address)
                    delay = state.failed(error, time.monotonic())
                finally:
                    stream.cancel()
                await asyncio.sleep(delay)

    async def ping(self, *, timeout: float | None = None) -> str:
        """The id of the node that answered a no-op call."""
        request = kv_pb2.PingRequest()
        return (await self._call(lambda stub: stub.Ping, request, timeout)).node_id

    async def close(self) -> None:
        """Close every channel."""
        for channel in self._pool.take_all():
            await channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
