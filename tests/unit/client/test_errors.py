"""The SDK's mapping of failed calls to typed errors."""

from __future__ import annotations

import grpc

from ringkv.client.errors import from_rpc_error
from ringkv.core import errors


class FailedCall(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple[()]:
        return ()


def test_a_request_the_channel_refuses_to_send_is_a_value_too_large() -> None:
    refused = FailedCall(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "CLIENT: Sent message larger than max (120000010 vs. 83955712)",
    )
    error = from_rpc_error(refused)
    assert isinstance(error, errors.ValueTooLarge)
    assert error.reason == "VALUE_TOO_LARGE"
    assert "120000010 vs. 83955712" in error.message


def test_a_node_that_is_overloaded_stays_overloaded() -> None:
    error = from_rpc_error(FailedCall(grpc.StatusCode.RESOURCE_EXHAUSTED, "busy"))
    assert type(error) is errors.ResourceExhausted


def test_a_node_that_could_not_send_its_answer_is_not_blamed_on_the_value() -> None:
    refused = FailedCall(
        grpc.StatusCode.RESOURCE_EXHAUSTED, "Sent message larger than max (9 vs. 8)"
    )
    assert type(from_rpc_error(refused)) is errors.ResourceExhausted
