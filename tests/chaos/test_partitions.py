"""Network partitions: each node in its own network namespace, links cut with routes.

A 3-node cluster (RF 3) on a bridge; the test process watches every node from
the host, which stays connected. Isolating the leader lets the majority elect
a new one while the old leader, cut off, stops leading and cannot change the
ring; healing brings back one leader (the highest id, bully) and the replicas
converge: after two scheduled anti-entropy rounds every pair of replicas has
equal Merkle roots (a round that compares them finds no leaf differing).

Needs root (namespaces); CI runs as root and must run it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

import ringkv
from ringkv.client.admin import cluster_state, node_stats, remove_node, repair
from ringkv.core.errors import RingkvError, Unavailable
from ringkv.server.cluster.leader_lease import NO_LEADER_LEASE
from tests.support.chaos import PORT, NamespacedNode
from tests.support.netns import NetnsLab, require_netns
from tests.support.nodes import NodeProcess, agreed_leader, wait_for, wait_for_leader

pytestmark = pytest.mark.needs_root

ANTI_ENTROPY_S = 2.0
TIMINGS = (
    "--heartbeat-interval", "0.3",
    "--election-timeout", "1.5",
    "--anti-entropy-interval", str(ANTI_ENTROPY_S),
    "--peer-timeout", "0.5",
    "--request-timeout", "2",
)  # fmt: skip


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[NetnsLab, list[NamespacedNode]]]:
    require_netns()
    with NetnsLab(3) as lab:
        nodes: list[NamespacedNode] = []
        for i in range(3):
            peers = ",".join(f"node{j + 1}={lab.ips[j]}:{PORT}" for j in range(3) if j != i)
            args = ["-peers", peers, "-replicas", "3", *TIMINGS]
            nodes.append(
                NamespacedNode(
                    f"node{i + 1}", tmp_path / f"node{i + 1}", args, port=PORT, lab=lab, index=i
                )
            )
        try:
            for node in nodes:
                node.launch()
            for node in nodes:
                node.wait_serving()
            yield lab, nodes
        finally:
            for node in nodes:
                node.kill()


def leader_seen_by(node: NodeProcess) -> tuple[str, int, int] | None:
    """The leader, term and epoch ``node`` reports (None if it does not answer)."""
    try:
        state = cluster_state(node.address, timeout=1.0)
    except RingkvError:
        return None
    return state.leader_id, state.term, state.epoch


def write_all(address: str, data: dict[str, bytes]) -> None:
    with ringkv.Client(address, token_aware=False, timeout=5.0) as client:
        for key, value in data.items():
            client.set(key, value)


def repair_rounds(nodes: Sequence[NodeProcess]) -> list[int]:
    return [node_stats(node.address).repair_rounds for node in nodes]


def test_isolated_leader_steps_down_majority_elects_and_heal_converges(
    cluster: tuple[NetnsLab, list[NamespacedNode]],
) -> None:
    lab, nodes = cluster
    node1, node2, node3 = nodes
    _, term = wait_for_leader(nodes, "node3", timeout=30)
    epoch = cluster_state(node3.address).epoch
    write_all(node1.address, {f"before/{i}": b"v1" for i in range(50)})

    # Cut node3 (the leader) off from its peers; the host still sees it.
    lab.isolate(2, include_host=False)
    cut_at = time.monotonic()
    _, majority_term = wait_for_leader([node1, node2], "node2", timeout=30)
    print(f"majority elected node2 {time.monotonic() - cut_at:.2f}s after the cut")
    assert majority_term > term
    # The old leader loses its majority lease and stops leading...
    wait_for(
        lambda: (seen := leader_seen_by(node3)) is not None and seen[0] != "node3",
        timeout=10,
        what="the isolated leader to step down",
    )
    # ...so it cannot change the ring: a decommission asked of it is refused
    # and its epoch stays where it was.
    with pytest.raises(Unavailable):
        remove_node(node3.address, "node1", timeout=5.0)
    seen = leader_seen_by(node3)
    assert seen is not None
    assert seen[2] == epoch

    # Once the new leader's heartbeats have found node3 dead, requests stop
    # going to it, and the majority serves writes at QUORUM; node3 misses them.
    wait_for(
        lambda: (
            {m.node_id: m.state for m in cluster_state(node1.address).members}.get("node3")
            == "dead"
        ),
        timeout=15,
        what="node1 to learn from the leader that node3 is dead",
    )
    during = {f"during/{i}": b"v2" for i in range(100)}
    write_all(node1.address, during)

    lab.heal()
    healed_at = time.monotonic()
    final_leader, final_term = wait_for_leader(nodes, "node3", timeout=30)
    print(f"one leader again {time.monotonic() - healed_at:.2f}s after the heal")
    assert final_term > majority_term
    assert agreed_leader(nodes) == (final_leader, final_term)

    # Two scheduled anti-entropy rounds after the heal, every pair agrees.
    rounds_at_heal = repair_rounds(nodes)
    wait_for(
        lambda: all(
            now >= then + 2 for now, then in zip(repair_rounds(nodes), rounds_at_heal, strict=True)
        ),
        timeout=8 * ANTI_ENTROPY_S + 10,
        interval=0.2,
        what="two anti-entropy rounds on every node",
    )
    print(f"converged within 2 rounds, {time.monotonic() - healed_at:.2f}s after the heal")
    for node in nodes:
        report = repair(node.address, timeout=30.0)
        assert report.peers == 2
        assert report.leaves_differing == 0, (node.node_id, report)
    with ringkv.Client(node3.address, token_aware=False) as client:
        for key in during:
            entry = client.get(key, consistency="one")
            assert entry is not None, key
            assert entry.value == b"v2"


def quorum_read(node: NodeProcess, key: str, level: str = "quorum") -> bytes | None:
    with ringkv.Client(node.address, token_aware=False, timeout=5.0) as client:
        entry = client.get(key, consistency=level)
    return None if entry is None else entry.value


def refuses_for_want_of_a_leader(node: NodeProcess, key: str) -> bool:
    try:
        quorum_read(node, key)
    except Unavailable as error:
        return error.reason == NO_LEADER_LEASE
    return False


def test_a_node_cut_off_from_the_leader_alone_stops_coordinating_until_it_hears_one(
    cluster: tuple[NetnsLab, list[NamespacedNode]],
) -> None:
    """Item 11 of docs/correctness.md. node1 loses its link to the leader but still
    reaches node2, a quorum of every key's replicas with itself. On the member
    table it last heard of, which the leader may have moved past, it would go on
    serving QUORUM reads; instead, an election timeout after the last heartbeat,
    it refuses them as UNAVAILABLE/NO_LEADER_LEASE (a client tries another node),
    while node2, which hears the leader, serves them. Healed, node1 serves again."""
    lab, nodes = cluster
    node1, node2, _ = nodes
    wait_for_leader(nodes, "node3", timeout=30)
    write_all(node2.address, {"lease/key": b"v"})
    assert quorum_read(node1, "lease/key") == b"v"

    lab.cut(0, 2)
    cut_at = time.monotonic()
    wait_for(
        lambda: refuses_for_want_of_a_leader(node1, "lease/key"),
        timeout=20,
        what="node1 to refuse QUORUM reads for want of a leader",
    )
    print(f"node1 stopped coordinating {time.monotonic() - cut_at:.2f}s after the cut")
    assert quorum_read(node2, "lease/key") == b"v"
    assert quorum_read(node1, "lease/key", "one") == b"v"  # ONE promises no order

    lab.heal()
    wait_for(
        lambda: not refuses_for_want_of_a_leader(node1, "lease/key"),
        timeout=30,
        what="node1 to coordinate again once it hears the leader",
    )
    assert quorum_read(node1, "lease/key") == b"v"
