"""The SDK's side of a watch: news only, where to resume, when to reconnect."""

from __future__ import annotations

import random
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from ringkv.api import kv_pb2
from ringkv.api.headers import STATUS_DETAILS
from ringkv.client.watching import WatchState
from ringkv.core import errors
from ringkv.core.watch import RESUME_MARGIN


class FailedCall(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, reason: str = "") -> None:
        self._code, self._reason = code, reason

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return f"failed with {self._code.name}"

    def trailing_metadata(self) -> Any:
        if not self._reason:
            return ()
        status = status_pb2.Status(code=self._code.value[0])
        status.details.add().Pack(error_details_pb2.ErrorInfo(reason=self._reason))
        return ((STATUS_DETAILS, status.SerializeToString()),)


def event(
    key: str, version: int, kind: kv_pb2.EventKind.ValueType = kv_pb2.EVENT_PUT
) -> kv_pb2.WatchEvent:
    return kv_pb2.WatchEvent(key=key, value=b"v", version=version, kind=kind)


def test_what_a_reconnect_sends_again_is_dropped() -> None:
    state = WatchState("p/", 0, 30.0, random.Random(1))
    assert state.request().from_version == 0
    assert state.events(kv_pb2.WatchResponse(resume_version=100)) == []
    assert state.request().from_version == 100
    first = state.events(
        kv_pb2.WatchResponse(events=[event("p/a", 120), event("p/b", 130, kv_pb2.EVENT_DELETE)])
    )
    assert [(e.key, e.kind, e.version) for e in first] == [
        ("p/a", "put", 120),
        ("p/b", "delete", 130),
    ]
    # A new stream from 100 sends both again, then news.
    again = state.events(
        kv_pb2.WatchResponse(events=[event("p/a", 120), event("p/b", 130), event("p/a", 140)])
    )
    assert [(e.key, e.version) for e in again] == [("p/a", 140)]


def test_a_broken_stream_is_resumed_for_a_while_and_a_bad_one_never() -> None:
    state = WatchState("", 0, 10.0, random.Random(1))
    assert 0 <= state.failed(FailedCall(grpc.StatusCode.UNAVAILABLE), now=0.0) <= 1.0
    assert 0 <= state.failed(FailedCall(grpc.StatusCode.CANCELLED), now=5.0) <= 1.0
    with pytest.raises(errors.Unavailable):
        state.failed(FailedCall(grpc.StatusCode.UNAVAILABLE), now=10.5)
    state.events(kv_pb2.WatchResponse())  # an answer: failing starts over
    assert state.failed(FailedCall(grpc.StatusCode.UNAVAILABLE), now=11.0) >= 0
    with pytest.raises(errors.Compacted):
        state.failed(FailedCall(grpc.StatusCode.FAILED_PRECONDITION, "COMPACTED"), now=11.0)
    with pytest.raises(errors.InvalidArgument):
        state.failed(FailedCall(grpc.StatusCode.INVALID_ARGUMENT), now=11.0)


def test_only_the_last_event_of_an_answer_carries_its_new_resume_version() -> None:
    state = WatchState("", 0, 30.0, random.Random(1))
    state.events(kv_pb2.WatchResponse(resume_version=100))
    news = state.events(
        kv_pb2.WatchResponse(events=[event("a", 110), event("b", 105)], resume_version=150)
    )
    # Saved after "a" alone, 150 would skip "b": it still says 100.
    assert [e.resume_version for e in news] == [100, 150]


def test_a_reconnect_starts_a_margin_below_the_resume_version_never_below_the_start() -> None:
    margin = RESUME_MARGIN
    state = WatchState("", 0, 30.0, random.Random(1))
    assert state.request().from_version == 0  # from now: the node says where
    state.events(kv_pb2.WatchResponse(resume_version=10 * margin))
    assert state.request().from_version == 10 * margin  # not before the start
    state.events(kv_pb2.WatchResponse(resume_version=13 * margin))
    # A change that reached a replica late, just below the resume version,
    # is still news: the next stream starts a margin below it.
    assert state.request().from_version == 12 * margin


def test_silence_counts_as_a_failure_toward_giving_up() -> None:
    state = WatchState("", 0, 10.0, random.Random(1))
    assert 0 <= state.stalled(now=0.0) <= 1.0
    with pytest.raises(errors.Unavailable, match=r"10\.0 s"):
        state.stalled(now=10.5)
