"""Memory bounded before work, against a real node: a message longer than a
node's limit (derived from ``--max-value-bytes`` and the batch bytes) is
refused from its length prefix, and an answer that would outgrow a message is
refused before it is built."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from ringkv.api import kv_pb2, kv_pb2_grpc
from ringkv.api.status import error_info
from ringkv.core.validation import Limits
from tests.support.metrics import METRICS, scrape
from tests.support.nodes import NodeFactory, NodeProcess
from tests.support.slow_reader import SlowReader

FAST = ("--engine", "memory")
MIB = 1 << 20


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS line")


def refusal(call: grpc.UnaryUnaryMultiCallable, request: object) -> tuple[grpc.StatusCode, str]:  # type: ignore[type-arg]
    with pytest.raises(grpc.RpcError) as refused:
        call(request, timeout=60)
    info = error_info(refused.value.trailing_metadata())
    return refused.value.code(), info.reason if info is not None else ""


def test_a_200_mib_request_is_refused_without_buffering_it(nodes: NodeFactory) -> None:
    node = nodes("node1", *FAST)
    assert node.process is not None
    options = [("grpc.max_send_message_length", 256 * MIB)]
    with grpc.insecure_channel(node.address, options=options) as channel:
        stub = kv_pb2_grpc.KeyValueStub(channel)
        stub.Set(kv_pb2.SetRequest(key="warm", value=b"x"), timeout=10)
        before = rss_bytes(node.process.pid)
        huge = kv_pb2.SetRequest(key="huge", value=b"\0" * (200 * MIB))
        many = kv_pb2.MultiSetRequest(
            entries=[kv_pb2.SetRequest(key=f"k{i}", value=b"\0" * MIB) for i in range(40)]
        )
        for request, call in ((huge, stub.Set), (many, stub.MultiSet)):
            code, _ = refusal(call, request)
            assert code is grpc.StatusCode.RESOURCE_EXHAUSTED
        grew = rss_bytes(node.process.pid) - before
        assert grew < 100 * MIB, f"RSS grew by {grew / MIB:.0f} MiB"
        # Nothing of either was stored, and the node serves on.
        assert not stub.Get(kv_pb2.GetRequest(key="huge"), timeout=10).found
        assert not stub.Get(kv_pb2.GetRequest(key="k0"), timeout=10).found
        # A MultiSet within the limit is served.
        fits = kv_pb2.MultiSetRequest(
            entries=[kv_pb2.SetRequest(key=f"k{i}", value=b"\1" * MIB) for i in range(8)]
        )
        stub.MultiSet(fits, timeout=30)


def test_an_answer_over_a_message_is_refused_and_repeated_keys_are_read_once(
    nodes: NodeFactory,
) -> None:
    node = nodes("node1", *FAST)
    limit = Limits().message_bytes
    options = [("grpc.max_receive_message_length", limit)]
    with grpc.insecure_channel(node.address, options=options) as channel:
        stub = kv_pb2_grpc.KeyValueStub(channel)
        stub.Set(kv_pb2.SetRequest(key="big", value=b"v" * MIB), timeout=10)
        # 255 copies of a 1 MiB value would be a 255 MiB answer.
        code, reason = refusal(stub.MultiGet, kv_pb2.MultiGetRequest(keys=["big"] * 255))
        assert (code, reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "RESPONSE_TOO_LARGE")
        # Within the limit, every key asked for is answered, repeats included.
        count = limit // MIB - 1
        answer = stub.MultiGet(kv_pb2.MultiGetRequest(keys=["big"] * count + ["none"]), timeout=30)
        assert [r.found for r in answer.results] == [True] * count + [False]
        assert {r.value for r in answer.results[:count]} == {b"v" * MIB}


def test_answers_a_slow_reader_leaves_unread_are_bounded(nodes: NodeFactory) -> None:
    """Issue 13: slow readers pinned 2 GB of answers with no server deadline."""
    node = nodes("node1", *FAST, *METRICS, "--max-unsent-answer-mib", "1")
    get_big = kv_pb2.GetRequest(key="big")
    with grpc.insecure_channel(node.address) as channel, contextlib.ExitStack() as readers:
        stub = kv_pb2_grpc.KeyValueStub(channel)
        stub.Set(kv_pb2.SetRequest(key="big", value=b"v" * (MIB // 2)), timeout=10)
        # Each answer is half a MiB the node cannot send. One connection may
        # hold a quarter of the budget: past its first answer, its own calls
        # are refused, and the others are served.
        first = readers.enter_context(SlowReader(node.address))
        first.call("/kv.KeyValue/Get", get_big)
        assert wait_until(lambda: unsent(node) >= MIB // 2)
        for _ in range(3):
            first.call("/kv.KeyValue/Get", get_big)
        assert stub.Get(get_big, timeout=10).found
        # The three calls after its first were refused: once the answer just
        # read is counted out, only the first one is held.
        assert wait_until(lambda: unsent(node) < MIB)
        # Three such connections pass the budget: the node refuses new calls
        # rather than hold more.
        for _ in range(2):
            readers.enter_context(SlowReader(node.address)).call("/kv.KeyValue/Get", get_big)
        code, reason = wait_for_refusal(stub)
        assert (code, reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "OVERLOADED")
        readers.close()
        # The readers gone, their answers are dropped and the node serves again.
        assert wait_until(lambda: stub.Get(get_big, timeout=10).found)
        assert wait_until(lambda: unsent(node) == 0)


def test_an_answer_not_read_in_time_ends_its_call_and_frees_it(nodes: NodeFactory) -> None:
    """Issue 13: a server-side deadline for slow readers. A caller that reads
    nothing holds its answer only until ``--answer-send-timeout``; then the
    call ends DEADLINE_EXCEEDED and the node holds nothing for it, though the
    caller is still connected. The metrics count the answer given up."""
    node = nodes("node1", *FAST, *METRICS, "--answer-send-timeout", "1")
    get_big = kv_pb2.GetRequest(key="big")
    with grpc.insecure_channel(node.address) as channel, SlowReader(node.address) as reader:
        stub = kv_pb2_grpc.KeyValueStub(channel)
        stub.Set(kv_pb2.SetRequest(key="big", value=b"v" * (MIB // 2)), timeout=10)
        # Present from the start (``get`` would read an absent one as 0).
        assert scrape(node).samples[("ringkv_answers_not_read_total", ())] == 0
        reader.call("/kv.KeyValue/Get", get_big)
        assert wait_until(lambda: unsent(node) >= MIB // 2)
        assert wait_until(lambda: unsent(node) == 0)
        assert scrape(node).get("ringkv_answers_not_read_total") == 1
        assert any(
            e.get("msg") == "an answer was not read in time; the call is ended"
            for e in node.events()
        )
        # A caller that reads is answered as ever.
        assert stub.Get(get_big, timeout=10).value == b"v" * (MIB // 2)


def unsent(node: NodeProcess) -> float:
    """Bytes of answers the node holds for callers that have not read them."""
    return scrape(node).get("ringkv_unsent_answer_bytes")


def wait_for_refusal(stub: kv_pb2_grpc.KeyValueStub) -> tuple[grpc.StatusCode, str]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            stub.Ping(kv_pb2.PingRequest(), timeout=10)
        except grpc.RpcError as refused:
            info = error_info(refused.trailing_metadata())
            return refused.code(), info.reason if info is not None else ""
        time.sleep(0.05)
    raise AssertionError("the node kept accepting calls with its answer budget spent")


def wait_until(condition: Callable[[], bool], timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if condition():
                return True
        except grpc.RpcError:
            pass
        time.sleep(0.05)
    return False
