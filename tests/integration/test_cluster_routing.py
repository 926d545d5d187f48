"""Routing in a real cluster: token-aware clients, their fallback, and what the cluster reports."""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

import grpc
import pytest

import ringkv
from ringkv.api import kv_pb2, kv_pb2_grpc
from ringkv.client.admin import cluster_state, node_stats
from ringkv.core.ring import DEFAULT_VNODES_PER_NODE, TOKEN_SPACE, Ring
from tests.support.nodes import (
    ClusterFactory,
    NodeFactory,
    NodeProcess,
    child_env,
    wait_for,
    wait_for_leader,
)

CLI_TIMEOUT_S = 60.0


def ring_of(members: Sequence[NodeProcess]) -> Ring:
    return Ring(tuple(node.node_id for node in members))


def value_of(entry: ringkv.Entry | None) -> bytes | None:
    """A read's value, or None when the key is absent."""
    return None if entry is None else entry.value


def addresses(members: Sequence[NodeProcess]) -> list[str]:
    return [node.address for node in members]


@pytest.fixture(scope="module")
def rf1(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[NodeProcess]]:
    """Three nodes, one copy of each key: every key has exactly one node that owns it."""
    factory = NodeFactory(tmp_path_factory.mktemp("rf1-cluster"))
    try:
        yield ClusterFactory(factory)(3, replicas=1)
    finally:
        factory.cleanup()


# -- token-aware routing -------------------------------------------------------------


def test_a_token_aware_client_writes_straight_to_each_keys_owner(
    rf1: list[NodeProcess],
) -> None:
    ring = ring_of(rf1)
    keys = [f"aware-{i}" for i in range(100)]
    owned = {
        n.node_id: sum(ring.replicas(k.encode(), 1)[0] == n.node_id for k in keys) for n in rf1
    }
    assert all(owned.values()), owned
    before = {n.node_id: node_stats(n.address) for n in rf1}
    with ringkv.Client(addresses(rf1)) as aware:
        for key in keys:
            aware.set(key, f"value-{key}")
        for key in keys:
            assert value_of(aware.get(key)) == f"value-{key}".encode()
    after = {n.node_id: node_stats(n.address) for n in rf1}
    forwarded = {n: after[n].forwarded_writes - before[n].forwarded_writes for n in after}
    assert forwarded == dict.fromkeys(after, 0)
    assert {n: after[n].records - before[n].records for n in after} == owned


def test_a_client_that_is_not_token_aware_makes_its_node_forward(
    rf1: list[NodeProcess],
) -> None:
    ring = ring_of(rf1)
    entry_node = rf1[0]
    keys = [f"pinned-{i}" for i in range(100)]
    elsewhere = sum(ring.replicas(k.encode(), 1)[0] != entry_node.node_id for k in keys)
    before = node_stats(entry_node.address).forwarded_writes
    with ringkv.Client(entry_node.address, token_aware=False) as pinned:
        for key in keys:
            pinned.set(key, f"value-{key}")
        for key in keys:
            assert value_of(pinned.get(key)) == f"value-{key}".encode()
    forwarded = node_stats(entry_node.address).forwarded_writes - before
    print(f"node1 forwarded {forwarded} of {len(keys)} writes")
    assert forwarded == elsewhere
    assert 0.4 * len(keys) < forwarded < 0.9 * len(keys)  # about two thirds


def test_a_token_aware_client_falls_back_when_the_owner_is_dead(
    cluster: ClusterFactory,
) -> None:
    members = cluster(3, replicas=2)
    victim = members[0]
    ring = ring_of(members)
    keys = [f"fallback-{i}" for i in range(60)]
    assert any(ring.replicas(k.encode(), 2)[0] == victim.node_id for k in keys)
    with ringkv.Client(addresses(members)) as aware:
        for key in keys:
            aware.set(key, "before")
        victim.kill()
        slowest = 0.0
        started = time.monotonic()
        for key in keys:
            call_started = time.monotonic()
            assert value_of(aware.get(key)) == b"before", key
            aware.set(key, "after")
            assert value_of(aware.get(key)) == b"after", key
            slowest = max(slowest, time.monotonic() - call_started)
    print(
        f"{len(keys)} keys read, written and read again in {time.monotonic() - started:.2f}s "
        f"with their owner dead; slowest key {slowest:.3f}s"
    )


# -- what the cluster reports -----------------------------------------------------------


def cluster_status(endpoint: str) -> dict[str, Any]:
    """``ringkv cluster status --endpoint ENDPOINT --json``, run as a separate process."""
    completed = subprocess.run(
        [sys.executable, "-m", "ringkv", "cluster", "status", "--endpoint", endpoint, "--json"],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    document: dict[str, Any] = json.loads(completed.stdout)
    return document


def test_cluster_status_lists_members_ownership_and_stats_and_sees_a_dead_node(
    cluster: ClusterFactory,
) -> None:
    members = cluster(3, replicas=2)
    wait_for_leader(members, "node3")
    ids = [n.node_id for n in members]
    ring = ring_of(members)
    keys = [f"status-{i}" for i in range(40)]
    with ringkv.Client(addresses(members)) as client:
        for key in keys:
            client.set(key, "value", consistency="all")
    stored = {n: sum(n in ring.replicas(k.encode(), 2) for k in keys) for n in ids}

    status = cluster_status(members[0].address)
    assert status["answered_by"] == members[0].address
    assert [(m["node_id"], m["address"], m["state"]) for m in status["members"]] == [
        (n.node_id, n.address, "alive") for n in members
    ]
    assert status["leader_id"] in ids
    assert status["epoch"] >= 1
    assert status["replicas"] == 2
    assert status["vnodes"] == DEFAULT_VNODES_PER_NODE
    assert set(status["ownership"]) == set(ids)
    assert all(0 < share <= 1 for share in status["ownership"].values())
    assert sum(status["ownership"].values()) == pytest.approx(2, abs=1e-9)
    assert status["ownership"] == pytest.approx(ring.ownership(2), abs=1e-9)
    for node_id in ids:
        stats = status["stats"][node_id]
        assert stats["node_id"] == node_id
        assert stats["records"] == stored[node_id]
        assert {"bytes_used", "epoch", "forwarded_writes", "read_repairs"} <= set(stats)

    # The victim is the leader: node2 takes over and, an election timeout
    # later, its heartbeats have found the victim dead.
    victim = members[2]
    victim.kill()
    wait_for(
        lambda: (
            {m.node_id: m.state for m in cluster_state(members[0].address).members}
            == {"node1": "alive", "node2": "alive", "node3": "dead"}
        ),
        timeout=20,
        what="node1 to see node3 dead",
    )
    status = cluster_status(members[0].address)
    states = {m["node_id"]: m["state"] for m in status["members"]}
    assert states == {"node1": "alive", "node2": "alive", "node3": "dead"}
    assert status["leader_id"] == "node2"
    assert "error" in status["stats"][victim.node_id], status["stats"][victim.node_id]
    for node in members[:2]:
        assert status["stats"][node.node_id]["records"] >= stored[node.node_id]


def test_get_cluster_state_fills_the_seed_fields_and_covers_the_ring_once(
    rf1: list[NodeProcess],
) -> None:
    ids = [n.node_id for n in rf1]

    def states() -> list[kv_pb2.GetClusterStateResponse]:
        answers = []
        for node in rf1:
            with grpc.insecure_channel(node.address) as channel:
                answers.append(
                    kv_pb2_grpc.ClusterStub(channel).GetClusterState(
                        kv_pb2.GetClusterStateRequest(), timeout=5
                    )
                )
        return answers

    # A loaded machine can delay a heartbeat past the lease: wait out the
    # election that follows rather than catch a node between leaders.
    wait_for(
        lambda: all(state.leader_id for state in states()),
        timeout=30,
        what="every node to name a leader",
    )
    answers = states()
    for state in answers:
        assert list(state.node_ids) == ids
        assert list(state.addresses) == addresses(rf1)
        assert state.leader_id in ids
        assert state.term >= 0
        assert state.epoch >= 1
        assert state.replicas == 1
        assert state.vnodes == DEFAULT_VNODES_PER_NODE
        assert [(m.node_id, m.address, m.state) for m in state.members] == [
            (n.node_id, n.address, "alive") for n in rf1
        ]
        ranges = list(state.ranges)
        assert ranges[0].start == 0
        assert ranges[-1].last == TOKEN_SPACE - 1
        for previous, following in itertools.pairwise(ranges):
            assert following.start == previous.last + 1
        for token_range in ranges:
            assert token_range.start <= token_range.last
            assert len(token_range.replicas) == state.replicas
            assert set(token_range.replicas) <= set(ids)
        expected = Ring(tuple(state.node_ids), vnodes_per_node=state.vnodes).ranges(state.replicas)
        assert [(r.start, r.last, tuple(r.replicas)) for r in ranges] == [
            (r.start, r.end - 1, r.replicas) for r in expected
        ]
    # Every node describes the same cluster.
    assert all(state == answers[0] for state in answers)


def test_a_hung_owner_is_routed_around(cluster: ClusterFactory) -> None:
    """SIGSTOP the owner of some keys: the node is up but answers nothing. After
    at most a few deadlines (whose writes may or may not have happened, so they
    are not retried), the client and the other nodes route around it and
    every write succeeds through a stand-in."""
    members = cluster(3, "--peer-timeout", "0.5", replicas=2)
    owner = members[0]
    ring = ring_of(members)
    keys = [
        k for k in (f"hung-{i}" for i in range(400)) if ring.replicas(k.encode(), 2)[0] == "node1"
    ]
    try:
        deadlines = 0
        with ringkv.Client(addresses(members), timeout=2.0) as client:
            for key in keys[:30]:  # every channel to the owner is open and in use
                client.set(key, b"before")
            owner.signal(signal.SIGSTOP)
            started = time.monotonic()
            for key in keys[:30]:
                for _ in range(5):  # bounded: a few deadlines at most per key
                    try:
                        client.set(key, b"written while the owner hung")
                        break
                    except ringkv.errors.DeadlineExceeded:
                        deadlines += 1
                else:
                    raise AssertionError(f"{key} never got written")
            took = time.monotonic() - started
            # Read back with room for a loaded machine: the reads are not what is timed.
            for key in keys[:30]:
                assert value_of(client.get(key, timeout=10.0)) == b"written while the owner hung"
        print(f"30 writes with the owner hung: {deadlines} deadlines, {took:.1f}s")
        assert deadlines <= 5
    finally:
        owner.signal(signal.SIGCONT)
        owner.kill()
