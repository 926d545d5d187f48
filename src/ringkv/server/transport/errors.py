"""The one table that maps domain errors to gRPC status codes, and its use."""

from __future__ import annotations

from typing import NoReturn

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from ringkv.api.headers import STATUS_DETAILS
from ringkv.core.errors import (
    DeadlineExceeded,
    InternalError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    PreconditionFailed,
    ResourceExhausted,
    RingkvError,
    Unauthenticated,
    Unavailable,
)

ERROR_DOMAIN = "ringkv"

STATUS_CODES: dict[type[RingkvError], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    PreconditionFailed: grpc.StatusCode.FAILED_PRECONDITION,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    InternalError: grpc.StatusCode.INTERNAL,
}


def status_code(error: RingkvError) -> grpc.StatusCode:
    """The status code of a domain error (its nearest mapped class decides)."""
    for cls in type(error).__mro__:
        if cls in STATUS_CODES:
            return STATUS_CODES[cls]
    return grpc.StatusCode.INTERNAL


def status_details(error: RingkvError, code: grpc.StatusCode) -> bytes:
    """A serialized google.rpc.Status carrying the error's ErrorInfo."""
    info = error_details_pb2.ErrorInfo(
        reason=error.reason, domain=ERROR_DOMAIN, metadata=error.metadata
    )
    detail = any_pb2.Any()
    detail.Pack(info)
    status = status_pb2.Status(code=code.value[0], message=error.message, details=[detail])
    return status.SerializeToString()


async def abort_with(
    context: grpc.aio.ServicerContext[object, object], error: RingkvError
) -> NoReturn:
    """End the call with the error's status code, message and details."""
    code = status_code(error)
    await context.abort(
        code,
        error.message,
        trailing_metadata=((STATUS_DETAILS, status_details(error, code)),),
    )
    raise AssertionError("context.abort returned")  # pragma: no cover
