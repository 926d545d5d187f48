"""Anti-entropy, Scan and Merkle between real replicas: in-process gRPC
servers on 127.0.0.1 over LMDB engines in temporary dirs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import grpc
import pytest

from ringkv.core.errors import Unavailable
from ringkv.core.hlc import LOGICAL_BITS, HybridLogicalClock, Version
from ringkv.core.merkle import DEFAULT_DEPTH, MAX_DEPTH, MerkleTree
from ringkv.core.records import Mutation, Record
from ringkv.core.ring import TOKEN_SPACE, Ring
from ringkv.core.tokens import token_of
from ringkv.server.cluster.cluster_view import ClusterView
from ringkv.server.data.anti_entropy import AntiEntropy, RepairReport, ReplicaView
from ringkv.server.data.commit import CommitQueue
from ringkv.server.data.local_store import LocalStore
from ringkv.server.data.scan_pages import PAGE_RECORDS
from ringkv.server.data.tree_cache import span_tree
from ringkv.server.services.replica_service import ReplicaService
from ringkv.server.transport import rpc
from ringkv.server.transport.peers import Peer
from ringkv.storage import Engine, FsyncMode
from ringkv.storage.lmdb_engine import LmdbEngine
from ringkv.storage.memory import MemoryEngine

T = TypeVar("T")

NOW = 1_700_000_280_000
"""A multiple of the purge horizon's step (a tenth of GRACE_MS), so the horizon is exact."""
GRACE_MS = 3_600_000
OLD = 2 * GRACE_MS
"""An age past the grace period: tombstones this old may be purged."""
# Like a node's server: peers batch many records per call.
SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", 256 << 20),
    ("grpc.max_send_message_length", 256 << 20),
]


def run(scenario: Callable[[], Awaitable[T]]) -> T:
    async def main() -> T:
        return await scenario()

    return asyncio.run(main())


def _cluster_view_is_a_replica_view(view: ClusterView) -> ReplicaView:
    """Checked by mypy: the node's ClusterView is what AntiEntropy needs."""
    return view


class FakeClock:
    """Unix milliseconds that move only when a test moves them."""

    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def at(age_ms: int, node: str, logical: int = 0) -> Version:
    """A version written ``age_ms`` before NOW by ``node``."""
    return Version(((NOW - age_ms) << LOGICAL_BITS) + logical, node)


def value(key: bytes, age_ms: int, node: str, *, expires_at_ms: int = 0) -> Record:
    return Record(
        key, b"v:" + node.encode() + b":" + key[:20], at(age_ms, node), False, expires_at_ms
    )


def tombstone(key: bytes, age_ms: int, node: str) -> Record:
    return Record(key, b"", at(age_ms, node), tombstone=True)


@dataclass
class Replica:
    """One node's replica, served over gRPC."""

    node_id: str
    engine: Engine
    store: LocalStore
    address: str


@dataclass
class View:
    """Stands in for the node's ClusterView (whose constructor needs the membership layer)."""

    node_id: str
    ring: Ring
    replicas: int
    peers: dict[str, Peer] = field(default_factory=dict)

    def is_live(self, node_id: str) -> bool:
        return node_id == self.node_id or self.peers[node_id].alive


class Cluster:
    """Replicas started in this event loop, and the anti-entropy of any one of them."""

    def __init__(self, root: Path, now_ms: FakeClock, stack: AsyncExitStack) -> None:
        self.replicas: dict[str, Replica] = {}
        self._root = root
        self._now_ms = now_ms
        self._stack = stack

    async def start(self, node_id: str, engine: Engine | None = None) -> Replica:
        if engine is None:
            engine = LmdbEngine(self._root / node_id, FsyncMode.NEVER)
        self._stack.callback(engine.close)
        commits = CommitQueue(engine)
        self._stack.push_async_callback(commits.close)
        store = LocalStore(engine, commits)
        service = ReplicaService(store, HybridLogicalClock(node_id), self._now_ms, engine=engine)
        server = grpc.aio.server(options=SERVER_OPTIONS)
        port = server.add_insecure_port("127.0.0.1:0")
        server.add_generic_rpc_handlers([rpc.generic_handler(service, rpc.Gate())])
        await server.start()
        self._stack.push_async_callback(server.stop, None)
        replica = Replica(node_id, engine, store, f"127.0.0.1:{port}")
        self.replicas[node_id] = replica
        return replica

    def peer(self, me: str, other: str) -> Peer:
        peer = Peer(other, self.replicas[other].address, HybridLogicalClock(me), timeout_s=10.0)
        self._stack.push_async_callback(peer.close)
        return peer

    def anti_entropy(self, me: str, replicas: int) -> tuple[AntiEntropy, View]:
        ring = Ring(tuple(self.replicas), epoch=1, vnodes_per_node=8)
        view = View(me, ring, replicas)
        view.peers = {other: self.peer(me, other) for other in self.replicas if other != me}
        replica = self.replicas[me]
        ae = AntiEntropy(
            view, replica.store, replica.engine, self._now_ms, tombstone_grace_ms=GRACE_MS
        )
        return ae, view


@asynccontextmanager
async def cluster(root: Path, now_ms: FakeClock | None = None) -> AsyncIterator[Cluster]:
    async with AsyncExitStack() as stack:
        yield Cluster(root, now_ms or FakeClock(NOW), stack)


def key_of(index: int) -> bytes:
    """Short keys, and every fourth one long enough to be stored by digest."""
    key = b"key-%04d" % index
    return key if index % 4 else (key + b":").ljust(300 + index, b"x")


CASES = 9


def case(index: int, x: str, y: str) -> tuple[Record | None, ...]:
    """Key ``index`` as ``x`` and ``y`` hold it, then as each should once ``x``
    repaired with ``y``."""
    key = key_of(index)
    new_x, new_y = value(key, 1_000, x), value(key, 1_000, y)
    old_x, old_y = value(key, 5_000, x), value(key, 5_000, y)
    match index % CASES:
        case 0:  # x alone holds it
            return new_x, None, new_x, new_x
        case 1:  # y alone holds it
            return None, new_y, new_y, new_y
        case 2:  # x's is newer
            return new_x, old_y, new_x, new_x
        case 3:  # y's is newer
            return old_x, new_y, new_y, new_y
        case 4:  # the same version on both
            return new_x, new_x, new_x, new_x
        case 5:  # x deleted it after y's write
            dead = tombstone(key, 1_000, x)
            return dead, old_y, dead, dead
        case 6:  # a tombstone past its grace period, on x only: it stays where it is
            dead = tombstone(key, OLD, x)
            return dead, None, dead, None
        case 7:  # y's old tombstone still beats x's older value
            dead = tombstone(key, OLD, y)
            return value(key, OLD + 1_000, x), dead, dead, dead
        case _:  # a value expired long ago, on y only: it stays where it is
            expired = value(key, OLD, y, expires_at_ms=NOW - OLD)
            return None, expired, None, expired


def hold(replica: Replica, records: Iterator[Record | None]) -> None:
    replica.engine.apply([Mutation(r) for r in records if r is not None])


async def peer_root(ae: AntiEntropy, view: View, peer_id: str) -> int:
    spans = ae.shared_spans(peer_id)
    leaves = await view.peers[peer_id].merkle(spans, DEFAULT_DEPTH, ae.purge_horizon_ms())
    return MerkleTree(DEFAULT_DEPTH, leaves).root


def test_a_round_gives_two_replicas_the_newest_version_of_every_key(tmp_path: Path) -> None:
    keys = 180
    cases = [case(i, "a", "b") for i in range(keys)]

    async def scenario() -> tuple[RepairReport, RepairReport, dict[str, Replica], bool]:
        async with cluster(tmp_path) as nodes:
            a, b = await nodes.start("a"), await nodes.start("b")
            hold(a, (c[0] for c in cases))
            hold(b, (c[1] for c in cases))
            ae, view = nodes.anti_entropy("a", replicas=2)
            assert ae.shared_spans("b") == [(0, TOKEN_SPACE)]
            assert await ae.local_root("b") != await peer_root(ae, view, "b")

            first = await ae.run_round()
            second = await ae.run_round()
            roots_equal = await ae.local_root("b") == await peer_root(ae, view, "b")
            for i, (_, _, want_a, want_b) in enumerate(cases):
                assert a.engine.get(key_of(i)) == want_a, i
                assert b.engine.get(key_of(i)) == want_b, i
            return first, second, nodes.replicas, roots_equal

    first, second, _, roots_equal = run(scenario)

    per_case = keys // CASES
    assert first.peers == 1
    assert first.skipped == first.failed == ()
    assert first.keys_pulled == per_case * 3  # cases 1, 3 and 7
    assert first.keys_pushed == per_case * 3  # cases 0, 2 and 5
    assert 0 < first.leaves_differing <= per_case * 6
    assert not first.repaired[0].in_sync
    assert roots_equal
    assert second.repaired[0].in_sync
    assert second.keys_pulled == second.keys_pushed == 0


def test_a_round_repairs_only_the_ranges_each_peer_shares(tmp_path: Path) -> None:
    """Three nodes, two replicas: "a" repairs the keys it holds with each peer;
    the keys "b" and "c" hold without it are theirs to repair."""

    async def scenario() -> None:
        async with cluster(tmp_path) as nodes:
            for node_id in ("a", "b", "c"):
                await nodes.start(node_id)
            ae, view = nodes.anti_entropy("a", replicas=2)
            wanted: dict[bytes, dict[str, Record | None]] = {}
            for i in range(300):
                x, y = view.ring.replicas(key_of(i), 2)
                held_x, held_y, want_x, want_y = case(i, x, y)
                hold(nodes.replicas[x], iter([held_x]))
                hold(nodes.replicas[y], iter([held_y]))
                if "a" not in (x, y):
                    want_x, want_y = held_x, held_y
                wanted[key_of(i)] = {x: want_x, y: want_y}
            spans = {peer: ae.shared_spans(peer) for peer in ("b", "c")}
            assert all(len(s) > 0 for s in spans.values())
            assert sum(end - start for s in spans.values() for start, end in s) < TOKEN_SPACE

            report = await ae.run_round()

            assert report.peers == 2
            assert report.keys_pulled > 0
            assert report.keys_pushed > 0
            for key, holders in wanted.items():
                for node_id, want in holders.items():
                    assert nodes.replicas[node_id].engine.get(key) == want, (key, node_id)
            for peer in ("b", "c"):
                assert await ae.local_root(peer) == await peer_root(ae, view, peer)

    run(scenario)


def test_down_and_failing_peers_are_reported_and_the_others_repaired(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with cluster(tmp_path) as nodes:
            for node_id in ("a", "b", "c", "d"):
                await nodes.start(node_id)
            b = nodes.replicas["b"]
            ae, view = nodes.anti_entropy("a", replicas=4)
            b.engine.apply([Mutation(value(b"k", 10, "b"))])
            view.peers["c"].alive = False
            # "d" is believed up but no longer listens.
            view.peers["d"] = Peer("d", "127.0.0.1:1", HybridLogicalClock("a"), timeout_s=10.0)

            report = await ae.run_round()

            await view.peers["d"].close()
            assert [repair.peer for repair in report.repaired] == ["b"]
            assert report.keys_pulled == 1
            assert report.skipped == ("c",)
            assert report.failed == ("d",)
            assert not view.peers["d"].alive
            assert nodes.replicas["a"].engine.get(b"k") == value(b"k", 10, "b")

    run(scenario)


def test_purge_drops_old_tombstones_and_long_expired_values_only(tmp_path: Path) -> None:
    now = FakeClock(NOW)
    old_dead, new_dead = tombstone(b"old-dead", OLD, "a"), tombstone(b"new-dead", 1_000, "a")
    long_key = (b"long-dead:").ljust(700, b"x")
    long_dead = tombstone(long_key, OLD, "a")
    expired = value(b"expired", OLD, "a", expires_at_ms=NOW - GRACE_MS - 1)
    just_expired = value(b"just-expired", OLD, "a", expires_at_ms=NOW - 1)
    old_live = value(b"old-live", 10 * OLD, "a")
    records = [old_dead, new_dead, long_dead, expired, just_expired, old_live]

    async def scenario() -> tuple[int, int, list[Record], list[Record]]:
        async with cluster(tmp_path, now) as nodes:
            a = await nodes.start("a")
            a.engine.apply([Mutation(r) for r in records])
            ae, _ = nodes.anti_entropy("a", replicas=1)

            first = await ae.purge_expired_tombstones()
            left = list(a.engine.scan(0, TOKEN_SPACE))
            now.now += GRACE_MS
            second = await ae.purge_expired_tombstones()
            finally_left = list(a.engine.scan(0, TOKEN_SPACE))
            # Nothing written since, the horizon in the same step: purges scan
            # no more. Plain values written change nothing; a tombstone does.
            scans = 0
            real_scan = a.engine.scan

            def counted(start: int, end: int) -> Iterator[Record]:
                nonlocal scans
                scans += 1
                return real_scan(start, end)

            a.engine.scan = counted  # type: ignore[method-assign,assignment]
            idle = [await ae.purge_expired_tombstones() for _ in range(3)]
            assert (idle, scans) == ([0, 0, 0], 0)
            await a.store.apply_many([value(b"plain%d" % i, 10, "a") for i in range(5)])
            assert (await ae.purge_expired_tombstones(), scans) == (0, 0)
            # (Written before the horizon the clock moved past: purged at once.)
            await a.store.apply(tombstone(b"plain1", 5, "a"))
            assert (await ae.purge_expired_tombstones(), scans) == (1, 1)
            assert (await ae.purge_expired_tombstones(), scans) == (0, 1)
            return first, second, left, finally_left

    first, second, left, finally_left = run(scenario)

    assert first == 3
    assert {r.key for r in left} == {b"new-dead", b"just-expired", b"old-live"}
    assert second == 2
    assert finally_left == [old_live]


class WritesDuringScan(MemoryEngine):
    """An engine on which a write lands between the purge's scan and its purge."""

    def __init__(self, write: Record) -> None:
        super().__init__()
        self._write = write

    def scan(self, start_token: int, end_token: int) -> Iterator[Record]:
        seen = list(super().scan(start_token, end_token))
        self.apply([Mutation(self._write)])
        return iter(seen)


def test_purge_keeps_a_record_rewritten_after_the_scan_saw_it(tmp_path: Path) -> None:
    revived = value(b"k", 0, "b")
    engine = WritesDuringScan(revived)
    engine.apply([Mutation(tombstone(b"k", OLD, "a")), Mutation(tombstone(b"other", OLD, "a"))])

    async def scenario() -> None:
        async with cluster(tmp_path) as nodes:
            await nodes.start("a", engine)
            ae, _ = nodes.anti_entropy("a", replicas=1)
            assert await ae.purge_expired_tombstones() == 1
            assert engine.get(b"k") == revived
            assert engine.get(b"other") is None

    run(scenario)


def test_replicas_that_purged_at_different_times_still_agree(tmp_path: Path) -> None:
    shared = [tombstone(b"dead-%d" % i, OLD, "a") for i in range(20)]
    shared += [value(b"live-%d" % i, 10, "a") for i in range(20)]

    async def scenario() -> RepairReport:
        async with cluster(tmp_path) as nodes:
            a, b = await nodes.start("a"), await nodes.start("b")
            hold(a, iter(shared))
            hold(b, iter(shared))
            ae, view = nodes.anti_entropy("a", replicas=2)
            assert await ae.purge_expired_tombstones() == 20

            assert await ae.local_root("b") == await peer_root(ae, view, "b")
            report = await ae.run_round()
            assert len(list(a.engine.scan(0, TOKEN_SPACE))) == 20
            assert len(list(b.engine.scan(0, TOKEN_SPACE))) == 40
            return report

    report = run(scenario)
    assert report.repaired[0].in_sync
    assert report.keys_pulled == 0


# --- Scan and Merkle on the wire ------------------------------------------------


def paged(peer: Peer, start: int, end: int, limit: int) -> Awaitable[list[list[Record]]]:
    async def pages() -> list[list[Record]]:
        found, cursor = [], b""
        while True:
            page, cursor = await peer.scan(start, end, cursor, limit)
            found.append(page)
            if not cursor:
                return found

    return pages()


def test_scan_pages_through_a_span_exactly_once(tmp_path: Path) -> None:
    records = [
        tombstone(key_of(i), 10, "b") if i % 7 == 0 else value(key_of(i), 10, "b")
        for i in range(2500)
    ]
    middle = sorted(token_of(r.key) for r in records)[1000]

    async def scenario() -> None:
        async with cluster(tmp_path) as nodes:
            b = await nodes.start("b")
            b.engine.apply([Mutation(r) for r in records])
            peer = nodes.peer("a", "b")
            for start, end, limit in [
                (0, TOKEN_SPACE, 100),
                (0, TOKEN_SPACE, 0),  # the server's cap
                (middle, TOKEN_SPACE, 333),
                (0, middle, 999),
                (middle, middle, 10),
            ]:
                pages = await paged(peer, start, end, limit)
                expected = list(b.engine.scan(start, end))
                assert [r for page in pages for r in page] == expected
                assert all(len(page) == (limit or PAGE_RECORDS) for page in pages[:-1])
                assert len(pages) == max(1, -(-len(expected) // (limit or PAGE_RECORDS)))

    run(scenario)


def test_scan_pages_are_cut_by_size(tmp_path: Path) -> None:
    big = [Record(b"big-%d" % i, bytes(1 << 20), at(10, "b")) for i in range(10)]

    async def scenario() -> list[list[Record]]:
        async with cluster(tmp_path) as nodes:
            b = await nodes.start("b")
            b.engine.apply([Mutation(r) for r in big])
            return await paged(nodes.peer("a", "b"), 0, TOKEN_SPACE, 1000)

    pages = run(scenario)
    assert 1 < len(pages) < 10
    assert sorted(r.key for page in pages for r in page) == sorted(r.key for r in big)


def test_scan_pages_never_split_the_keys_of_one_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Resuming after a token is safe only if a page holds all of its keys."""

    def two_tokens(key: bytes) -> int:
        return 7 if key.startswith(b"a") else 9

    monkeypatch.setattr("ringkv.storage.memory.token_of", two_tokens)
    monkeypatch.setattr("ringkv.server.data.scan_pages.token_of", two_tokens)
    engine = MemoryEngine()
    engine.apply([Mutation(value(k, 10, "b")) for k in (b"a1", b"a2", b"a3", b"b1", b"b2")])

    async def scenario() -> list[list[Record]]:
        async with cluster(tmp_path) as nodes:
            await nodes.start("b", engine)
            return await paged(nodes.peer("a", "b"), 0, TOKEN_SPACE, 1)

    pages = run(scenario)
    assert [[r.key for r in page] for page in pages] == [[b"a1", b"a2", b"a3"], [b"b1", b"b2"]]


def test_merkle_leaves_match_the_local_tree_and_bad_requests_fail(tmp_path: Path) -> None:
    records = [value(key_of(i), 10, "b") for i in range(200)]
    records += [tombstone(b"dead-%d" % i, OLD, "b") for i in range(5)]
    spans = [(0, 1 << 62), (3 << 62, TOKEN_SPACE)]
    horizon = NOW - GRACE_MS

    async def scenario() -> None:
        async with cluster(tmp_path) as nodes:
            b = await nodes.start("b")
            b.engine.apply([Mutation(r) for r in records])
            peer = nodes.peer("a", "b")

            for depth in (0, 4, DEFAULT_DEPTH):
                leaves = await peer.merkle(spans, depth, horizon)
                assert leaves == span_tree(b.engine, spans, depth, horizon).leaves
            assert await peer.merkle([], 3, horizon) == (0,) * 8
            with pytest.raises(Unavailable, match="INVALID_ARGUMENT"):
                await peer.merkle(spans, MAX_DEPTH + 1, horizon)
            request_with_bad_cursor = peer.scan(0, TOKEN_SPACE, b"\x01", 10)
            with pytest.raises(Unavailable, match="INVALID_ARGUMENT"):
                await request_with_bad_cursor

    run(scenario)
