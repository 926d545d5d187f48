"""What the blocking and the asyncio client share about a watch.

A watch is one server stream at a time. When it breaks (the node died, was
stopped, the connection was cut, or it sent nothing for ``STALL_S``) the
client opens another on the next endpoint a little below the last resume
version the stream gave, and drops what it is sent again
(``ringkv.core.watch.Delivered``): each key's changes stay in version order,
none twice.
"""

from __future__ import annotations

import dataclasses
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from ringkv.api import kv_pb2
from ringkv.client.errors import from_rpc_error
from ringkv.client.retry import RetryPolicy, overloaded
from ringkv.core.errors import Unavailable
from ringkv.core.watch import RESUME_MARGIN, Delivered

STALL_S = 10.0
"""A stream silent this long is taken for broken (nodes send a heartbeat
every second): a node paused, or cut off from this client without a reset."""
DEFAULT_RECONNECT_S = 30.0
"""How long a watch keeps trying to reconnect before it raises."""
_RECONNECTABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
    }
)
"""Codes after which another node may serve the watch on: the stream broke,
not the request."""


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """One change to a key."""

    key: str
    kind: str
    """"put" or "delete"."""
    value: bytes
    """Empty for a delete."""
    version: int
    """Each key's events come in version order; events of different keys
    need not."""
    expires_at_ms: int = 0
    """Unix milliseconds when the value expires; 0 for never. Expiry itself
    is not an event."""
    resume_version: int = 0
    """Where to start a new watch to miss nothing after this event (every
    change at or below it was delivered): pass it as ``from_version``. An
    event's own ``version`` resumes too, but may skip changes to other keys
    stamped earlier that had not come yet."""


class Watchdog:
    """Cancels a blocking stream that sends nothing for ``STALL_S`` while
    its reader waits on it (not while the reader handles what it was sent)."""

    def __init__(self, cancel: Callable[[], object]) -> None:
        self._cancel = cancel
        self._waiting_since: float | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="watch watchdog", daemon=True)
        self._thread.start()

    def waiting(self) -> None:
        self._waiting_since = time.monotonic()

    def answered(self) -> None:
        self._waiting_since = None

    def stop(self) -> None:
        self._done.set()

    def _watch(self) -> None:
        while not self._done.wait(timeout=STALL_S / 10):
            since = self._waiting_since
            if since is not None and time.monotonic() - since > STALL_S:
                self._cancel()
                return


class WatchState:
    """The resume point of one watch, the changes it passed on, its reconnects."""

    def __init__(
        self,
        prefix: str,
        from_version: int,
        reconnect_s: float,
        rng: random.Random,
        retry: RetryPolicy | None = None,
    ) -> None:
        self._retry_policy = retry or RetryPolicy()
        """Its backoff paces reconnects (its attempts do not apply: ``reconnect_s`` does)."""
        if from_version < 0:
            raise ValueError(f"from_version must not be negative, got {from_version}")
        self._prefix = prefix
        self.resume_version = from_version
        """Every change at or below it has been passed on (once the first
        answer came; before that, where the watch was asked to start)."""
        self._start = from_version
        """Where the watch starts (from now: the first answer says where)."""
        self._delivered = Delivered()
        self._reconnect_s = reconnect_s
        self._rng = rng
        self._failing_since: float | None = None
        self._failures = 0

    def request(self) -> kv_pb2.WatchRequest:
        """The request of the next stream: from a margin below the resume
        version (what reached a replica late, stamped just below it, is still
        news; repeats are dropped), never below where the watch started."""
        if not self._start:
            return kv_pb2.WatchRequest(prefix=self._prefix)
        again = max(self._start, self.resume_version - RESUME_MARGIN)
        return kv_pb2.WatchRequest(prefix=self._prefix, from_version=again)

    def events(self, response: kv_pb2.WatchResponse) -> list[WatchEvent]:
        """The news in one answer of the stream."""
        self._failing_since, self._failures = None, 0
        # The answer's resume version holds once all of its events are
        # handled: the events before its last carry the one before.
        before = self.resume_version
        news = [
            WatchEvent(
                event.key,
                "delete" if event.kind == kv_pb2.EVENT_DELETE else "put",
                event.value,
                event.version,
                event.expires_at_ms,
                before,
            )
            for event in response.events
            if self._delivered.admit(event.key.encode(), (event.version, ""))
        ]
        if not self._start:
            self._start = response.resume_version  # from now: here
        if response.resume_version > before:
            self.resume_version = response.resume_version
            self._delivered.forget_below(self.resume_version)
            if news:
                news[-1] = dataclasses.replace(news[-1], resume_version=self.resume_version)
        return news

    def failed(self, error: grpc.RpcError, now: float) -> float:
        """Seconds to pause before reconnecting; raises the typed error when
        the stream cannot be resumed (a bad request, Compacted) or no node
        took it for ``reconnect_s``."""
        if error.code() not in _RECONNECTABLE and not overloaded(error):
            raise from_rpc_error(error) from None
        return self._retry(now, lambda: from_rpc_error(error))

    def stalled(self, now: float) -> float:
        """``failed`` for a stream that went silent (no error came)."""
        return self._retry(
            now, lambda: Unavailable(f"no node kept the watch going for {self._reconnect_s} s")
        )

    def _retry(self, now: float, error: Callable[[], Exception]) -> float:
        if self._failing_since is None:
            self._failing_since = now
        elif now - self._failing_since > self._reconnect_s:
            raise error()
        self._failures += 1
        return self._retry_policy.backoff(self._failures, self._rng)
