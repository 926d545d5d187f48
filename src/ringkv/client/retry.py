"""When a failed call is tried again, and after how long."""

from __future__ import annotations

import random
from dataclasses import dataclass

import grpc

from ringkv.api.status import error_info
from ringkv.client.errors import from_rpc_error
from ringkv.core.errors import Overloaded


def overloaded(error: grpc.RpcError) -> bool:
    """Whether a node turned the call away before any work (OVERLOADED)."""
    if error.code() is not grpc.StatusCode.RESOURCE_EXHAUSTED:
        return False
    info = error_info(error.trailing_metadata())
    return info is not None and info.reason == Overloaded.default_reason


def _not_run(error: grpc.RpcError) -> bool:
    """Whether the failed call surely did nothing, so that it may be sent again."""
    return error.code() is grpc.StatusCode.UNAVAILABLE or overloaded(error)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with full jitter, for calls that did not run.

    UNAVAILABLE means the request was not served (the node is down, starting
    or shutting down), and RESOURCE_EXHAUSTED with reason OVERLOADED that the
    node turned it away before any work, so sending it again, to the next
    endpoint, is safe.
    """

    attempts: int = 4
    """Tries in all, the first included."""
    initial_backoff_s: float = 0.05
    max_backoff_s: float = 1.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be at least 1")

    def backoff(self, failures: int, rng: random.Random) -> float:
        """Seconds to wait after the ``failures``-th failure in a row (from 1)."""
        ceiling = min(
            self.max_backoff_s, self.initial_backoff_s * self.multiplier ** (failures - 1)
        )
        return rng.uniform(0, ceiling)


class Attempts:
    """The retry state of one call."""

    def __init__(self, policy: RetryPolicy, rng: random.Random) -> None:
        self._policy = policy
        self._rng = rng
        self._failures = 0

    def failed(self, error: grpc.RpcError) -> float:
        """Seconds to wait before the next try; raises the typed error when done."""
        self._failures += 1
        if not _not_run(error) or self._failures >= self._policy.attempts:
            raise from_rpc_error(error) from None
        return self._policy.backoff(self._failures, self._rng)
