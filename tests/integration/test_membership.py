"""The cluster manages itself: bully failover, joins, decommissions, dead-node removal.

Real ``ringkv node`` processes on 127.0.0.1 with LMDB data dirs. Timings are
shortened by flags where a test waits on them; the failover test runs the
defaults (1 s heartbeats, 3 s election timeout) and reports what it measured.
"""

from __future__ import annotations

import json
import signal
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import grpc
import pytest

import ringkv
from ringkv.api import kv_pb2, kv_pb2_grpc
from ringkv.client.admin import ClusterState, cluster_state, node_stats, remove_node
from ringkv.core.errors import RingkvError
from ringkv.core.ring import Ring
from ringkv.storage.lmdb_engine import LmdbEngine
from tests.support.load import ConcurrentWriter, assert_all_present
from tests.support.nodes import (
    ClusterFactory,
    NodeFactory,
    NodeProcess,
    free_ports,
    wait_for,
    wait_for_leader,
)
from tests.support.tmpfs import fill, small_tmpfs

FAST = ("--heartbeat-interval", "0.3", "--election-timeout", "1.5")
"""Membership timings for tests that are not about the defaults."""


def state_of(node: NodeProcess) -> ClusterState | None:
    try:
        return cluster_state(node.address, timeout=1.0)
    except RingkvError:
        return None


def settled_members(node: NodeProcess) -> dict[str, str] | None:
    """Each member's ring status, as ``node`` reports it."""
    state = state_of(node)
    return None if state is None else {m.node_id: m.status for m in state.members}


def wait_for_members(
    members: Sequence[NodeProcess], expected: dict[str, str], *, timeout: float
) -> None:
    wait_for(
        lambda: all(settled_members(node) == expected for node in members),
        timeout=timeout,
        interval=0.1,
        what=f"member tables {expected}",
    )


def set_all(client: ringkv.Client, data: dict[str, bytes]) -> None:
    """Write ``data`` in batches of the most keys one call may carry."""
    items = list(data.items())
    for first in range(0, len(items), 1000):
        client.set_many(dict(items[first : first + 1000]))


def stored_keys(node: NodeProcess) -> set[str]:
    """The live keys in a stopped node's LMDB files."""
    engine = LmdbEngine(node.data_dir)
    try:
        return {r.key.decode() for r in engine.scan(0, 2**64) if not r.tombstone}
    finally:
        engine.close()


# -- the bully leader ----------------------------------------------------------------


def test_killing_the_leader_elects_the_next_highest_and_the_old_one_takes_over_again(
    nodes: NodeFactory,
) -> None:
    heartbeat_s, election_timeout_s = 1.0, 3.0  # the defaults
    members = ClusterFactory(nodes)(3, replicas=3)
    node1, node2, node3 = members
    _, first_term = wait_for_leader(members, "node3", timeout=20)

    node3.kill()
    killed = time.monotonic()
    _, second_term = wait_for_leader([node1, node2], "node2", timeout=20)
    failover_s = time.monotonic() - killed
    print(f"failover after kill -9 of the leader: {failover_s:.2f}s")
    assert second_term > first_term
    # Polling adds up to one poll interval and a GetClusterState round trip.
    assert failover_s <= election_timeout_s + heartbeat_s + 0.5, failover_s

    # Client traffic through the survivors goes on while the old leader
    # comes back and (bully) takes over again: the data path does not wait
    # on the leader.
    with ConcurrentWriter(
        f"{node1.address},{node2.address}",
        prefix="bully",
        concurrency=8,
        keep_going=True,
        token_aware=False,
    ) as writer:
        writer.wait_for_acks(50)
        node3.start()
        _, third_term = wait_for_leader(members, "node3", timeout=20)
        acked_before = len(writer.acked)
        writer.wait_for_acks(acked_before + 50)
    assert third_term > second_term
    assert not writer.failures, writer.failures[:3]
    assert_all_present(node1.address, writer.acked)


def test_a_restarted_node_resumes_its_term_and_table_from_its_data_dir(
    nodes: NodeFactory,
) -> None:
    members = ClusterFactory(nodes)(3, *FAST, replicas=2)
    _, term = wait_for_leader(members, "node3", timeout=20)
    node1 = members[0]
    node1.stop()
    saved = (node1.data_dir / "cluster.json").read_text()
    assert '"term"' in saved
    node1.start()
    assert any(e.get("msg") == "resuming" for e in node1.events()), node1.log_text()
    # The term saved across the restart is not forgotten on the way back in
    # (it used to be saved as 0 while resuming, until the next vote).
    assert json.loads((node1.data_dir / "cluster.json").read_text())["term"] >= term
    assert wait_for_leader(members, "node3", timeout=20)[1] >= term


# -- joins, decommissions and failures under load ------------------------------------


def test_join_remove_kill_and_restart_under_load_keep_every_acknowledged_write(
    nodes: NodeFactory,
) -> None:
    """The issue's scenario: with writes going on, kill -9 a replica, join a 4th node,
    decommission one, restart the killed one; then every acknowledged write reads back
    at QUORUM and every key sits on exactly its N replicas."""
    replicas = 2
    members = ClusterFactory(nodes)(3, *FAST, "--dead-after", "120", replicas=replicas)
    node1, node2, node3 = members
    wait_for_leader(members, "node3", timeout=20)
    endpoints = ",".join(n.address for n in members)
    with ringkv.Client(endpoints) as client:
        before = {f"seed/{i:05d}": f"v{i}".encode() for i in range(3000)}
        set_all(client, before)

    # The load spans a kill, a join, a restart and a removal, each waited for
    # by condition: its time budget is for a loaded 2-core machine.
    with ConcurrentWriter(
        endpoints, prefix="load", concurrency=16, keep_going=True, max_seconds=240.0
    ) as writer:
        writer.wait_for_acks(200)

        # kill -9 a replica: writes go on around it (sloppy quorum, hints).
        node2.kill()
        writer.wait_for_acks(len(writer.acked) + 200)

        # A 4th node joins through any member and pulls its ranges.
        keys_before_join = len(before) + len(writer.acked)
        (port,) = free_ports(1)
        node4 = nodes("node4", "-peers", f"node1={node1.address}", *FAST, start=False)
        node4.extra_args += ["-replicas", str(replicas)]
        node4.port = port
        node4.start()
        wait_for_members(
            [node1, node3, node4],
            {"node1": "normal", "node2": "normal", "node3": "normal", "node4": "normal"},
            timeout=60,
        )
        keys_after_join = len(before) + len(writer.acked)
        pulled = node_stats(node4.address).records_pulled
        writer.wait_for_acks(len(writer.acked) + 200)

        # The killed replica restarts with its data dir and catches up.
        node2.start()
        wait_for(
            lambda: (
                (s := state_of(node1)) is not None
                and {m.node_id: m.state for m in s.members}.get("node2") == "alive"
            ),
            timeout=30,
            what="node2 alive again",
        )

        # node1 is decommissioned: its ranges stream away, then it stops.
        remove_node(node3.address, "node1")
        assert node1.wait(timeout=60) == 0, node1.log_text()
        wait_for_members(
            [node2, node3, node4],
            {"node2": "normal", "node3": "normal", "node4": "normal"},
            timeout=60,
        )
        writer.wait_for_acks(len(writer.acked) + 200)
    survivors = [node2, node3, node4]
    expected = {**before, **writer.acked}
    assert_all_present(node3.address, expected)

    # Keys moved by the join against the ring's prediction: the share of the
    # token space node4 replicates, times the keys stored while it joined
    # (writes go on meanwhile, and a range is scanned any time in between).
    share = Ring(("node1", "node2", "node3", "node4")).ownership(replicas)["node4"]
    low, high = share * keys_before_join, share * keys_after_join
    print(f"join: node4 pulled {pulled} records; the ring predicts {low:.0f} to {high:.0f}")
    assert 0.8 * low <= pulled <= 1.2 * high

    # Every key on exactly its replicas (after the handed-off copies are removed).
    final_ring = Ring(("node2", "node3", "node4"))
    for node in survivors:
        node.stop()
    holders: Counter[str] = Counter()
    for node in survivors:
        keys = stored_keys(node)
        for key in keys:
            holders[key] += 1
        misplaced = [
            k for k in keys if node.node_id not in final_ring.replicas(k.encode(), replicas)
        ]
        assert not misplaced, f"{node.node_id} holds {len(misplaced)} keys it does not own"
    wrong = {k: n for k, n in holders.items() if k in expected and n != replicas}
    assert not wrong, f"{len(wrong)} keys without {replicas} copies: {list(wrong.items())[:5]}"


def test_a_phantom_joiner_does_not_block_a_real_one_and_can_be_removed(
    nodes: NodeFactory,
) -> None:
    """Issue 13: a Join for a node that never comes up is dropped once it is
    dead past ``--dead-after``, and ``cluster remove`` drops one at once."""
    members = ClusterFactory(nodes)(3, *FAST, "--dead-after", "3")
    node1, _, node3 = members
    wait_for_leader(members, "node3", timeout=20)
    (nowhere,) = free_ports(1)

    def join_phantom(node_id: str) -> None:
        with grpc.insecure_channel(node1.address) as channel:
            kv_pb2_grpc.ClusterStub(channel).Join(
                kv_pb2.JoinRequest(node_id=node_id, address=f"127.0.0.1:{nowhere}"), timeout=10
            )

    normal = {"node1": "normal", "node2": "normal", "node3": "normal"}
    # Removed by the operator: at once, while it is still joining.
    join_phantom("ghost1")
    assert settled_members(node3) == {**normal, "ghost1": "joining"}
    remove_node(node1.address, "ghost1")
    wait_for_members(members, normal, timeout=30)

    # Left alone: the leader drops it once it is dead past --dead-after, and
    # a real node that asked to join meanwhile gets in.
    join_phantom("ghost2")
    (port,) = free_ports(1)
    node4 = nodes("node4", "-peers", f"node1={node1.address}", *FAST, start=False)
    node4.port = port
    node4.start()
    wait_for_members([*members, node4], {**normal, "node4": "normal"}, timeout=90)


def test_a_real_joiner_removed_by_the_operator_stops_rather_than_joining_again(
    nodes: NodeFactory,
) -> None:
    """Issue 13: ``cluster remove`` of a node still joining sticks. The node,
    paused while it pulls its ranges, finds on waking a table without it that
    names it removed: it stops as a decommissioned node does, where before it
    took itself for a dead joiner dropped by the leader and joined again."""
    members = ClusterFactory(nodes)(3, *FAST, "--dead-after", "120")
    node1, _, node3 = members
    wait_for_leader(members, "node3", timeout=20)
    with ringkv.Client(",".join(n.address for n in members)) as client:
        set_all(client, {f"k/{i:05d}": bytes(200) for i in range(20_000)})

    node4 = nodes("node4", "-peers", f"node1={node1.address}", *FAST, start=False)
    (node4.port,) = free_ports(1)
    node4.launch()
    normal = {"node1": "normal", "node2": "normal", "node3": "normal"}
    wait_for(
        lambda: settled_members(node3) == {**normal, "node4": "joining"},
        timeout=60,
        interval=0.01,
        what="node4 admitted",
    )
    node4.signal(signal.SIGSTOP)
    # Paused within milliseconds of its admission, with 15,000 records to pull.
    assert settled_members(node3) == {**normal, "node4": "joining"}
    remove_node(node1.address, "node4")
    wait_for_members(members, normal, timeout=30)

    node4.signal(signal.SIGCONT)
    assert node4.wait(timeout=60) == 0, node4.log_text()
    assert "decommissioned" in node4.log_text(), node4.log_text()
    assert all(settled_members(node) == normal for node in members)
    # Restarted, it refuses to start rather than join again.
    node4.launch()
    assert node4.wait(timeout=60) == 1, node4.log_text()
    assert "this node was decommissioned" in node4.log_text(), node4.log_text()


def test_a_node_dead_past_the_limit_is_removed_and_its_ranges_re_replicated(
    nodes: NodeFactory,
) -> None:
    replicas = 2
    members = ClusterFactory(nodes)(4, *FAST, "--dead-after", "3", replicas=replicas)
    wait_for_leader(members, "node4", timeout=20)
    with ringkv.Client(",".join(n.address for n in members)) as client:
        data = {f"k/{i:05d}": f"v{i}".encode() for i in range(2000)}
        set_all(client, data)
    node2 = members[1]
    node2.kill()
    survivors = [m for m in members if m is not node2]
    wait_for_members(
        survivors, {"node1": "normal", "node3": "normal", "node4": "normal"}, timeout=60
    )
    ring = Ring(("node1", "node3", "node4"))
    wait_for(
        lambda: all(
            node_stats(n.address).records
            == sum(1 for k in data if n.node_id in ring.replicas(k.encode(), replicas))
            for n in survivors
        ),
        timeout=60,
        interval=0.2,
        what="every survivor to hold exactly its keys",
    )
    assert_all_present(survivors[0].address, data)


@pytest.mark.needs_root
def test_a_change_adopted_on_a_full_disk_settles_once_the_disk_frees(
    nodes: NodeFactory, tmp_path: Path
) -> None:
    """Found by the fault matrix (a decommission while the leader's disk was
    full): the leader could not save the new table, so its rebalancer never
    heard of the change, never pulled the ranges it gained, and the change
    waited on it for good, long after the disk had room again."""
    with small_tmpfs(tmp_path / "disk", size="16m") as disk:
        members = ClusterFactory(nodes)(4, *FAST, replicas=3, start=False)
        node1, node2, node3, node4 = members
        node4.extra_args += ["--data-dir", str(disk / "data")]
        try:
            for node in members:
                node.launch()
            for node in members:
                node.wait_serving()
            wait_for_leader(members, "node4", timeout=20)
            data = {f"k/{i:04d}": f"v{i}".encode() for i in range(500)}
            with ringkv.Client(",".join(n.address for n in members)) as client:
                set_all(client, data)

            fill(disk / "ballast")
            remove_node(node4.address, "node1")
            wait_for(
                lambda: (
                    (s := state_of(node4)) is not None
                    and any(m.node_id == "node1" and m.status == "leaving" for m in s.members)
                ),
                timeout=20,
                what="node4 to adopt the decommission on its full disk",
            )
            (disk / "ballast").unlink()

            assert node1.wait(timeout=60) == 0, node1.log_text()
            wait_for_members(
                [node2, node3, node4],
                {"node2": "normal", "node3": "normal", "node4": "normal"},
                timeout=60,
            )
            assert_all_present(node2.address, data)
        finally:
            for node in members:
                node.kill()  # before the disk is unmounted under node4


def test_a_node_told_the_cluster_exists_waits_for_a_seed_instead_of_founding_one(
    nodes: NodeFactory,
) -> None:
    """Issue 12: with its seed down, a node started with ``--initial-cluster-state
    existing`` does not found a cluster of its own from its flags (which would
    split the data in two once the seed is back); it waits, then joins."""
    (seed_port,) = free_ports(1)
    node2 = nodes(
        "node2",
        "-peers",
        f"node1=127.0.0.1:{seed_port}",
        "--initial-cluster-state",
        "existing",
        *FAST,
    )
    # Past the point where a new cluster would have been founded, it says it waits.
    wait_for(
        lambda: any(e.get("msg", "").startswith("no seed answers") for e in node2.events()),
        timeout=30,
        what="node2 to wait for its seed",
    )
    assert not any(e.get("msg") == "bootstrapping" for e in node2.events())
    node1 = nodes("node1", *FAST, start=False)
    node1.port = seed_port
    node1.start()
    wait_for_members([node1, node2], {"node1": "normal", "node2": "normal"}, timeout=60)
    assert not any(e.get("msg") == "bootstrapping" for e in node2.events())
