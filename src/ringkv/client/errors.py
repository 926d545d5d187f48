"""The one table that maps gRPC status codes back to ringkv's typed errors."""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2

from ringkv.api.status import error_info
from ringkv.core import errors

ERROR_CLASSES: dict[grpc.StatusCode, type[errors.RingkvError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidArgument,
    grpc.StatusCode.NOT_FOUND: errors.NotFound,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.ResourceExhausted,
    grpc.StatusCode.FAILED_PRECONDITION: errors.PreconditionFailed,
    grpc.StatusCode.UNAVAILABLE: errors.Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: errors.DeadlineExceeded,
    grpc.StatusCode.UNAUTHENTICATED: errors.Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: errors.PermissionDenied,
    grpc.StatusCode.INTERNAL: errors.InternalError,
}

# A reason names a subclass more precise than the status code alone
# (RESOURCE_EXHAUSTED is a value too large, or a full disk).
REASON_CLASSES: dict[str, type[errors.RingkvError]] = {
    cls.default_reason: cls
    for cls in (
        errors.ValueTooLarge,
        errors.StorageFull,
        errors.Overloaded,
        errors.Compacted,
        errors.WatchDisabled,
    )
}


_TOO_LARGE_TO_SEND = "Sent message larger than max"
"""grpc's own words for a request over the channel's limit, refused before it is sent."""


def from_rpc_error(error: grpc.RpcError) -> errors.RingkvError:
    """The typed error for a failed call, with the server's reason and metadata."""
    code: grpc.StatusCode = error.code()
    message: str = error.details() or code.name
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED and message.startswith(
        f"CLIENT: {_TOO_LARGE_TO_SEND}"
    ):
        # Refused by this client's channel, not by a node: no node said why.
        return errors.ValueTooLarge(
            f"the request is larger than a node takes ({message.removeprefix('CLIENT: ')}); "
            "a value is limited by the nodes' --max-value-bytes, a batch's values together "
            "to 16 MiB"
        )
    info = error_info(error.trailing_metadata()) or error_details_pb2.ErrorInfo()
    cls = REASON_CLASSES.get(info.reason) or ERROR_CLASSES.get(code, errors.RingkvError)
    return cls(message, reason=info.reason or code.name, metadata=dict(info.metadata))
