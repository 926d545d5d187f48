"""What the blocking and the asyncio client share about making a call.

Where each attempt goes (token-aware routing with fallbacks), how long it
may take, when it is retried and after what pause, and when to relearn the
ring. The clients only run the loop, one blocking and one awaiting.
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import grpc

from ringkv.api import kv_pb2
from ringkv.client.channels import endpoint_list
from ringkv.client.retry import Attempts, RetryPolicy
from ringkv.client.routing import Router, token_key, topology_from

TOPOLOGY_TIMEOUT_S = 1.0
# Codes after which the next calls should try other nodes first. A deadline
# is not retried (the write may have happened) but says the node may be hung.
NODE_TROUBLE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


class CallPolicy:
    """Settings and routing state of one client."""

    def __init__(
        self,
        endpoints: str | Sequence[str],
        *,
        timeout: float,
        retry: RetryPolicy | None,
        rng: random.Random | None,
        token_aware: bool,
    ) -> None:
        self.router = Router(endpoint_list(endpoints))
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.rng = rng or random.Random()
        self.token_aware = token_aware

    def needs_topology(self, key: str | None) -> bool:
        """Whether to (re)learn the ring before a call for ``key``."""
        return self.token_aware and key is not None and self.router.needs_refresh(time.monotonic())

    def start(self, key: str | None, timeout: float | None, *, retry: bool = True) -> Call:
        """The plan of one call; ``retry=False`` for calls that must not run twice."""
        routing_key = None if key is None else token_key(key)
        candidates = self.router.candidates(routing_key, time.monotonic())
        retry_policy = self.retry if retry else RetryPolicy(attempts=1)
        return Call(self, candidates, self.timeout if timeout is None else timeout, retry_policy)

    def topology_sources(self) -> list[str]:
        return self.router.candidates(None, time.monotonic())

    def topology_failed(self, address: str) -> None:
        self.router.failed(address, time.monotonic())

    def topology_learnt(self, state: kv_pb2.GetClusterStateResponse | None) -> None:
        topology = None if state is None else topology_from(state)
        self.router.refreshed(topology, time.monotonic())


class Call:
    """The attempts of one call: addresses in order, retries with backoff."""

    def __init__(
        self, policy: CallPolicy, candidates: list[str], timeout: float, retry: RetryPolicy
    ) -> None:
        self._policy = policy
        self._attempts = Attempts(retry, policy.rng)
        self.addresses: Iterator[str] = itertools.cycle(candidates)
        self.timeout = timeout

    def answered(self, trailing_metadata: Iterable[Any] | None) -> None:
        self._policy.router.observe(trailing_metadata, time.monotonic())

    def failed(self, address: str, error: grpc.RpcError) -> float:
        """Seconds to pause before the next attempt; raises the typed error when done."""
        if error.code() in NODE_TROUBLE_CODES:
            self._policy.router.failed(address, time.monotonic())
        return self._attempts.failed(error)
