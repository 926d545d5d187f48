"""Reading the google.rpc.Status that ringkv errors carry in their trailers."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2

from ringkv.api.headers import STATUS_DETAILS


def error_info(trailing_metadata: Iterable[Any] | None) -> error_details_pb2.ErrorInfo | None:
    """The ErrorInfo in an error's status details, or None if it carries none."""
    for key, value in trailing_metadata or ():
        if key != STATUS_DETAILS:
            continue
        try:
            status = status_pb2.Status.FromString(bytes(value))
        except DecodeError:
            return None
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info):
                return info
    return None
