"""A real cluster: placement, quorums under failures, TTL, batches, deletes, conditional writes.

Every test runs real ``ringkv node`` processes on 127.0.0.1 with LMDB data
dirs, talks to them over gRPC and kills every process at teardown.
"""

from __future__ import annotations

import re
import shlex
import signal
import socket
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

import ringkv
from ringkv.api import kv_pb2, kv_pb2_grpc
from ringkv.client.admin import node_stats
from ringkv.client.errors import from_rpc_error
from ringkv.core.errors import InvalidArgument, PreconditionFailed, Unavailable
from ringkv.core.ring import Ring
from ringkv.storage.lmdb_engine import LmdbEngine
from tests.support.nodes import (
    ClusterFactory,
    NodeFactory,
    NodeProcess,
    stop_all,
    stored_records,
    wait_for,
    wait_for_leader,
)

FAIL_FAST_S = 5.0
"""The longest a request that cannot reach its consistency level may take to fail."""


# -- helpers ---------------------------------------------------------------------


def ring_of(members: Sequence[NodeProcess]) -> Ring:
    """The ring every node computes (default vnodes, as the nodes run with)."""
    return Ring(tuple(node.node_id for node in members))


def value_of(entry: ringkv.Entry | None) -> bytes | None:
    """A read's value, or None when the key is absent."""
    return None if entry is None else entry.value


def seen(entry: ringkv.Entry | None) -> tuple[bytes, int] | None:
    """A read's value and version, or None when the key is absent."""
    return None if entry is None else (entry.value, entry.version)


def clients_for(stack: ExitStack, members: Sequence[NodeProcess]) -> list[ringkv.Client]:
    """One client per node, each talking to that node only (no token-aware routing)."""
    return [stack.enter_context(ringkv.Client(node.address, token_aware=False)) for node in members]


def assert_unavailable_counts(error: Unavailable) -> None:
    """The message says how many replicas answered or were reachable, out of how many."""
    assert re.search(r"\b\d+ of \d+\b", error.message), error.message
    assert "answered" in error.message or "reachable" in error.message, error.message
    assert "needed" in error.metadata, error.metadata


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[NodeProcess]]:
    """One 3-node cluster with the seed's replication factor (2), for tests that kill nothing."""
    factory = NodeFactory(tmp_path_factory.mktemp("shared-cluster"))
    try:
        yield ClusterFactory(factory)(3, replicas=2)
    finally:
        factory.cleanup()


# -- the seed's command lines -----------------------------------------------------

SEED_COMMAND_LINES = (
    'ringkv node -id node1 -addr 0.0.0.0:50051 -peers "node2=127.0.0.1:50052,node3=127.0.0.1:50053" -replicas 2',  # noqa: E501
    'ringkv node -id node2 -addr 0.0.0.0:50052 -peers "node1=127.0.0.1:50051,node3=127.0.0.1:50053" -replicas 2',  # noqa: E501
    'ringkv node -id node3 -addr 0.0.0.0:50053 -peers "node1=127.0.0.1:50051,node2=127.0.0.1:50052" -replicas 2',  # noqa: E501
)
SEED_PORTS = (50051, 50052, 50053)


@dataclass
class SeedNode(NodeProcess):
    """A node started from one of the seed's command lines, word for word."""

    argv: list[str] = field(default_factory=list)

    def command(self) -> list[str]:
        return [*self.argv, "--data-dir", str(self.data_dir), "--log-format", "json"]


def port_in_use(port: int) -> bool:
    """Whether a listener on 0.0.0.0:port would fail to bind (as the node's would)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return True
    return False


def test_the_seeds_three_command_lines_form_one_cluster(tmp_path: Path) -> None:
    busy = [port for port in SEED_PORTS if port_in_use(port)]
    if busy:
        pytest.skip(f"the seed's ports must be free, but {busy} are bound on this machine")
    nodes: list[SeedNode] = []
    for line in SEED_COMMAND_LINES:
        words = shlex.split(line)
        assert words[:2] == ["ringkv", "node"]
        argv = [sys.executable, "-m", "ringkv", *words[1:]]
        node_id = words[words.index("-id") + 1]
        nodes.append(SeedNode(node_id, tmp_path / node_id, argv=argv))
    try:
        for node in nodes:
            node.launch()
        for node in nodes:
            try:
                node.wait_serving()
            except AssertionError:
                if "cannot listen" in node.log_text():
                    pytest.skip(f"{node.node_id} could not bind its seed port: another process did")
                raise
        assert [node.address for node in nodes] == [f"127.0.0.1:{port}" for port in SEED_PORTS]
        with ExitStack() as stack:
            clients = clients_for(stack, nodes)
            written = {
                f"seed-{node.node_id}": client.set(f"seed-{node.node_id}", f"via {node.node_id}")
                for node, client in zip(nodes, clients, strict=True)
            }
            for reader in clients:
                for key, version in written.items():
                    assert seen(reader.get(key)) == (f"via {key[5:]}".encode(), version), key
    finally:
        for node in nodes:
            node.kill()


# -- placement ----------------------------------------------------------------------


@pytest.mark.parametrize(("size", "replicas"), [(3, 2), (4, 3)])
def test_every_key_is_stored_on_exactly_the_nodes_the_ring_names(
    cluster: ClusterFactory, size: int, replicas: int
) -> None:
    members = cluster(size, replicas=replicas)
    ring = ring_of(members)
    keys = [f"placement-{size}-{i}" for i in range(300)]
    deleted = set(keys[::10])
    with ExitStack() as stack:
        clients = clients_for(stack, members)
        # Most keys in batches (coordinated by the node called), some one by
        # one (forwarded to their owner), each through every node in turn.
        for start in range(0, 270, 90):
            chunk = {key: f"value-{keys.index(key)}" for key in keys[start : start + 90]}
            clients[start // 90 % size].set_many(chunk, consistency="all")
        for i, key in enumerate(keys[270:], start=270):
            clients[i % size].set(key, f"value-{i}", consistency="all")
        for i, key in enumerate(sorted(deleted)):
            assert clients[(i + 1) % size].delete(key, consistency="all") is True
    stop_all(members)

    holders: dict[str, list[str]] = {key: [] for key in keys}
    for node in members:
        records = stored_records(node)
        expected = {k for k in keys if node.node_id in ring.replicas(k.encode(), replicas)}
        assert set(records) == expected, f"{node.node_id} stores the wrong keys"
        for key, record in records.items():
            holders[key].append(node.node_id)
            assert record.tombstone == (key in deleted), key
            if key not in deleted:
                assert record.value == f"value-{keys.index(key)}".encode()
    for key, nodes in holders.items():
        assert sorted(nodes) == sorted(ring.replicas(key.encode(), replicas)), key
        assert len(nodes) == replicas


# -- failures -------------------------------------------------------------------------


def test_rf3_keeps_quorum_with_one_node_dead_and_fails_fast_without_it(
    cluster: ClusterFactory,
) -> None:
    members = cluster(3, replicas=3)
    keys = [f"rf3-{i}" for i in range(60)]
    with ExitStack() as stack:
        clients = clients_for(stack, members)
        for i, key in enumerate(keys):
            clients[i % 3].set(key, f"v1-{i}", consistency="quorum")
        # Every replica has every key (the third copy is sent in the background).
        wait_for(
            lambda: all(node_stats(n.address).records == len(keys) for n in members),
            timeout=10,
            what="every node to store every key",
        )

        members[2].kill()
        survivors, alive = members[:2], clients[:2]
        for client in alive:
            for i, key in enumerate(keys):
                assert value_of(client.get(key, consistency="one")) == f"v1-{i}".encode(), key
                assert value_of(client.get(key, consistency="quorum")) == f"v1-{i}".encode(), key
        for i, key in enumerate(keys):
            alive[i % 2].set(key, f"v2-{i}", consistency="quorum")
        for client in alive:
            for i, key in enumerate(keys):
                assert value_of(client.get(key, consistency="quorum")) == f"v2-{i}".encode(), key

        slowest_all = 0.0
        for i, client in enumerate(alive):
            for key in keys[i * 5 : i * 5 + 5]:
                started = time.monotonic()
                with pytest.raises(Unavailable) as raised:
                    client.set(key, "never", consistency="all")
                slowest_all = max(slowest_all, time.monotonic() - started)
                assert_unavailable_counts(raised.value)
                assert raised.value.metadata["needed"] == "3"
        assert slowest_all < FAIL_FAST_S
        print(f"ALL write with 1 of 3 replicas dead failed after at most {slowest_all:.3f}s")

        survivors[1].kill()
        last = alive[0]
        slowest_quorum = 0.0
        for key in keys[:10]:
            started = time.monotonic()
            with pytest.raises(Unavailable) as raised:
                last.set(key, "never", consistency="quorum")
            slowest_quorum = max(slowest_quorum, time.monotonic() - started)
            assert_unavailable_counts(raised.value)
            assert raised.value.metadata["needed"] == "2"
        assert slowest_quorum < FAIL_FAST_S
        print(f"QUORUM write with 2 of 3 replicas dead failed after at most {slowest_quorum:.3f}s")
        # Nothing reported success, and the last node still serves what it has.
        for i, key in enumerate(keys[:10]):
            assert value_of(last.get(key, consistency="one")) == f"v2-{i}".encode(), key


def test_seed_defaults_stay_readable_and_writable_with_a_node_dead(
    cluster: ClusterFactory,
) -> None:
    members = cluster(3, replicas=2)
    ring = ring_of(members)
    keys = [f"sloppy-{i}" for i in range(60)]
    victim, survivors = members[1], [members[0], members[2]]
    with ExitStack() as stack:
        clients = clients_for(stack, members)
        for i, key in enumerate(keys):
            clients[i % 3].set(key, f"v1-{i}")
        victim.kill()
        alive = [clients[0], clients[2]]
        for client in alive:
            for i, key in enumerate(keys):
                assert value_of(client.get(key, consistency="quorum")) == f"v1-{i}".encode(), key
        for i, key in enumerate(keys):
            alive[i % 2].set(key, f"v2-{i}", consistency="quorum")
        for client in alive:
            for i, key in enumerate(keys):
                assert value_of(client.get(key, consistency="quorum")) == f"v2-{i}".encode(), key

        # The writes the victim missed are held by the one node outside their
        # preference list, as hints for it, until it is back.
        missed = [k for k in keys if victim.node_id in ring.replicas(k.encode(), 2)]
        assert missed
        held = sum(node_stats(node.address).hints_pending for node in survivors)
        assert held == len(missed)

        victim.start()
        for client in clients:
            for i, key in enumerate(keys):
                assert value_of(client.get(key, consistency="quorum")) == f"v2-{i}".encode(), key
    stop_all(members)
    # Back, the victim got every write it missed (handed off or read-repaired).
    engine = LmdbEngine(victim.data_dir)
    try:
        for key in missed:
            record = engine.get(key.encode())
            assert record is not None, key
            assert record.value == f"v2-{keys.index(key)}".encode(), key
    finally:
        engine.close()


# -- features across the cluster ----------------------------------------------------


def test_a_ttl_value_expires_on_every_node(shared: list[NodeProcess]) -> None:
    ttl_s = 2.0
    with ExitStack() as stack:
        clients = clients_for(stack, shared)
        set_at_ms = time.time() * 1000
        clients[0].set("ttl-key", "short-lived", ttl=ttl_s)
        for client in clients:
            entry = client.get("ttl-key", consistency="one")
            assert value_of(entry) == b"short-lived"
            assert entry is not None
            assert abs(entry.expires_at_ms - (set_at_ms + ttl_s * 1000)) < 1000
        clients[1].set("ttl-control", "forever")
        wait_for(
            lambda: all(c.get("ttl-key", consistency="one") is None for c in clients),
            timeout=ttl_s + 10,
            interval=0.1,
            what="the value to expire on every node",
        )
        assert time.time() * 1000 >= set_at_ms + ttl_s * 1000 - 50
        for client in clients:
            assert value_of(client.get("ttl-control", consistency="one")) == b"forever"


def test_multi_get_and_multi_set_span_the_cluster(shared: list[NodeProcess]) -> None:
    ring = ring_of(shared)
    items = {f"batch-{i}": f"value-{i}" for i in range(150)}
    owners = {ring.replicas(key.encode(), 1)[0] for key in items}
    assert owners == {node.node_id for node in shared}
    with ExitStack() as stack:
        clients = clients_for(stack, shared)
        versions = clients[0].set_many(items)
        assert set(versions) == set(items)
        assert all(v > 0 for v in versions.values())
        wanted = [*items, "batch-missing"]
        for client in clients:
            found = client.get_many(wanted)
            assert found.pop("batch-missing") is None
            assert {k: e.value.decode() for k, e in found.items() if e is not None} == items
            assert {k: e.version for k, e in found.items() if e is not None} == versions

        too_many = {f"batch-big-{i}": "x" for i in range(1001)}
        with pytest.raises(InvalidArgument) as raised:
            clients[1].set_many(too_many)
        assert raised.value.reason == "TOO_MANY_KEYS"
        assert clients[2].get_many(list(too_many)[:20]) == dict.fromkeys(list(too_many)[:20])

    request = kv_pb2.MultiSetRequest(
        entries=[
            kv_pb2.SetRequest(key="batch-versioned-a", value=b"a"),
            kv_pb2.SetRequest(key="batch-versioned-b", value=b"b", version=5),
        ]
    )
    with (
        grpc.insecure_channel(shared[2].address) as channel,
        pytest.raises(grpc.RpcError) as rpc_error,
    ):
        kv_pb2_grpc.KeyValueStub(channel).MultiSet(request, timeout=5)
    error = from_rpc_error(rpc_error.value)
    assert isinstance(error, InvalidArgument), error
    with ringkv.Client(shared[0].address, token_aware=False) as reader:
        assert reader.get_many(["batch-versioned-a", "batch-versioned-b"]) == {
            "batch-versioned-a": None,
            "batch-versioned-b": None,
        }


def test_a_delete_through_one_node_is_seen_through_every_node(
    shared: list[NodeProcess],
) -> None:
    with ExitStack() as stack:
        clients = clients_for(stack, shared)
        for i in range(6):
            key = f"delete-{i}"
            clients[i % 3].set(key, "doomed")
            assert clients[(i + 1) % 3].delete(key) is True
            for client in clients:
                assert client.get(key) is None, key
            assert clients[(i + 2) % 3].delete(key) is False
            assert clients[i % 3].delete(key) is False


def test_a_conditional_write_through_a_non_owner_is_forwarded_and_honoured(
    shared: list[NodeProcess],
) -> None:
    ring = ring_of(shared)
    entry_node = shared[0]
    key = next(
        k
        for k in (f"conditional-{i}" for i in range(1000))
        if entry_node.node_id not in ring.replicas(k.encode(), 2)
    )
    before = node_stats(entry_node.address).forwarded_writes
    with ExitStack() as stack:
        clients = clients_for(stack, shared)
        client = clients[0]
        v1 = client.set(key, "a", if_absent=True)
        with pytest.raises(PreconditionFailed):
            client.set(key, "b", if_absent=True)
        with pytest.raises(PreconditionFailed):
            client.set(key, "b", if_version=v1 + 1)
        v2 = client.set(key, "c", if_version=v1)
        assert v2 > v1
        with pytest.raises(PreconditionFailed) as raised:
            client.set(key, "d", if_version=v1)
        assert raised.value.metadata.get("actual") == str(v2)
        with pytest.raises(PreconditionFailed):
            client.delete(key, if_version=v1)
        assert client.delete(key, if_version=v2) is True
        v3 = client.set(key, "e", if_absent=True)
        for reader in clients:
            assert seen(reader.get(key)) == (b"e", v3)
    assert node_stats(entry_node.address).forwarded_writes - before == 8


# -- hinted handoff ------------------------------------------------------------------


def test_hints_are_handed_off_when_the_node_is_back_then_dropped(
    cluster: ClusterFactory,
) -> None:
    """RF 2 with node1 down: its writes go to a stand-in as hints. Once node1
    is back, the stand-in hands them off and forgets them; node1 then holds
    every write it missed, without any read repairing it."""
    members = cluster(3, "--hint-replay-interval", "0.2", replicas=2)
    first, second, third = members
    ring = Ring(tuple(node.node_id for node in members))
    keys = [
        k for k in (f"handoff-{i}" for i in range(300)) if "node1" in ring.replicas(k.encode(), 2)
    ]
    keys = keys[:40]
    first.kill()
    with ringkv.Client(second.address, token_aware=False) as client:
        for key in keys:
            client.set(key, f"missed-{key}")
    pending = sum(node_stats(node.address).hints_pending for node in (second, third))
    assert pending == len(keys), pending
    first.start()
    wait_for(
        lambda: sum(node_stats(n.address).hints_pending for n in (second, third)) == 0,
        timeout=20,
        what="every hint handed off",
    )
    replayed = sum(node_stats(node.address).hints_replayed for node in (second, third))
    assert replayed == len(keys)
    assert node_stats(first.address).read_repairs == 0
    for node in members:
        assert node.stop() == 0, node.log_text()
    engine = LmdbEngine(first.data_dir)
    try:
        for key in keys:
            record = engine.get(key.encode())
            assert record is not None, key
            assert record.value == f"missed-{key}".encode()
    finally:
        engine.close()


def test_a_replica_whose_write_fails_after_the_level_is_met_gets_a_hint(
    cluster: ClusterFactory,
) -> None:
    """RF 3: node1 is frozen (SIGSTOP) while node2 coordinates writes at
    QUORUM. node2 and node3 meet the level at once; node1's calls fail at the
    peer timeout afterwards, and node2 keeps a hint for each. Once node1 runs
    again it holds every write, with no read or anti-entropy to repair it."""
    members = cluster(
        3,
        "--hint-replay-interval", "0.2",
        "--peer-timeout", "0.5",
        "--anti-entropy-interval", "0",
        replicas=3,
    )  # fmt: skip
    first, second, _third = members
    wait_for_leader(members)
    ring = Ring(tuple(node.node_id for node in members))
    keys = [
        k for k in (f"late-{i}" for i in range(100)) if ring.replicas(k.encode(), 3)[0] == "node2"
    ]
    keys = keys[:5]
    with ringkv.Client(second.address, token_aware=False, timeout=5) as client:
        client.set("warm", "up", consistency="all")  # every channel connected
        first.signal(signal.SIGSTOP)
        try:
            for key in keys:
                client.set(key, f"late-{key}", consistency="quorum")
            wait_for(
                lambda: node_stats(second.address).hints_pending == len(keys),
                timeout=15,
                what="a hint for each write node1 missed",
            )
        finally:
            first.signal(signal.SIGCONT)
    wait_for(
        lambda: node_stats(second.address).hints_pending == 0,
        timeout=20,
        what="the hints handed off",
    )
    assert node_stats(first.address).read_repairs == 0
    stop_all(members)
    stored = stored_records(first)
    assert {key: stored[key].value for key in keys} == {key: f"late-{key}".encode() for key in keys}
