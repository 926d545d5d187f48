"""Anti-entropy, tombstone GC and decommissioning, driven the way an operator would.

Real ``ringkv node`` processes on 127.0.0.1 with LMDB data dirs; the admin
commands run as ``python -m ringkv cluster ...`` subprocesses. A replica that
missed writes while it was down gets them from Merkle repair alone: hints
expire after one second, before it comes back, and nothing reads the keys
(no read repair) until the repair is done.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc

import ringkv
from ringkv.api import replica_pb2, replica_pb2_grpc
from ringkv.client.admin import NodeStats, cluster_state, node_stats, repair
from ringkv.core.errors import RingkvError
from tests.support.nodes import (
    ClusterFactory,
    NodeProcess,
    child_env,
    stop_all,
    stored_records,
    wait_for,
    wait_for_leader,
)

RINGKV = [sys.executable, "-m", "ringkv"]
CLI_TIMEOUT_S = 60.0
EXIT_ERROR = 3

FAST = (
    "--heartbeat-interval", "0.3", "--election-timeout", "1.5",
    "--peer-timeout", "5", "--request-timeout", "15",
)  # fmt: skip
"""Membership timings for tests that are not about the defaults; patient
deadlines, so a loaded machine does not mark live peers down."""
CLIENT_TIMEOUT_S = 20.0
SHORT_HINTS = ("--hint-ttl", "1", "--hint-replay-interval", "0.2")
"""Hints for a down node expire after 1 s, and are dropped within 0.2 s of that."""

SEEDED = 200
"""Keys every replica holds before one goes down."""
MISSED_NEW = 300
"""New keys written while a replica is down."""
MISSED_UPDATES = 20
"""Seeded keys overwritten while a replica is down."""
MISSED_DELETES = 20
"""Seeded keys deleted while a replica is down."""
MISSED = MISSED_NEW + MISSED_UPDATES + MISSED_DELETES
"""Keys whose newest version the down replica lacks."""


# -- helpers ---------------------------------------------------------------------


def ringkv_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``ringkv ARGS`` to completion; a wide terminal so tables do not wrap."""
    env = child_env()
    env.pop("RINGKV_ENDPOINTS", None)
    env["COLUMNS"] = "200"
    return subprocess.run(
        [*RINGKV, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )


@dataclass(frozen=True)
class RepairRow:
    peers: int
    leaves_differing: int
    keys_pulled: int
    keys_pushed: int


def repair_table(output: str, node_ids: Sequence[str]) -> dict[str, RepairRow]:
    """The rows of the table ``ringkv cluster repair`` prints, by node id.

    Cells are split on the box characters rich draws (unicode or ASCII).
    """
    rows: dict[str, RepairRow] = {}
    for line in output.splitlines():
        cells = [cell.strip() for cell in re.split(r"[│┃|]", line)]
        cells = [cell for cell in cells if cell]
        if len(cells) == 5 and cells[0] in node_ids:
            numbers = [int(cell.replace(",", "")) for cell in cells[1:]]
            rows[cells[0]] = RepairRow(*numbers)
    return rows


def stats_of(node: NodeProcess) -> NodeStats:
    return node_stats(node.address, timeout=10.0)


def hints_pending(members: Sequence[NodeProcess]) -> int:
    return sum(stats_of(node).hints_pending for node in members)


def content_hash(node: NodeProcess) -> int:
    """A hash of every record a running node stores (key, version, tombstone),
    tombstones included: the one leaf of a depth-0 Merkle tree over the whole
    token space, asked over the internal Replica API. Read-only, unlike a repair."""
    request = replica_pb2.MerkleRequest(
        spans=[replica_pb2.TokenSpan(start=0, to_end=True)], depth=0, purge_horizon_ms=0
    )
    with grpc.insecure_channel(node.address) as channel:
        response = replica_pb2_grpc.ReplicaStub(channel).Merkle(request, timeout=5.0)
    (leaf,) = response.leaves
    return int(leaf)


def sees_up(node: NodeProcess, peer_id: str) -> bool:
    """Whether ``node`` has not marked ``peer_id`` down since it last saw it up,
    by the "peer down" / "peer up" events of its log."""
    last = "peer up"
    for event in node.events():
        if event.get("peer") == peer_id and event.get("msg") in ("peer down", "peer up"):
            last = event["msg"]
    return last == "peer up"


def in_agreement(members: Sequence[NodeProcess]) -> bool:
    return len({content_hash(node) for node in members}) == 1


@dataclass
class Workload:
    """What a replica that was down missed, and what every replica should end up with."""

    seeded: dict[str, bytes]
    new: dict[str, bytes]
    updated: dict[str, bytes]
    deleted: list[str]

    def expected_live(self) -> dict[str, bytes]:
        live = {**self.seeded, **self.new, **self.updated}
        for key in self.deleted:
            del live[key]
        return live


def seed(node: NodeProcess) -> dict[str, bytes]:
    seeded = {f"seed/{i:04d}": f"seed-{i}".encode() for i in range(SEEDED)}
    with ringkv.Client(node.address, timeout=CLIENT_TIMEOUT_S, token_aware=False) as client:
        client.set_many(seeded)
    return seeded


def write_while_down(node: NodeProcess, seeded: dict[str, bytes]) -> Workload:
    """New keys, overwrites and deletes of seeded keys, all through ``node``."""
    old = sorted(seeded)
    workload = Workload(
        seeded=seeded,
        new={f"new/{i:04d}": f"new-{i}".encode() for i in range(MISSED_NEW)},
        updated={key: b"updated " + seeded[key] for key in old[:MISSED_UPDATES]},
        deleted=old[MISSED_UPDATES : MISSED_UPDATES + MISSED_DELETES],
    )
    with ringkv.Client(node.address, timeout=CLIENT_TIMEOUT_S, token_aware=False) as client:
        client.set_many(workload.new)
        client.set_many(workload.updated)
        for key in workload.deleted:
            assert client.delete(key), key
    return workload


def three_replicas_one_missed_writes(
    cluster: ClusterFactory, anti_entropy_interval: str
) -> tuple[list[NodeProcess], Workload]:
    """3 nodes, RF 3: node3 is stopped while writes go on through node1, and the
    hints held for it expire and are dropped. node3 is left stopped."""
    members = cluster(
        3, *FAST, *SHORT_HINTS, "--anti-entropy-interval", anti_entropy_interval, replicas=3
    )
    node1, node2, node3 = members
    wait_for_leader(members, "node3", timeout=20)
    seeded = seed(node1)
    assert node3.stop() == 0, node3.log_text()

    workload = write_while_down(node1, seeded)
    # The coordinators held hints for node3 (they live 1 s from their write)...
    assert hints_pending([node1, node2]) > 0
    # ...and drop them unsent, as node3 is still down.
    wait_for(
        lambda: hints_pending([node1, node2]) == 0,
        timeout=15,
        interval=0.1,
        what="the hints for node3 to expire",
    )
    assert in_agreement([node1, node2])
    return members, workload


def restart_behind(node3: NodeProcess, node1: NodeProcess) -> None:
    """Start node3 again and check that nothing handed it what it missed."""
    node3.start()
    stats3 = stats_of(node3)
    assert stats3.records == SEEDED, stats3
    assert stats_of(node1).records == SEEDED + MISSED_NEW


def assert_identical_replicas(members: Sequence[NodeProcess], workload: Workload) -> None:
    """Stop every node and compare their LMDB files: the same newest version of
    every key (tombstones included) on every replica, and the values written."""
    stop_all(members)
    first, *others = members
    reference = stored_records(first)
    for node in others:
        records = stored_records(node)
        assert records.keys() == reference.keys(), (
            f"{node.node_id}: missing {sorted(reference.keys() - records.keys())[:5]}, "
            f"extra {sorted(records.keys() - reference.keys())[:5]}"
        )
        differing = [key for key in reference if records[key] != reference[key]]
        assert not differing, (
            f"{node.node_id} differs from {first.node_id} on {len(differing)} keys, e.g. "
            f"{differing[0]}: {records[differing[0]]} != {reference[differing[0]]}"
        )
    live = {key: r.value for key, r in reference.items() if not r.tombstone}
    assert live == workload.expected_live()
    tombstones = sorted(key for key, r in reference.items() if r.tombstone)
    assert tombstones == sorted(workload.deleted)


def assert_readable(endpoints: str, expected: dict[str, bytes], absent: Sequence[str]) -> None:
    with ringkv.Client(endpoints, timeout=CLIENT_TIMEOUT_S) as client:
        keys = list(expected)
        found: dict[str, bytes | None] = {}
        for first in range(0, len(keys), 500):
            batch = client.get_many(keys[first : first + 500])
            found.update({k: None if e is None else e.value for k, e in batch.items()})
        assert found == expected
        if absent:
            assert set(client.get_many(list(absent)).values()) == {None}


# -- Merkle repair -----------------------------------------------------------------


def test_cluster_repair_gives_a_replica_the_writes_it_missed_without_hints(
    cluster: ClusterFactory,
) -> None:
    members, workload = three_replicas_one_missed_writes(cluster, anti_entropy_interval="0")
    node1, node2, node3 = members
    ids = [n.node_id for n in members]
    restart_behind(node3, node1)
    assert not in_agreement(members)
    assert all(stats_of(n).keys_repaired == 0 for n in members)

    # A replica skips a peer it last saw down until its probe finds it back:
    # wait for that, so node1 (first in the table) makes the repair.
    wait_for(
        lambda: all(sees_up(node, "node3") for node in (node1, node2)),
        timeout=10,
        what="node1 and node2 to see node3 back",
    )

    result = ringkv_cli("cluster", "repair", "--endpoints", node1.address)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "keys pulled" in result.stdout and "keys pushed" in result.stdout, result.stdout
    rows = repair_table(result.stdout, ids)
    assert rows.keys() == set(ids), result.stdout
    # The members run their rounds one after the other: node1 compares with
    # node2 (in sync) and node3, and pushes node3 every key it missed; the
    # rounds of node2 and node3 that follow find nothing left to do.
    assert all(row.peers == 2 for row in rows.values()), result.stdout
    assert rows["node1"].leaves_differing > 0, result.stdout
    assert (rows["node1"].keys_pulled, rows["node1"].keys_pushed) == (0, MISSED), result.stdout
    for node_id in ("node2", "node3"):
        assert rows[node_id] == RepairRow(2, 0, 0, 0), result.stdout

    assert in_agreement(members)
    # A second round finds every replica in agreement.
    for node in members:
        report = repair(node.address, timeout=60)
        assert (report.peers, report.leaves_differing) == (2, 0), report
        assert (report.keys_pulled, report.keys_pushed) == (0, 0), report

    stats = {n.node_id: stats_of(n) for n in members}
    assert sum(s.keys_repaired for s in stats.values()) == MISSED, stats
    assert all(s.repair_rounds == 2 for s in stats.values()), stats
    # Neither handoff nor read repair carried the missed writes.
    assert all(s.hints_replayed == 0 and s.read_repairs == 0 for s in stats.values()), stats

    assert_identical_replicas(members, workload)


def test_repair_of_200k_keys_succeeds_with_default_flags(cluster: ClusterFactory) -> None:
    """Issue 13: from about 200,000 keys a node every repair failed (a Merkle
    call had the 2 s peer deadline, a build took longer) and marked healthy
    peers down. Default flags, the replicas in sync: every round compares
    both peers, finds nothing, and leaves every member alive."""
    keys = 200_000
    members = cluster(3)
    wait_for_leader(members, "node3", timeout=30)
    value = b"v" * 100
    with ringkv.Client(",".join(n.address for n in members), timeout=60.0) as client:
        for first in range(0, keys, 1000):
            client.set_many({f"bulk/{i:06d}": value for i in range(first, first + 1000)})
    # QUORUM answers after two replicas: wait for the third to hold them too.
    wait_for(
        lambda: all(stats_of(n).records == keys for n in members),
        timeout=120,
        what="every replica to hold every key",
    )
    for node in members:
        report = repair(node.address, timeout=300)
        assert (report.peers, report.failed, report.skipped) == (2, (), ()), report
        assert report.leaves_differing == 0, report
    state = cluster_state(members[0].address)
    assert {m.node_id: m.state for m in state.members} == dict.fromkeys(
        ("node1", "node2", "node3"), "alive"
    )


def test_scheduled_anti_entropy_converges_without_being_asked(cluster: ClusterFactory) -> None:
    members, workload = three_replicas_one_missed_writes(cluster, anti_entropy_interval="1")
    node1, node2, node3 = members
    # Scheduled rounds ran while node3 was down (and could not reach it).
    wait_for(
        lambda: all(stats_of(n).repair_rounds >= 1 for n in (node1, node2)),
        timeout=10,
        what="scheduled rounds on node1 and node2",
    )
    before = {n.node_id: stats_of(n) for n in (node1, node2)}
    node3.start()  # its first round comes 1 s after it serves

    wait_for(lambda: in_agreement(members), timeout=20, interval=0.2, what="node3 to catch up")
    caught_up = {n.node_id: stats_of(n) for n in members}
    assert caught_up["node3"].records == SEEDED + MISSED_NEW, caught_up
    # Once every node has counted one more round (the one in progress then,
    # if any), the counters include every round that repaired node3.
    wait_for(
        lambda: all(
            stats_of(n).repair_rounds > caught_up[n.node_id].repair_rounds for n in members
        ),
        timeout=10,
        what="one more scheduled round on every node",
    )
    after = {n.node_id: stats_of(n) for n in members}
    # node3's counters started from 0 with its new process. Each missed key
    # was exchanged at least once: rounds of different nodes run concurrently,
    # so two of them may both give node3 the same key.
    repaired = sum(s.keys_repaired for s in after.values()) - sum(
        s.keys_repaired for s in before.values()
    )
    assert repaired >= MISSED, (before, after)
    # Neither handoff nor read repair carried the missed writes.
    assert all(s.hints_replayed == 0 and s.read_repairs == 0 for s in after.values()), after

    assert_identical_replicas(members, workload)


# -- tombstone GC --------------------------------------------------------------------


def write_then_delete_half(
    members: Sequence[NodeProcess], count: int
) -> tuple[dict[str, bytes], list[str]]:
    """Write ``count`` keys, delete every other one; wait until every replica
    holds every record (a quorum write may still be on its way to the third)."""
    data = {f"gc/{i:04d}": f"value-{i}".encode() for i in range(count)}
    deleted = sorted(data)[::2]
    with ringkv.Client(members[0].address, timeout=CLIENT_TIMEOUT_S) as client:
        client.set_many(data)
        for key in deleted:
            assert client.delete(key), key
    wait_for(lambda: in_agreement(members), timeout=10, what="every replica to hold every write")
    live = {k: v for k, v in data.items() if k not in set(deleted)}
    return live, deleted


def test_repair_purges_tombstones_past_the_grace_period(cluster: ClusterFactory) -> None:
    count = 200
    members = cluster(
        3, *FAST, "--anti-entropy-interval", "0", "--tombstone-grace", "0", replicas=3
    )
    wait_for_leader(members, timeout=20)
    live, deleted = write_then_delete_half(members, count)
    before = {n.node_id: stats_of(n) for n in members}
    assert all(s.records == count for s in before.values()), before

    result = ringkv_cli("cluster", "repair", "--endpoints", members[0].address)
    assert result.returncode == 0, result.stdout + result.stderr

    after = {n.node_id: stats_of(n) for n in members}
    # Every replica held every tombstone (RF 3 on 3 nodes) and dropped it.
    for node_id, stats in after.items():
        assert stats.tombstones_purged == len(deleted), (node_id, stats)
        assert stats.records == count - len(deleted), (node_id, stats)
    assert sum(s.tombstones_purged for s in after.values()) == 3 * len(deleted)
    # Purged on every replica alike: nothing left for repair to bring back.
    rows = repair_table(result.stdout, [n.node_id for n in members])
    assert all(r.keys_pulled == r.keys_pushed == 0 for r in rows.values()), result.stdout
    assert_readable(",".join(n.address for n in members), live, deleted)

    stop_all(members)
    for node in members:
        records = stored_records(node)
        assert not any(r.tombstone for r in records.values()), node.node_id
        assert {k: r.value for k, r in records.items()} == live


def test_repair_keeps_tombstones_within_the_grace_period(cluster: ClusterFactory) -> None:
    count = 100
    members = cluster(3, *FAST, "--anti-entropy-interval", "0", replicas=3)  # 10 days' grace
    wait_for_leader(members, timeout=20)
    live, deleted = write_then_delete_half(members, count)

    result = ringkv_cli("cluster", "repair", "--endpoints", members[0].address)
    assert result.returncode == 0, result.stdout + result.stderr

    for node in members:
        stats = stats_of(node)
        assert stats.tombstones_purged == 0, stats
        assert stats.records == count, stats
        assert stats.repair_rounds == 1, stats
    assert_readable(members[0].address, live, deleted)


# -- decommission ------------------------------------------------------------------


def cluster_status_json(endpoint: str) -> dict[str, Any]:
    result = ringkv_cli("cluster", "status", "--json", "--endpoints", endpoint)
    assert result.returncode == 0, result.stdout + result.stderr
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def ring_statuses(node: NodeProcess) -> dict[str, str] | None:
    try:
        state = cluster_state(node.address, timeout=5.0)
    except RingkvError:
        return None
    return {m.node_id: m.status for m in state.members}


def test_cluster_remove_decommissions_a_node_through_the_cli(cluster: ClusterFactory) -> None:
    members = cluster(4, *FAST, replicas=2)
    node1, node2, node3, node4 = members
    wait_for_leader(members, "node4", timeout=20)
    endpoints = ",".join(n.address for n in members)
    data = {f"dc/{i:04d}": f"value-{i}".encode() for i in range(1000)}
    with ringkv.Client(endpoints, timeout=CLIENT_TIMEOUT_S) as client:
        client.set_many(data)

    # An id that is not a member: the leader refuses it, and nothing changes.
    result = ringkv_cli("cluster", "remove", "node9", "--endpoints", node4.address)
    assert result.returncode == EXIT_ERROR, result.stdout + result.stderr
    assert result.stderr.startswith("ringkv: NO_SUCH_MEMBER: "), result.stderr
    assert "node9" in result.stderr, result.stderr
    assert ring_statuses(node1) == dict.fromkeys(("node1", "node2", "node3", "node4"), "normal")

    # Through a member that does not lead: the request is relayed to node4.
    result = ringkv_cli("cluster", "remove", "node2", "--endpoints", node1.address)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "node2 is leaving" in result.stdout, result.stdout

    assert node2.wait(timeout=60) == 0, node2.log_text()
    # A restart policy cannot bring it back: it refuses to start until its
    # member table is deleted.
    node2.launch()
    assert node2.wait(timeout=60) == 1, node2.log_text()
    assert "decommissioned" in node2.log_text(), node2.log_text()
    survivors = [node1, node3, node4]
    expected = {"node1": "normal", "node3": "normal", "node4": "normal"}
    wait_for(
        lambda: all(ring_statuses(n) == expected for n in survivors),
        timeout=30,
        interval=0.1,
        what=f"member tables {expected}",
    )

    document = cluster_status_json(node3.address)
    members_json = {m["node_id"]: m for m in document["members"]}
    assert sorted(members_json) == ["node1", "node3", "node4"], document
    assert {m["status"] for m in members_json.values()} == {"normal"}, document
    assert {m["state"] for m in members_json.values()} == {"alive"}, document
    assert document["leader_id"] == "node4", document
    assert sorted(document["stats"]) == ["node1", "node3", "node4"], document
    assert all("error" not in s for s in document["stats"].values()), document

    assert_readable(",".join(n.address for n in survivors), data, [])


def test_removing_an_unknown_node_through_a_follower_fails_with_its_reason(
    cluster: ClusterFactory,
) -> None:
    members = cluster(2, *FAST, replicas=2)
    wait_for_leader(members, "node2", timeout=20)
    result = ringkv_cli("cluster", "remove", "node9", "--endpoints", members[0].address)
    assert result.returncode == EXIT_ERROR, result.stdout + result.stderr
    assert "NO_SUCH_MEMBER" in result.stderr, result.stderr
