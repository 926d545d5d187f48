"""A real cluster's consistency: last-writer-wins under clock skew, read repair, linearizability."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field

import ringkv
from ringkv.client.admin import node_stats
from ringkv.core.errors import DeadlineExceeded, RingkvError, Unavailable
from ringkv.core.hlc import physical_ms
from ringkv.core.linearizability import HistoryRecorder, Invocation, OpKind, check_history
from ringkv.core.records import Record
from ringkv.core.ring import Ring
from ringkv.storage.lmdb_engine import LmdbEngine
from tests.support.nodes import ClusterFactory, NodeProcess, stop_all, wait_for, wait_for_leader

CLOCK_OFFSETS_MS = {"node2": -300_000, "node3": +120_000}
"""node2 runs five minutes behind, node3 two minutes ahead."""
NO_CLOCK_GUARD = ("--max-clock-offset", "0")
"""Tests of the hybrid logical clock under skews the clock guard would refuse."""
WRITERS = 4
WRITES_PER_WRITER = 50
LOAD_TIME_LIMIT_S = 30.0


# -- helpers ---------------------------------------------------------------------


def ring_of(members: Sequence[NodeProcess]) -> Ring:
    return Ring(tuple(node.node_id for node in members))


def seen(entry: ringkv.Entry | None) -> tuple[bytes, int] | None:
    """A read's value and version, or None when the key is absent."""
    return None if entry is None else (entry.value, entry.version)


def key_with_replicas(ring: Ring, prefix: str, replicas: tuple[str, ...]) -> str:
    """A key whose preference list is exactly ``replicas``."""
    for i in range(100_000):
        key = f"{prefix}-{i}"
        if ring.replicas(key.encode(), len(replicas)) == replicas:
            return key
    raise AssertionError(f"no key with replicas {replicas}")


def stored_record(node: NodeProcess, key: str) -> Record | None:
    """A stopped node's own record of a key, from its LMDB data dir."""
    engine = LmdbEngine(node.data_dir)
    try:
        return engine.get(key.encode())
    finally:
        engine.close()


# -- clock skew -------------------------------------------------------------------


def test_skewed_clocks_keep_last_writer_wins_and_read_repair_converges(
    cluster: ClusterFactory,
) -> None:
    # The clock guard would stop every node here: these clocks are minutes
    # apart. What is tested is what holds beneath it, the hybrid logical clock.
    members = cluster(3, *NO_CLOCK_GUARD, replicas=3, start=False)
    for node in members:
        if node.node_id in CLOCK_OFFSETS_MS:
            node.extra_args += ["--clock-offset-ms", f"{CLOCK_OFFSETS_MS[node.node_id]:+d}"]
    for node in members:
        node.launch()
    for node in members:
        node.wait_serving()
    node3 = members[2]
    # node3 (ahead) owns the key and coordinates its writes; node2 (behind) is next.
    key = key_with_replicas(ring_of(members), "skew", ("node3", "node2", "node1"))

    # Concurrent writers through every node.
    def write_concurrently(index: int) -> list[tuple[int, str]]:
        written: list[tuple[int, str]] = []
        deadline = time.monotonic() + LOAD_TIME_LIMIT_S
        with ringkv.Client(members[index % 3].address, token_aware=False) as client:
            for seq in range(WRITES_PER_WRITER):
                if time.monotonic() > deadline:
                    break
                value = f"writer{index}-{seq}"
                written.append((client.set(key, value, consistency="quorum"), value))
        return written

    with ThreadPoolExecutor(WRITERS) as pool:
        results = [f.result() for f in [pool.submit(write_concurrently, i) for i in range(WRITERS)]]
    writes = [w for result in results for w in result]
    assert len(writes) >= WRITERS * 10, "the writers barely wrote"
    newest = max(version for version, _ in writes)
    winners = {value for version, value in writes if version == newest}
    # node3 stamped them, with its clock two minutes ahead.
    ahead_ms = physical_ms(newest) - time.time() * 1000
    assert 60_000 < ahead_ms < 180_000, f"node3's versions are {ahead_ms:.0f} ms ahead"

    with ExitStack() as stack:
        clients = [
            stack.enter_context(ringkv.Client(n.address, token_aware=False)) for n in members
        ]
        for client in clients:
            entry = seen(client.get(key, consistency="quorum"))
            assert entry in {(value.encode(), newest) for value in winners}

        # One client's sequential writes through different nodes: each is newer.
        previous = newest
        for j in range(30):
            version = clients[j % 3].set(key, f"chain-{j}", consistency="quorum")
            assert version > previous, f"write {j} got an older version"
            previous = version
            assert seen(clients[(j + 1) % 3].get(key, consistency="quorum")) == (
                f"chain-{j}".encode(),
                version,
            )

        # The owner (ahead) dies: node2, five minutes behind, coordinates next,
        # and its version must still be newer than everything node3 stamped.
        node3.kill()
        v_node2 = clients[1].set(key, "after-owner-died-1", consistency="quorum")
        assert v_node2 > previous
        v_node1 = clients[0].set(key, "after-owner-died-2", consistency="quorum")
        assert v_node1 > v_node2
        for client in clients[:2]:
            assert seen(client.get(key, consistency="quorum")) == (b"after-owner-died-2", v_node1)

        # node3 comes back stale: a read through it returns the newest value
        # and repairs its own replica.
        node3.start()
        assert node_stats(node3.address).read_repairs == 0
        assert seen(clients[2].get(key, consistency="quorum")) == (b"after-owner-died-2", v_node1)
        wait_for(
            lambda: node_stats(node3.address).read_repairs >= 1,
            timeout=10,
            what="node3 to repair its stale replica",
        )
        wait_for(
            lambda: all(
                (e := c.get(key, consistency="one")) is not None and e.version == v_node1
                for c in clients
            ),
            timeout=10,
            what="every replica to hold the newest version",
        )
    stop_all(members)
    records = {node.node_id: stored_record(node, key) for node in members}
    for node_id, record in records.items():
        assert record is not None, node_id
        assert (record.value, record.version.timestamp) == (b"after-owner-died-2", v_node1), node_id
    assert len({record.version for record in records.values() if record is not None}) == 1


# -- linearizability ----------------------------------------------------------------

LIN_CLIENTS = 6
LIN_DURATION_S = 4.0
LIN_OPS_PER_CLIENT = 300


@dataclass
class Workload:
    """A linearizable read/write/delete workload over a few keys, recorded as a history."""

    endpoints: list[str]
    keys: list[str]
    seed: int
    recorder: HistoryRecorder = field(default_factory=HistoryRecorder)
    lock: threading.Lock = field(default_factory=threading.Lock)
    completed: int = 0
    completed_times: list[float] = field(default_factory=list)
    failures: dict[str, int] = field(default_factory=dict)

    def run(self, *, meanwhile: Callable[[Workload, float], None] | None = None) -> None:
        """Run the clients until the time or count is up; ``meanwhile`` runs alongside."""
        deadline = time.monotonic() + LIN_DURATION_S
        with ThreadPoolExecutor(LIN_CLIENTS) as pool:
            futures = [pool.submit(self._client, i, deadline) for i in range(LIN_CLIENTS)]
            try:
                if meanwhile is not None:
                    meanwhile(self, deadline)
            finally:
                for future in futures:
                    future.result()

    def _client(self, index: int, deadline: float) -> None:
        rng = random.Random(self.seed * 1000 + index)
        # Each client starts at a different node and moves on to the next one
        # when a call fails. It never retries a call itself: a retried write
        # could take effect twice, which no single operation in the history can
        # explain.
        start = index % len(self.endpoints)
        order = self.endpoints[start:] + self.endpoints[:start]
        retry = ringkv.RetryPolicy(attempts=1)
        with ExitStack() as stack:
            clients = [
                stack.enter_context(
                    ringkv.Client(address, token_aware=False, timeout=3.0, retry=retry)
                )
                for address in order
            ]
            current = 0
            for seq in range(LIN_OPS_PER_CLIENT):
                if time.monotonic() >= deadline:
                    return
                client = clients[current]
                key = rng.choice(self.keys)
                roll = rng.random()
                if roll < 0.5:
                    ok = self._read(client, index, key)
                elif roll < 0.9:
                    ok = self._write(client, index, key, f"client{index}-{seq}")
                else:
                    ok = self._delete(client, index, key)
                if not ok:
                    current = (current + 1) % len(clients)

    def _read(self, client: ringkv.Client, index: int, key: str) -> bool:
        handle = self._invoke(index, OpKind.READ, key, None)
        try:
            entry = client.get(key, consistency="linearizable")
        except RingkvError as error:
            self._failed(error)
            with self.lock:
                self.recorder.fail(handle)  # a failed read tells nothing
            return False
        self._complete(handle, None if entry is None else entry.value)
        return True

    def _write(self, client: ringkv.Client, index: int, key: str, value: str) -> bool:
        handle = self._invoke(index, OpKind.WRITE, key, value.encode())
        try:
            client.set(key, value, consistency="linearizable")
        except RingkvError as error:
            self._failed(error)
            with self.lock:
                self.recorder.unknown(handle)  # it may have reached some replicas
            return False
        self._complete(handle, None)
        return True

    def _delete(self, client: ringkv.Client, index: int, key: str) -> bool:
        handle = self._invoke(index, OpKind.DELETE, key, None)
        try:
            client.delete(key, consistency="linearizable")
        except RingkvError as error:
            self._failed(error)
            with self.lock:
                self.recorder.unknown(handle)
            return False
        self._complete(handle, None)
        return True

    def _invoke(self, index: int, kind: OpKind, key: str, value: bytes | None) -> Invocation:
        called = time.monotonic()
        with self.lock:
            return self.recorder.invoke(index, kind, key.encode(), value, called)

    def _complete(self, handle: Invocation, result: bytes | None) -> None:
        returned = time.monotonic()
        with self.lock:
            self.recorder.complete(handle, result, returned)
            self.completed += 1
            self.completed_times.append(returned)

    def _failed(self, error: RingkvError) -> None:
        assert isinstance(error, Unavailable | DeadlineExceeded), f"unexpected failure: {error!r}"
        with self.lock:
            name = type(error).__name__
            self.failures[name] = self.failures.get(name, 0) + 1

    def check(self, *, min_completed: int) -> None:
        operations = self.recorder.operations()
        result = check_history(operations)
        print(
            f"{len(operations)} operations, {self.completed} completed, "
            f"failures {self.failures}, {result.explored} configurations explored"
        )
        assert self.completed >= min_completed, "too few operations to judge"
        assert result.ok, result.describe()


def linearizable_keys(members: Sequence[NodeProcess], prefix: str) -> list[str]:
    """One key owned by each node, so every node coordinates writes."""
    ring = ring_of(members)
    keys: list[str] = []
    for i in range(10_000):
        key = f"{prefix}-{i}"
        owner = ring.replicas(key.encode(), 1)[0]
        if owner not in {ring.replicas(k.encode(), 1)[0] for k in keys}:
            keys.append(key)
        if len(keys) == len(members):
            return keys
    raise AssertionError("no keys for every owner")


def test_linearizable_reads_and_writes_form_a_linearizable_history(
    cluster: ClusterFactory,
) -> None:
    members = cluster(3, replicas=3)
    workload = Workload([n.address for n in members], linearizable_keys(members, "lin"), seed=1)
    workload.run()
    workload.check(min_completed=60)


def test_linearizable_history_survives_a_node_killed_midway(cluster: ClusterFactory) -> None:
    members = cluster(3, replicas=3)
    # The bully election's winner leads before the workload starts, so the
    # victim is a follower: killed, it takes no election with it. (Before,
    # node1, the bootstrapping node, was sometimes still leading when it was
    # killed, and the survivors spent most of the time left electing.)
    wait_for_leader(members, "node3", timeout=20)
    victim = members[0]
    killed_at: list[float] = []

    def kill_midway(workload: Workload, deadline: float) -> None:
        # Halfway through the time or the operations, whichever comes first.
        halfway = deadline - LIN_DURATION_S / 2
        wait_for(
            lambda: (
                time.monotonic() >= halfway
                or workload.completed >= LIN_CLIENTS * LIN_OPS_PER_CLIENT // 2
            ),
            timeout=LIN_DURATION_S,
            what="halfway",
        )
        victim.kill()
        killed_at.append(time.monotonic())

    workload = Workload(
        [n.address for n in members], linearizable_keys(members, "lin-kill"), seed=2
    )
    workload.run(meanwhile=kill_midway)
    after_kill = sum(1 for t in workload.completed_times if t > killed_at[0])
    before_kill = workload.completed - after_kill
    print(f"{before_kill} operations completed before the kill, {after_kill} after")
    assert before_kill >= 20, "too little happened before the kill to judge"
    assert after_kill >= 20, "the two survivors served too little to judge"
    workload.check(min_completed=60)


# -- writes are never lost to a lagging clock ---------------------------------------


def test_a_write_from_a_lagging_coordinator_is_stamped_past_the_newer_version(
    cluster: ClusterFactory,
) -> None:
    """node1 runs a minute ahead and is the only coordinator of keys that node3
    does not replicate, so node3's clock never heard of node1's. A later write
    coordinated by node3 reaches replicas holding node1's newer version: they
    say so, node3 stamps the write again past it, and the acknowledged write is
    what everyone reads."""
    members = cluster(3, *NO_CLOCK_GUARD, replicas=2, start=False)
    members[0].extra_args += ["--clock-offset-ms", "+60000"]
    for node in members:
        node.launch()
    for node in members:
        node.wait_serving()
    first, _, third = members
    ring = ring_of(members)
    keys = [key_with_replicas(ring, f"skewed-{i}-", ("node1", "node2")) for i in range(5)]
    with (
        ringkv.Client(first.address, token_aware=False) as ahead,
        ringkv.Client(third.address, token_aware=False) as behind,
    ):
        old = {key: ahead.set(key, "old") for key in keys}
        # MultiSet is coordinated by the node that receives it, owner or not.
        new = behind.set_many(dict.fromkeys(keys, "new"))
        for key in keys:
            assert new[key] > old[key], key
            for client in (ahead, behind):
                entry = client.get(key)
                assert entry is not None and entry.value == b"new", key
    stop_all(members)
