"""A node whose clock is far from its peers' stops stamping writes and forwards them.

Three nodes, RF 3; node3's clock runs 20 s ahead. Its peers' clocks agree,
so node3 is "beyond" --max-clock-offset and the others "within". A write
sent to node3 is coordinated by another node: it is acknowledged, its
version is close to true time, and node3 counts it as forwarded; a write
of a key node3 owns, sent to another node, is coordinated there. With the
check off (--max-clock-offset 0) node3 stamps with its own clock.
"""

from __future__ import annotations

import time

import grpc

import ringkv
from ringkv.api import replica_pb2, replica_pb2_grpc
from ringkv.client.admin import node_stats
from ringkv.core.hlc import physical_ms
from ringkv.core.ring import Ring
from tests.support.nodes import ClusterFactory, NodeProcess, wait_for

AHEAD_MS = 20_000


def clock_check(node: NodeProcess) -> str:
    return node_stats(node.address).clock_check


def start_with_node3_ahead(cluster: ClusterFactory, *args: str) -> list[NodeProcess]:
    nodes = cluster(3, *args, replicas=3, start=False)
    nodes[2].extra_args += ["--clock-offset-ms", str(AHEAD_MS)]
    for node in nodes:
        node.launch()
    for node in nodes:
        node.wait_serving()
    return nodes


def test_a_node_far_ahead_forwards_its_writes_and_says_so(cluster: ClusterFactory) -> None:
    nodes = start_with_node3_ahead(cluster)
    skewed = nodes[2]
    wait_for(
        lambda: [clock_check(node) for node in nodes] == ["within", "within", "beyond"],
        timeout=30,
        what="node3's clock to be found beyond reach and the others within",
    )
    stats = node_stats(skewed.address)
    assert AHEAD_MS - 2_000 < stats.clock_offset_ms < AHEAD_MS + 2_000
    forwarded_before = stats.forwarded_writes

    with ringkv.Client(skewed.address, token_aware=False) as client:
        versions = [client.set(f"skew/{i}", b"v") for i in range(20)]
        assert client.set_many({f"batch/{i}": b"v" for i in range(5)})
    # Keys node3 owns, written through a healthy node: coordinated around node3.
    ring = Ring(tuple(node.node_id for node in nodes))
    owned = [
        k for k in (f"owned/{i}" for i in range(200)) if ring.replicas(k.encode(), 3)[0] == "node3"
    ]
    assert owned
    with ringkv.Client(nodes[0].address, token_aware=False) as client:
        versions += [client.set(key, b"v") for key in owned[:10]]
        versions += [client.set(key, b"v", consistency="all") for key in owned[10:15]]
    true_ms = time.time() * 1000
    for version in versions:
        assert abs(physical_ms(version) - true_ms) < AHEAD_MS / 2, "stamped by the fast clock"
    assert node_stats(skewed.address).forwarded_writes >= forwarded_before + 21

    # A peer clock at the int64 limit in a member message is not adopted (the
    # node's next versions stay near true time) and the node says so.
    with grpc.insecure_channel(nodes[0].address) as channel:
        replica_pb2_grpc.ReplicaStub(channel).Read(
            replica_pb2.ReadRequest(keys=[b"k"], clock=2**63 - 1), timeout=5
        )
    with ringkv.Client(nodes[0].address, token_aware=False) as client:
        version = client.set("after-the-forged-clock", b"v")
    assert abs(physical_ms(version) - time.time() * 1000) < AHEAD_MS / 2
    wait_for(
        lambda: any(
            event.get("msg") == "peer clocks too far ahead were not adopted"
            for event in nodes[0].events()
        ),
        timeout=30,
        what="node1 to log the clock it did not adopt",
    )


def test_with_the_check_off_a_skewed_node_stamps_with_its_own_clock(
    cluster: ClusterFactory,
) -> None:
    nodes = start_with_node3_ahead(cluster, "--max-clock-offset", "0")
    skewed = nodes[2]
    assert clock_check(skewed) == "within"
    with ringkv.Client(skewed.address, token_aware=False) as client:
        # Forwarded to the key's owner unless node3 owns it: find one it owns.
        versions = [client.set(f"own/{i}", b"v") for i in range(30)]
    true_ms = time.time() * 1000
    assert any(physical_ms(v) - true_ms > AHEAD_MS / 2 for v in versions)
