"""``--metrics-addr``: real node processes scraped over real HTTP.

Each node binds its metrics port with port 0 and reports it in the "serving"
log event (``metrics_port``), so no test races for a free port. Request
metrics must move by exactly the calls a test makes; the gauges must agree
with what the node says over gRPC (GetClusterState, GetNodeStats).
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

import ringkv
from ringkv.api import kv_pb2, kv_pb2_grpc
from ringkv.client.admin import cluster_state, node_stats, repair
from ringkv.core import merkle
from ringkv.core.errors import PreconditionFailed
from ringkv.core.hlc import HybridLogicalClock
from ringkv.core.merkle import DEFAULT_DEPTH
from ringkv.core.records import Record
from ringkv.core.ring import TOKEN_SPACE
from ringkv.server.transport.peers import Peer
from tests.support.metrics import METRICS, metrics_port, scrape
from tests.support.nodes import (
    ClusterFactory,
    NodeFactory,
    NodeProcess,
    child_env,
    wait_for,
    wait_for_leader,
)

QUICK_EXIT_S = 20.0


def kv(method: str, level: str, code: str = "OK") -> dict[str, str]:
    return {"service": "kv.KeyValue", "method": method, "level": level, "code": code}


@pytest.fixture
def stub(nodes: NodeFactory) -> Iterator[tuple[NodeProcess, kv_pb2_grpc.KeyValueStub]]:
    node = nodes("node1", *METRICS)
    with grpc.insecure_channel(node.address) as channel:
        yield node, kv_pb2_grpc.KeyValueStub(channel)


def test_requests_are_counted_and_timed_by_method_level_and_code(
    stub: tuple[NodeProcess, kv_pb2_grpc.KeyValueStub],
) -> None:
    node, raw = stub
    before = scrape(node)
    with ringkv.Client(node.address, token_aware=False) as client:
        for i in range(3):
            client.set(f"k{i}", b"v")
        first = client.set("one", b"v", consistency="one")
        client.set("one", b"w", consistency="one")
        client.get("k0", consistency="all")
        client.get("k1")
        client.get("absent")
        client.get("k2", consistency="linearizable")
        client.delete("k0")
        with pytest.raises(PreconditionFailed):
            client.set("one", b"x", if_version=first)
        client.set_many({"m1": b"1", "m2": b"2", "m3": b"3"}, consistency="all")
        client.get_many(["m1", "m2", "nope"])
        client.ping()
        client.ping()
    raw.Replicate(kv_pb2.ReplicateRequest(key="r", value=b"v"), timeout=5)
    for request in (
        kv_pb2.GetRequest(key=""),  # invalid at a valid level
        kv_pb2.GetRequest(key="k", consistency=99),  # type: ignore[arg-type]
    ):
        with pytest.raises(grpc.RpcError) as error:
            raw.Get(request, timeout=5)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    after = scrape(node)

    expected = {
        ("Set", "quorum", "OK"): 3,
        ("Set", "one", "OK"): 2,
        ("Set", "quorum", "FAILED_PRECONDITION"): 1,
        ("Get", "all", "OK"): 1,
        ("Get", "quorum", "OK"): 2,
        ("Get", "linearizable", "OK"): 1,
        ("Get", "quorum", "INVALID_ARGUMENT"): 1,
        ("Get", "", "INVALID_ARGUMENT"): 1,
        ("Delete", "quorum", "OK"): 1,
        ("MultiSet", "all", "OK"): 1,
        ("MultiGet", "quorum", "OK"): 1,
        ("Ping", "", "OK"): 2,
        ("Replicate", "quorum", "OK"): 1,
    }
    moved = {}
    for (name, sample_labels), value in after.samples.items():
        label = dict(sample_labels)
        if name == "ringkv_requests_total" and label["service"] == "kv.KeyValue":
            delta = value - before.get(name, **label)
            if delta:
                moved[label["method"], label["level"], label["code"]] = delta
    assert moved == expected
    histogram = "ringkv_request_duration_seconds"
    for (method, level, code), count in expected.items():
        labels = kv(method, level, code)
        calls = after.get(f"{histogram}_count", **labels)
        assert calls - before.get(f"{histogram}_count", **labels) == count, (method, level, code)
        assert after.get(f"{histogram}_bucket", **labels, le="+Inf") == calls
        assert after.get(f"{histogram}_sum", **labels) > before.get(f"{histogram}_sum", **labels)

    # The storage gauges are the engine's own numbers.
    def storage_agrees() -> bool:
        stats, scraped = node_stats(node.address), scrape(node)
        return (
            scraped.get("ringkv_storage_records") == stats.records
            and scraped.get("ringkv_storage_bytes") == stats.bytes_used
            and scraped.get("ringkv_hints_pending") == stats.hints_pending
        )

    wait_for(storage_agrees, timeout=10, what="storage gauges to match GetNodeStats")
    assert node_stats(node.address).records >= 8

    # The endpoint stops with the node.
    port = metrics_port(node)
    assert node.stop() == 0, node.log_text()
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port)):
        pass


def test_metrics_are_off_unless_asked_for(nodes: NodeFactory) -> None:
    node = nodes("node1")
    serving = next(e for e in node.events() if e.get("msg") == "serving")
    assert serving["metrics_port"] is None


def test_cluster_gauges_follow_the_cluster_and_repairs_are_counted(
    cluster: ClusterFactory,
) -> None:
    # Hints are never handed off here, so the node that was down stays
    # behind until anti-entropy repairs it.
    members = cluster(3, *METRICS, "--hint-replay-interval", "3600")
    node1, node2, node3 = members
    leader, _ = wait_for_leader(members)
    assert leader == "node3"

    def gauges_agree(node: NodeProcess) -> Callable[[], bool]:
        def agree() -> bool:
            state, stats, scraped = (
                cluster_state(node.address),
                node_stats(node.address),
                scrape(node),
            )
            alive = sum(1 for m in state.members if m.state == "alive" and m.status == "normal")
            return (
                scraped.get("ringkv_ring_epoch") == state.epoch
                and scraped.get("ringkv_leader_term") == state.term
                and scraped.get("ringkv_is_leader") == (state.leader_id == node.node_id)
                and scraped.get("ringkv_members", state="alive", status="normal") == alive == 3
                and scraped.get("ringkv_synced_epoch") == stats.synced_epoch
                and scraped.get("ringkv_storage_records") == stats.records
                and scraped.get("ringkv_storage_bytes") == stats.bytes_used
                and scraped.get("ringkv_node_info", node_id=node.node_id) == 1
                and all(
                    scraped.get("ringkv_peer_up", peer=other.node_id) == 1
                    for other in members
                    if other is not node
                )
            )

        return agree

    for node in members:
        wait_for(gauges_agree(node), timeout=20, what=f"{node.node_id}'s gauges to match")

    # Writes sent to node1 that another node owns are forwarded: node1 counts
    # each write and each forward, the owner a Forward/Write on the member
    # link, or a Forward/Writes gRPC call before node1 has found the owner's
    # link (one per write here: each is sent when the one before it is answered).
    before = [scrape(node) for node in members]
    forwarded_before = node_stats(node1.address).forwarded_writes
    keys = [f"fw{i}" for i in range(20)]
    with ringkv.Client(node1.address, token_aware=False) as client:
        for key in keys:
            client.set(key, b"v", consistency="all")
    after = [scrape(node) for node in members]
    forwarded = after[0].get("ringkv_forwarded_writes_total") - before[0].get(
        "ringkv_forwarded_writes_total"
    )
    assert forwarded == node_stats(node1.address).forwarded_writes - forwarded_before
    assert 0 < forwarded < len(keys)
    sets = [
        a.get("ringkv_requests_total", **kv("Set", "all"))
        - b.get("ringkv_requests_total", **kv("Set", "all"))
        for a, b in zip(after, before, strict=True)
    ]
    assert sets == [len(keys), 0, 0]

    def forward_calls(method: str) -> list[float]:
        labels = {"service": "ringkv.internal.Forward", "method": method, "level": ""}
        return [
            a.get("ringkv_requests_total", **labels, code="OK")
            - b.get("ringkv_requests_total", **labels, code="OK")
            for a, b in zip(after, before, strict=True)
        ]

    batches, linked = forward_calls("Writes"), forward_calls("Write")
    assert batches[0] == linked[0] == 0
    assert sum(batches) + sum(linked) == forwarded
    assert sum(linked) > 0

    # node2 dies: the leader's detector counts it dead, writes to it fail and
    # leave hints behind.
    # (Writes go first: once the leader counts node2 dead nobody calls it.)
    node2.kill()
    with ringkv.Client(node1.address, token_aware=False) as client:
        for i in range(10):
            client.set(f"missed{i}", b"v", consistency="one")
    wait_for(
        lambda: scrape(node3).get("ringkv_members", state="dead", status="normal") == 1,
        timeout=20,
        what="the leader to count node2 dead",
    )
    survivors = [node1, node3]
    scrapes = [scrape(node) for node in survivors]
    assert sum(s.total("ringkv_replica_errors_total", peer="node2") for s in scrapes) >= 1
    assert any(s.get("ringkv_peer_up", peer="node2") == 0 for s in scrapes)
    for node in survivors:
        wait_for(
            lambda node=node: (
                scrape(node).get("ringkv_hints_pending")  # type: ignore[misc]
                == node_stats(node.address).hints_pending
            ),
            timeout=10,
            what=f"{node.node_id}'s hints gauge to match GetNodeStats",
        )
    # Not one per write: a replica call that fails after the level was met
    # (the first to find node2 down, on each coordinator) leaves no hint.
    assert sum(scrape(node).get("ringkv_hints_pending") for node in survivors) >= 1

    # node2 comes back without the writes it missed; a repair on node1 finds
    # and fixes the difference, and the metrics say exactly what it did.
    node2.start()
    wait_for(
        lambda: (
            scrape(node1).get("ringkv_peer_up", peer="node2") == 1
            and {m.node_id: m.state for m in cluster_state(node1.address).members}["node2"]
            == "alive"
        ),
        timeout=20,
        what="node1 (and the leader it follows) to see node2 up again",
    )
    before_repair = scrape(node1)
    report = repair(node1.address)
    after_repair = scrape(node1)

    def moved(name: str) -> float:
        return after_repair.get(name) - before_repair.get(name)

    assert report.leaves_differing > 0
    assert moved("ringkv_anti_entropy_rounds_total") == 1
    assert moved("ringkv_anti_entropy_leaves_differing_total") == report.leaves_differing
    assert moved("ringkv_anti_entropy_keys_repaired_total") == (
        report.keys_pulled + report.keys_pushed
    )
    stats = node_stats(node1.address)
    assert after_repair.get("ringkv_anti_entropy_rounds_total") == stats.repair_rounds
    assert after_repair.get("ringkv_anti_entropy_keys_repaired_total") == stats.keys_repaired
    assert after_repair.get("ringkv_tombstones_purged_total") == stats.tombstones_purged
    assert after_repair.get("ringkv_merkle_tree_builds_total") >= 1

    # Writes since update the trees each node keeps: the next round builds
    # none. (The purge horizon steps hourly with the default grace, and a
    # step starts new trees: an attempt that straddles one is made again.)
    for attempt in range(2):
        hour = time.time() // 3600
        builds = [scrape(node).get("ringkv_merkle_tree_builds_total") for node in members]
        with ringkv.Client(node1.address) as client:
            client.set_many({f"kept{attempt}-{i}": b"v" for i in range(200)})
        repair(node1.address)
        builds_after = [scrape(node).get("ringkv_merkle_tree_builds_total") for node in members]
        if time.time() // 3600 == hour:
            assert builds_after == builds
            # And the kept tree is right: node2's equals one built from its records.
            kept, fresh = asyncio.run(kept_and_fresh_tree(node2))
            assert kept == fresh
            assert scrape(node2).get("ringkv_merkle_tree_builds_total") == builds[1]
            break
    else:
        pytest.fail("two attempts each straddled an hour")


async def kept_and_fresh_tree(node: NodeProcess) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The tree ``node`` answers for the whole ring at this hour's purge horizon
    (what anti-entropy asks of it with RF 3 on 3 nodes, the default grace), and
    the tree of the records it answers a scan with."""
    grace_ms = 10 * 86_400_000
    horizon = int(time.time() * 1000) - grace_ms
    horizon -= horizon % 3_600_000
    peer = Peer(node.node_id, node.address, HybridLogicalClock("test"), timeout_s=30.0)
    try:
        kept = await peer.merkle([(0, TOKEN_SPACE)], DEFAULT_DEPTH, horizon)
        records: list[Record] = []
        cursor = b""
        while True:
            page, cursor = await peer.scan(0, TOKEN_SPACE, cursor, 1000)
            records += page
            if not cursor:
                break
    finally:
        await peer.close()
    return kept, merkle.build(records, DEFAULT_DEPTH, purge_horizon_ms=horizon).leaves


# --- bad values -----------------------------------------------------------------


def run_node(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ringkv", "node", "-addr", "127.0.0.1:0", *args],
        cwd=cwd,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=QUICK_EXIT_S,
        check=False,
    )


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("nope", id="no-port"),
        pytest.param("127.0.0.1:70000", id="port-range"),
        pytest.param("", id="empty"),
        pytest.param("host name:9100", id="bad-host"),
    ],
)
def test_a_bad_metrics_address_exits_2_with_one_line(tmp_path: Path, value: str) -> None:
    result = run_node("--metrics-addr", value, cwd=tmp_path)

    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("ringkv node: error: --metrics-addr ")
    assert result.stdout == ""
    assert list(tmp_path.iterdir()) == [], "a node that refused to start created files"


def test_a_metrics_port_in_use_exits_1_before_touching_the_data_dir(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        result = run_node("--metrics-addr", address, cwd=tmp_path)

    assert result.returncode == 1, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"ringkv node: error: cannot listen on metrics address {address}")
    assert list(tmp_path.iterdir()) == [], "a node that refused to start created files"
