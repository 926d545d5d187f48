"""The domain errors of ringkv, shared by the server and the client.

Each error carries a machine-readable ``reason`` (an upper-case word, as in
google.rpc.ErrorInfo) and string ``metadata``. The server maps each class to
one gRPC status code in a single table (``ringkv.server.transport.errors``); the client
maps status codes back to these classes (``ringkv.client.errors``).
"""

from __future__ import annotations

from collections.abc import Mapping


class RingkvError(Exception):
    """Base of every error ringkv raises on purpose."""

    default_reason = "ERROR"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.metadata: dict[str, str] = dict(metadata or {})


class InvalidArgument(RingkvError):
    """The request is malformed or breaks a limit on its shape."""

    default_reason = "INVALID_ARGUMENT"


class NotFound(RingkvError):
    """The request names something that does not exist (a cluster member)."""

    default_reason = "NOT_FOUND"


class ResourceExhausted(RingkvError):
    """A request is too large, or a resource it needs has run out."""

    default_reason = "RESOURCE_EXHAUSTED"


class Overloaded(ResourceExhausted):
    """The node is serving as many calls as it may; nothing of this one ran,
    so the caller backs off and tries again."""

    default_reason = "OVERLOADED"


class ValueTooLarge(ResourceExhausted):
    """A value is larger than the node's --max-value-bytes."""

    default_reason = "VALUE_TOO_LARGE"


class StorageFull(ResourceExhausted):
    """The storage engine cannot grow: the disk or the map limit is full."""

    default_reason = "STORAGE_FULL"


class PreconditionFailed(RingkvError):
    """A conditional write found a different version than it expected."""

    default_reason = "VERSION_MISMATCH"


class Compacted(PreconditionFailed):
    """A watch asked to resume from a version its change logs no longer reach
    back to (as etcd's "required revision has been compacted"): changes may
    have been missed. Scan for the current state and watch again from now."""

    default_reason = "COMPACTED"


class WatchDisabled(PreconditionFailed):
    """A node keeps no change log (``--watch-log-entries 0``): it serves no watch."""

    default_reason = "WATCH_DISABLED"


class Unavailable(RingkvError):
    """The request cannot be served now; retrying later may succeed."""

    default_reason = "UNAVAILABLE"


class StaleMemberTable(Unavailable):
    """A replica refused a request planned on an older member table than its own.

    The coordinator adopts the replica's table and plans the request again;
    a client sees this only when the table kept changing under every retry.
    """

    default_reason = "STALE_MEMBER_TABLE"


class DeadlineExceeded(RingkvError):
    """The request did not finish before its deadline."""

    default_reason = "DEADLINE_EXCEEDED"


class Unauthenticated(RingkvError):
    """The caller did not prove who it is."""

    default_reason = "UNAUTHENTICATED"


class PermissionDenied(Unauthenticated):
    """The caller proved who it is, but that role may not make this call (a
    client token on a member call). A kind of Unauthenticated so that every
    caller that handles a credential problem handles this one too."""

    default_reason = "PERMISSION_DENIED"


class InternalError(RingkvError):
    """A bug or an unexpected failure on the serving node."""

    default_reason = "INTERNAL"
