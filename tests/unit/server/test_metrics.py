"""The node's metrics: the scrape-time collector, request observation in the
rpc layer, leaf counting in repairs, and the /metrics HTTP endpoint."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import socket
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any, cast

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ringkv.api import kv_pb2
from ringkv.core.errors import PreconditionFailed
from ringkv.core.hlc import HybridLogicalClock, Version
from ringkv.core.membership import Liveness, Member, Membership, MemberStatus, RingMaker
from ringkv.core.records import Mutation, Record
from ringkv.server.cluster.cluster_view import ClusterView
from ringkv.server.config import HostPort
from ringkv.server.counters import Counters
from ringkv.server.data.anti_entropy import AntiEntropy, PeerRepair, RepairReport, RepairSchedule
from ringkv.server.data.rebalance import Progress, Rebalancer
from ringkv.server.services.metrics import (
    MetricsServer,
    NodeCollector,
    NodeMetrics,
    bind,
)
from ringkv.server.transport import rpc
from ringkv.server.transport.peers import Peer
from ringkv.storage.memory import MemoryEngine

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    """Every sample of an exposition, by name and sorted labels."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(found: Samples, name: str, **labels: str) -> float:
    return found[name, tuple(sorted(labels.items()))]


class FakeMembership:
    def __init__(self) -> None:
        self.synced_epoch = 6


class FakeRebalancer:
    def __init__(self, progress: Progress) -> None:
        self.progress = progress


def test_the_collector_reads_counters_view_storage_and_pulls_when_scraped() -> None:
    async def scenario() -> tuple[Samples, Samples]:
        clock = HybridLogicalClock("a")

        def open_peer(node_id: str, address: str) -> Peer:
            return Peer(node_id, address, clock, 1.0)

        table = Membership(
            7,
            (
                Member("a", "127.0.0.1:1"),
                Member("b", "127.0.0.1:2"),
                Member("c", "127.0.0.1:3", MemberStatus.LEAVING),
                Member("d", "127.0.0.1:4", MemberStatus.JOINING),
            ),
            term=3,
        )
        view = ClusterView("a", table, 2, RingMaker(8), open_peer)
        view.leader_id, view.term = "a", 3
        view.liveness = {"b": Liveness.SUSPECT, "c": Liveness.DEAD}  # d: alive, as unknown
        view.peers["b"].alive = False
        engine = MemoryEngine()
        engine.apply(
            [
                Mutation(Record(b"k1", b"v1", Version(1, "a"))),
                Mutation(Record(b"k2", b"v2", Version(2, "a"))),
                Mutation(Record(b"k3", b"v3", Version(3, "a")), hint_for="b"),
            ]
        )
        counters = Counters(forwarded_writes=5, read_repairs=2, leaves_differing=9)
        counters.replica_error("b", "write")
        counters.replica_error("b", "write")
        counters.replica_error("c", "read")
        rebalancer = FakeRebalancer(Progress())
        collector = NodeCollector(
            view, engine, counters, FakeMembership(), rebalancer=cast(Rebalancer, rebalancer)
        )
        metrics = NodeMetrics(collector, process=False)
        first = samples(metrics.exposition()[0].decode())
        # Nothing is copied: the next scrape sees the objects as they are then.
        counters.forwarded_writes += 1
        view.leader_id = "d"
        rebalancer.progress = Progress(7, 12, 5, 300)
        second = samples(metrics.exposition()[0].decode())
        await view.close()
        return first, second

    first, second = asyncio.run(scenario())

    assert value(first, "ringkv_forwarded_writes_total") == 5
    assert value(first, "ringkv_read_repairs_total") == 2
    assert value(first, "ringkv_anti_entropy_leaves_differing_total") == 9
    assert value(first, "ringkv_hints_replayed_total") == 0
    assert value(first, "ringkv_replica_errors_total", peer="b", call="write") == 2
    assert value(first, "ringkv_replica_errors_total", peer="c", call="read") == 1
    assert value(first, "ringkv_node_info", node_id="a") == 1
    assert value(first, "ringkv_ring_epoch") == 7
    assert value(first, "ringkv_synced_epoch") == 6
    assert value(first, "ringkv_leader_term") == 3
    assert value(first, "ringkv_is_leader") == 1
    assert value(first, "ringkv_members", state="alive", status="normal") == 1
    assert value(first, "ringkv_members", state="suspect", status="normal") == 1
    assert value(first, "ringkv_members", state="dead", status="leaving") == 1
    assert value(first, "ringkv_members", state="alive", status="joining") == 1
    assert value(first, "ringkv_members", state="dead", status="normal") == 0
    assert value(first, "ringkv_peer_up", peer="b") == 0
    assert value(first, "ringkv_peer_up", peer="c") == 1
    assert value(first, "ringkv_storage_records") == 2
    assert value(first, "ringkv_storage_bytes") == len(b"k1v1k2v2")
    assert value(first, "ringkv_hints_pending") == 1
    assert value(first, "ringkv_ranges_to_pull") == 0

    assert value(second, "ringkv_forwarded_writes_total") == 6
    assert value(second, "ringkv_is_leader") == 0
    assert value(second, "ringkv_ranges_to_pull") == 12
    assert value(second, "ringkv_ranges_pulled") == 5
    assert value(second, "ringkv_records_pulled") == 300


def test_observed_requests_count_and_land_in_their_latency_bucket() -> None:
    metrics = NodeMetrics(process=False)
    ok, unavailable = grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE
    metrics.requests.observe("kv.KeyValue", "Get", "quorum", ok, 0.0003)
    metrics.requests.observe("kv.KeyValue", "Get", "quorum", ok, 0.002)
    metrics.requests.observe("kv.KeyValue", "Get", "one", unavailable, 0.00005)

    found = samples(metrics.exposition()[0].decode())

    get = {"service": "kv.KeyValue", "method": "Get", "level": "quorum", "code": "OK"}
    assert value(found, "ringkv_requests_total", **get) == 2
    assert value(found, "ringkv_request_duration_seconds_count", **get) == 2
    assert value(found, "ringkv_request_duration_seconds_bucket", **get, le="0.00025") == 0
    assert value(found, "ringkv_request_duration_seconds_bucket", **get, le="0.0005") == 1
    assert value(found, "ringkv_request_duration_seconds_bucket", **get, le="0.0025") == 2
    assert value(found, "ringkv_request_duration_seconds_sum", **get) == pytest.approx(0.0023)
    failed = {"service": "kv.KeyValue", "method": "Get", "level": "one", "code": "UNAVAILABLE"}
    assert value(found, "ringkv_requests_total", **failed) == 1


class Probe:
    """A service whose methods succeed, fail, or crash, at a level named in the request."""

    name = "test.Probe"

    def methods(self) -> dict[str, rpc.Method]:
        def level(request: kv_pb2.GetRequest) -> str:
            # Fails for other levels: a label that cannot be worked out is empty.
            return {0: "quorum", 1: "one"}[request.consistency]

        return {
            "Ok": rpc.Method(kv_pb2.GetRequest, self.ok, level),
            "Refuse": rpc.Method(kv_pb2.GetRequest, self.refuse, level),
            "Crash": rpc.Method(kv_pb2.GetRequest, self.crash),
        }

    async def ok(self, _request: Any, _context: rpc.Context) -> kv_pb2.GetResponse:
        return kv_pb2.GetResponse(found=True)

    async def refuse(self, _request: Any, _context: rpc.Context) -> kv_pb2.GetResponse:
        raise PreconditionFailed("no")

    async def crash(self, _request: Any, _context: rpc.Context) -> kv_pb2.GetResponse:
        raise RuntimeError("bug")


def test_the_rpc_layer_reports_every_call_with_its_level_and_code() -> None:
    seen: list[tuple[str, str, str, grpc.StatusCode]] = []

    def observe(
        service: str, method: str, level: str, code: grpc.StatusCode, seconds: float
    ) -> None:
        assert 0 <= seconds < 10
        seen.append((service, method, level, code))

    async def scenario() -> None:
        server = grpc.aio.server()
        port = server.add_insecure_port("127.0.0.1:0")
        gate = rpc.Gate()
        server.add_generic_rpc_handlers([rpc.generic_handler(Probe(), gate, observe)])
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:

                async def call(method: str, raw: bytes) -> None:
                    raw_call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
                        f"/test.Probe/{method}"
                    )
                    with contextlib.suppress(grpc.aio.AioRpcError):
                        await raw_call(raw, timeout=5)

                await call(
                    "Ok",
                    kv_pb2.GetRequest(
                        key="k", consistency=kv_pb2.CONSISTENCY_ONE
                    ).SerializeToString(),
                )
                await call("Ok", b"")
                await call("Refuse", b"")
                await call("Crash", b"")
                await call("Ok", b"\xff\xff")  # not a message: no level
                await call(
                    "Ok", kv_pb2.GetRequest(consistency=kv_pb2.CONSISTENCY_ALL).SerializeToString()
                )
                await gate.drain(0.0, quiet_s=0.0)
                await call("Ok", b"")  # refused by the closed gate
        finally:
            await server.stop(None)

    asyncio.run(scenario())

    code = grpc.StatusCode
    assert seen == [
        ("test.Probe", "Ok", "one", code.OK),
        ("test.Probe", "Ok", "quorum", code.OK),
        ("test.Probe", "Refuse", "quorum", code.FAILED_PRECONDITION),
        ("test.Probe", "Crash", "", code.INTERNAL),
        ("test.Probe", "Ok", "", code.INVALID_ARGUMENT),
        ("test.Probe", "Ok", "", code.OK),
        ("test.Probe", "Ok", "", code.UNAVAILABLE),
    ]


class FakeAntiEntropy:
    def __init__(self, report: RepairReport) -> None:
        self.report = report

    async def run_round(self) -> RepairReport:
        return self.report

    async def purge_expired_tombstones(self) -> int:
        return 2


def test_repairs_count_the_leaves_they_found_differing() -> None:
    report = RepairReport(
        (PeerRepair("b", 3, 10, 4), PeerRepair("c", 0, 0, 0), PeerRepair("d", 5, 1, 1)), (), ()
    )
    counters = Counters()
    schedule = RepairSchedule(cast(AntiEntropy, FakeAntiEntropy(report)), counters, interval_s=0)

    async def twice() -> None:
        await schedule.run()
        await schedule.run()

    asyncio.run(twice())

    assert counters.leaves_differing == 16
    assert counters.repair_rounds == 2
    assert counters.keys_repaired == 32
    assert counters.tombstones_purged == 4


def fetch(
    url: str, *, method: str = "GET", headers: Mapping[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of one HTTP request, errors included."""
    request = urllib.request.Request(url, method=method, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def test_the_endpoint_serves_metrics_only_at_metrics_and_stops_when_closed() -> None:
    metrics = NodeMetrics(process=False)
    metrics.requests.observe("kv.KeyValue", "Ping", "", grpc.StatusCode.OK, 0.001)

    async def scenario() -> tuple[list[tuple[int, dict[str, str], bytes]], int]:
        sock = bind(HostPort("127.0.0.1", 0))
        server = MetricsServer(metrics)
        await server.start(sock)
        base = f"http://127.0.0.1:{server.port}"
        answers = [
            await asyncio.to_thread(fetch, base + "/metrics"),
            await asyncio.to_thread(fetch, base + "/metrics?name[]=x", method="HEAD"),
            await asyncio.to_thread(fetch, base + "/metrics", headers={"Accept-Encoding": "gzip"}),
            await asyncio.to_thread(
                fetch,
                base + "/metrics",
                headers={"Accept": "application/openmetrics-text; version=1.0.0"},
            ),
            await asyncio.to_thread(fetch, base + "/"),
            await asyncio.to_thread(fetch, base + "/metrics", method="POST"),
        ]
        port = server.port
        await server.close()
        sock.close()
        return answers, port

    answers, port = asyncio.run(scenario())

    (status, headers, body), head, zipped, openmetrics, missing, post = answers
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = body.decode()
    assert 'ringkv_requests_total{code="OK",level="",method="Ping",service="kv.KeyValue"} 1.0' in (
        text
    )
    assert head[0] == 200
    assert head[2] == b""
    assert int(head[1]["Content-Length"]) == len(body)
    assert zipped[1]["Content-Encoding"] == "gzip"
    assert gzip.decompress(zipped[2]) == body
    assert openmetrics[1]["Content-Type"].startswith("application/openmetrics-text")
    assert openmetrics[2].endswith(b"# EOF\n")
    assert missing[0] == 404
    assert post[0] == 405
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port)):
        pass


def test_a_taken_metrics_port_is_refused_with_the_reason() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(Exception, match=f"cannot listen on metrics address 127.0.0.1:{port}"):
            bind(HostPort("127.0.0.1", port))
