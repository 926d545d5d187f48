"""When a failed call is tried again, and after how long."""

from __future__ import annotations

import random
from dataclasses import dataclass

import grpc

from ringkv.api.status import error_info
from ringkv.client.errors import from_rpc_error
from ringkv.core.errors import Overloaded


def _not_run(error: grpc.RpcError) -> bool:
    """Whether the failed call surely did nothing, so that it may be sent again."""
    code = error.code()
    if code is grpc.StatusCode.UNAVAILABLE:
        return True
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        info = error_info(error.trailing_metadata())
        return info is not None and info.reason == Overloaded.default_reason
    return False


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
        ceiling = min(
            self._policy.max_backoff_s,
            self._policy.initial_backoff_s * self._policy.multiplier ** (self._failures - 1),
        )
        return self._rng.uniform(0, ceiling)
