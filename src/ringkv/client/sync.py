"""The blocking client."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from types import TracebackType
from typing import TypeAlias, TypeVar

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
from ringkv.client.watching import DEFAULT_RECONNECT_S, Watchdog, WatchEvent, WatchState

RequestT = TypeVar("RequestT")
ResponseT = TypeVar("ResponseT")
Method: TypeAlias = Callable[
    [kv_pb2_grpc.KeyValueStub], "grpc.UnaryUnaryMultiCallable[RequestT, ResponseT]"
]


class Client:
    """A blocking connection to ringkv through one or more endpoints.

    Calls go to the current endpoint; when it is UNAVAILABLE the call is tried
    again, after a backoff, on the next one. Failures raise ``ringkv.errors``.

    ``tls_ca`` (a PEM path or bytes) connects with TLS and verifies the nodes
    with that CA; ``tls_cert``/``tls_key`` add a client certificate (nodes run
    with ``--tls-ca`` require one); ``token`` is sent as a bearer token
    (nodes run with ``--auth-token-file``). See ``ringkv.client.Security``.
    """

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
        self._pool = ChannelPool(lambda target: security.channel(target, CHANNEL_OPTIONS))
        self._policy = CallPolicy(
            endpoints, timeout=timeout, retry=retry, rng=rng, token_aware=token_aware
        )

    def _call(
        self,
        method: Method[RequestT, ResponseT],
        request: RequestT,
        timeout: float | None,
        key: str | None = None,
        *,
        retry: bool = True,
    ) -> ResponseT:
        if self._policy.needs_topology(key):
            self._learn_topology()
        call = self._policy.start(key, timeout, retry=retry)
        for address in call.addresses:
            stub = kv_pb2_grpc.KeyValueStub(self._pool.get(address))
            try:
                response, rpc = method(stub).with_call(request, timeout=call.timeout)
                call.answered(rpc.trailing_metadata())
                return response
            except grpc.RpcError as error:
                delay = call.failed(address, error)
            time.sleep(delay)
        raise AssertionError("unreachable: the addresses cycle forever")

    def _learn_topology(self) -> None:
        """Learn the ring from the first node that describes it."""
        for address in self._policy.topology_sources():
            stub = kv_pb2_grpc.ClusterStub(self._pool.get(address))
            request = kv_pb2.GetClusterStateRequest()
            try:
                state = stub.GetClusterState(request, timeout=TOPOLOGY_TIMEOUT_S)
            except grpc.RpcError:
                self._policy.topology_failed(address)
                continue
            self._policy.topology_learnt(state)
            return
        self._policy.topology_learnt(None)

    def get(
        self, key: str, *, consistency: Level = None, timeout: float | None = None
    ) -> Entry | None:
        """The key's value and version, or None if it is absent."""
        request = requests.get_request(key, consistency)
        return requests.entry(self._call(lambda stub: stub.Get, request, timeout, key))

    def set(
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
        """Store a value (a str is UTF-8 encoded) and return its version.

        ``ttl`` is in seconds. ``if_version`` or ``if_absent`` make the write
        conditional: it raises PreconditionFailed when the key has moved on.
        """
        request = requests.set_request(
            key, value, ttl=ttl, if_version=if_version, if_absent=if_absent, consistency=consistency
        )
        # A conditional write must not be sent twice: a retry could fail on
        # the very write the first attempt made.
        conditional = if_version is not None or if_absent
        response = self._call(lambda stub: stub.Set, request, timeout, key, retry=not conditional)
        return response.version

    def delete(
        self,
        key: str,
        *,
        if_version: int | None = None,
        consistency: Level = None,
        timeout: float | None = None,
    ) -> bool:
        """Delete a key; returns whether a live value was deleted."""
        request = requests.delete_request(key, if_version, consistency)
        response = self._call(
            lambda stub: stub.Delete, request, timeout, key, retry=if_version is None
        )
        return response.found

    def get_many(
        self, keys: Sequence[str], *, consistency: Level = None, timeout: float | None = None
    ) -> dict[str, Entry | None]:
        """Many keys in one call: each key with its entry, or None where absent."""
        request = requests.multi_get_request(keys, consistency)
        response = self._call(lambda stub: stub.MultiGet, request, timeout)
        return requests.entries(keys, response)

    def set_many(
        self,
        items: Mapping[str, bytes | str],
        *,
        ttl: float | None = None,
        consistency: Level = None,
        timeout: float | None = None,
    ) -> dict[str, int]:
        """Many unconditional writes in one call (not atomic); each key's version."""
        request = requests.multi_set_request(items, ttl, consistency)
        response = self._call(lambda stub: stub.MultiSet, request, timeout)
        return {key: r.version for key, r in zip(items, response.results, strict=True)}

    def scan_page(
        self,
        prefix: str = "",
        cursor: bytes = b"",
        *,
        limit: int = 0,
        keys_only: bool = False,
        consistency: Level = None,
        timeout: float | None = None,
    ) -> ScanPage:
        """One page of the live keys under ``prefix``, from ``cursor`` (empty:
        the start); ``limit`` caps the page (0: the node's cap, 1000). A page
        may be short, even empty, before the end: the scan is done only when
        ``next_cursor`` is empty."""
        request = requests.scan_request(prefix, cursor, limit, keys_only, consistency)
        return requests.scan_page(self._call(lambda stub: stub.Scan, request, timeout))

    def scan(
        self,
        prefix: str = "",
        *,
        limit: int | None = None,
        keys_only: bool = False,
        consistency: Level = None,
        timeout: float | None = None,
    ) -> Iterator[KeyEntry]:
        """Every live key under ``prefix`` (at most ``limit``), a page at a
        time, in token order; each ``timeout`` is per page. A key that exists
        for the whole scan is yielded exactly once, whichever node fails
        meanwhile; one written during it may or may not be."""
        pager = requests.ScanPager(limit)
        while not pager.done:
            page = self.scan_page(
                prefix,
                pager.cursor,
                limit=pager.page_limit,
                keys_only=keys_only,
                consistency=consistency,
                timeout=timeout,
            )
            yield from pager.take(page)

    def watch(
        self,
        prefix: str = "",
        *,
        from_version: int = 0,
        reconnect_s: float = DEFAULT_RECONNECT_S,
    ) -> Generator[WatchEvent, None, None]:
        """Every change to keys under ``prefix`` with a version above
        ``from_version`` (0: from now on), as it happens; blocks between
        changes and runs until the caller stops iterating.

        When a stream breaks, the watch goes on through another endpoint from
        where it was, for up to ``reconnect_s`` of failing: no change is lost,
        none is passed on twice, each key's changes come in version order.
        Raises ``errors.Compacted`` when the nodes' change logs no longer reach
        back to where it would resume.
        """
        state = WatchState(prefix, from_version, reconnect_s, self._policy.rng, self._policy.retry)
        while True:
            for address in self._policy.topology_sources():
                stream = kv_pb2_grpc.KeyValueStub(self._pool.get(address)).Watch(state.request())
                watchdog = Watchdog(stream.cancel)
                try:
                    while True:
                        watchdog.waiting()
                        response = next(stream, None)
                        watchdog.answered()
                        if response is None:
                            break
                        yield from state.events(response)
                    delay = 0.0  # the node ended the stream: go on elsewhere
                except grpc.RpcError as error:
                    self._policy.topology_failed(address)
                    delay = state.failed(error, time.monotonic())
                finally:
                    watchdog.stop()
                    stream.cancel()
                time.sleep(delay)

    def ping(self, *, timeout: float | None = None) -> str:
        """The id of the node that answered a no-op call."""
        request = kv_pb2.PingRequest()
        return self._call(lambda stub: stub.Ping, request, timeout).node_id

    def close(self) -> None:
        """Close every channel."""
        for channel in self._pool.take_all():
            channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
