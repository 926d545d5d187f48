"""Snapshots of the engines (backups) and restoring them, on real LMDB files."""

from __future__ import annotations

import json
import os
import stat
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import lmdb
import pytest

from ringkv.core.errors import PreconditionFailed, StorageFull, Unavailable
from ringkv.core.records import Record
from ringkv.storage.engine import BackupUnsupported, EngineStats, FsyncMode
from ringkv.storage.files import claim, owner, write_owner
from ringkv.storage.lmdb_engine import LmdbEngine
from ringkv.storage.memory import MemoryEngine
from ringkv.storage.snapshot import (
    CorruptBackup,
    DataDirNotEmpty,
    Manifest,
    check_snapshot,
    file_sha256,
    manifest_path,
    read_manifest,
    restore,
    snapshot_records,
    write_manifest,
)
from tests.support.tmpfs import small_tmpfs

from .helpers import hint, in_scan_order, put, rec, scan_all

MIB = 1 << 20


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[LmdbEngine]:
    opened = LmdbEngine(tmp_path / "data", FsyncMode.NEVER)
    yield opened
    opened.close()


def sample_records(count: int = 300) -> list[Record]:
    """Values, a tombstone, an expiring value and a key too long to store inline."""
    records = [rec(b"key-%04d" % i, 10 + i, b"value-%d" % i) for i in range(count)]
    records.append(rec(b"gone", 7, tombstone=True))
    records.append(rec(b"brief", 8, b"soon gone", expires_at_ms=1_000))
    records.append(rec(b"L" * 3000, 9, b"long key"))
    return records


def take_backup(engine: LmdbEngine, path: Path, node_id: str = "node1") -> Manifest:
    """What ``ringkv backup`` does, minus the network: snapshot, then manifest."""
    stats = engine.snapshot(path)
    manifest = Manifest(
        node_id=node_id,
        records=stats.records,
        hints=stats.hints,
        size_bytes=stats.bytes_used,
        sha256=file_sha256(path),
        created_at_ms=1_800_000_000_000,
    )
    write_manifest(path, manifest)
    return manifest


# --- the engine's snapshot -------------------------------------------------


def test_a_snapshot_holds_every_record_and_hint(engine: LmdbEngine, tmp_path: Path) -> None:
    records = sample_records()
    hints = [rec(b"key-0001", 99, b"for node2"), rec(b"other", 5, b"for node3")]
    engine.apply([put(r) for r in records])
    engine.apply([hint(hints[0], "node2"), hint(hints[1], "node3")])
    path = tmp_path / "backup.mdb"

    stats = engine.snapshot(path)

    assert stats == EngineStats(records=len(records), bytes_used=path.stat().st_size, hints=2)
    assert list(snapshot_records(path)) == in_scan_order(records)
    assert check_snapshot(path).records == len(records)
    assert check_snapshot(path).hints == 2
    # The engine goes on as before.
    assert scan_all(engine) == in_scan_order(records)


def test_a_snapshot_of_an_empty_store_is_a_valid_empty_snapshot(
    engine: LmdbEngine, tmp_path: Path
) -> None:
    path = tmp_path / "empty.mdb"
    assert engine.snapshot(path).records == 0
    assert list(snapshot_records(path)) == []


def test_a_snapshot_never_overwrites_a_file(engine: LmdbEngine, tmp_path: Path) -> None:
    path = tmp_path / "taken.mdb"
    path.write_bytes(b"precious")
    with pytest.raises(FileExistsError):
        engine.snapshot(path)
    assert path.read_bytes() == b"precious"


def test_a_snapshot_is_one_point_in_time_while_writes_go_on(
    engine: LmdbEngine, tmp_path: Path
) -> None:
    """A writer commits keys 0, 1, 2, ... one transaction each while snapshots
    are taken: each snapshot holds exactly the keys 0..n-1 for some n, with
    their values (a snapshot never sees half of the writes or a gap), and
    the writer is never blocked for long."""
    written: list[Record] = []
    stop = threading.Event()
    started = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            index = 0
            while not stop.is_set() and index < 200_000:
                record = rec(b"seq-%07d" % index, index + 1, b"v%d" % index * 20)
                engine.apply([put(record)])
                written.append(record)
                index += 1
                if index == 2_000:
                    started.set()
        except BaseException as error:  # reported by the main thread
            errors.append(error)
        finally:
            started.set()

    thread = threading.Thread(target=writer)
    thread.start()
    sizes = []
    try:
        assert started.wait(timeout=60)
        for round_ in range(5):
            path = tmp_path / f"snap-{round_}.mdb"
            stats = engine.snapshot(path)
            in_snapshot = list(snapshot_records(path))
            n = len(in_snapshot)
            assert stats.records == n
            assert n >= 2_000
            assert sorted(in_snapshot, key=lambda r: r.key) == written[:n]
            sizes.append(n)
    finally:
        stop.set()
        thread.join(timeout=60)
    assert not thread.is_alive()
    assert errors == []
    assert sizes == sorted(sizes)
    assert len(written) > sizes[-1], "the writer went on after the last snapshot"


def test_snapshots_while_writes_grow_the_map(tmp_path: Path) -> None:
    """Growing the map waits for a snapshot in progress (LMDB cannot remap
    under an open transaction); both go on correctly."""
    engine = LmdbEngine(tmp_path / "data", FsyncMode.NEVER, initial_map_bytes=MIB)
    records = [rec(b"big-%03d" % i, 1, b"%03d" % i * 20_000) for i in range(160)]  # ~9.6 MB
    errors: list[BaseException] = []
    done = threading.Event()

    def writer() -> None:
        try:
            for start in range(0, len(records), 4):
                engine.apply([put(r) for r in records[start : start + 4]])
        except BaseException as error:  # reported by the main thread
            errors.append(error)
        finally:
            done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        round_ = 0
        while not done.is_set() or round_ == 0:
            path = tmp_path / f"snap-{round_}.mdb"
            stats = engine.snapshot(path)
            check_snapshot(path)
            assert list(snapshot_records(path)) == in_scan_order(records[: stats.records])
            path.unlink()
            round_ += 1
        thread.join(timeout=60)
        assert errors == []
        assert engine._env.info()["map_size"] >= 8 * MIB
        final = tmp_path / "final.mdb"
        assert engine.snapshot(final).records == len(records)
        assert list(snapshot_records(final)) == in_scan_order(records)
    finally:
        engine.close()


def test_the_memory_engine_refuses_to_snapshot(tmp_path: Path) -> None:
    engine = MemoryEngine()
    engine.apply([put(rec(b"k", 1))])
    path = tmp_path / "memory.mdb"
    with pytest.raises(BackupUnsupported) as raised:
        engine.snapshot(path)
    assert raised.value.reason == "BACKUP_UNSUPPORTED"
    assert isinstance(raised.value, PreconditionFailed)
    assert not path.exists()


@pytest.mark.needs_root
def test_a_snapshot_that_does_not_fit_raises_storage_full_and_leaves_nothing(
    engine: LmdbEngine, tmp_path: Path
) -> None:
    engine.apply([put(rec(b"k%03d" % i, 1, b"x" * 30_000)) for i in range(128)])  # ~4 MB
    with small_tmpfs(tmp_path / "tmpfs") as tiny:
        with pytest.raises(StorageFull):
            engine.snapshot(tiny / "backup.mdb")
        assert list(tiny.iterdir()) == []
    assert engine.stats().records == 128


# --- the manifest ------------------------------------------------------------


def test_the_manifest_round_trips(engine: LmdbEngine, tmp_path: Path) -> None:
    engine.apply([put(r) for r in sample_records(10)])
    path = tmp_path / "b.mdb"
    manifest = take_backup(engine, path)
    assert manifest_path(path) == tmp_path / "b.mdb.json"
    assert read_manifest(path) == manifest
    assert read_manifest(tmp_path / "other.mdb") is None


@pytest.mark.parametrize(
    "text",
    ["not json", "[]", '{"node_id": "n"}', '{"node_id": 1}'],
    ids=["not-json", "a-list", "fields-missing", "wrong-type"],
)
def test_a_bad_manifest_is_a_corrupt_backup(tmp_path: Path, text: str) -> None:
    path = tmp_path / "b.mdb"
    manifest_path(path).write_text(text)
    with pytest.raises(CorruptBackup):
        read_manifest(path)


def test_a_manifest_of_another_format_is_refused(engine: LmdbEngine, tmp_path: Path) -> None:
    path = tmp_path / "b.mdb"
    take_backup(engine, path)
    document = json.loads(manifest_path(path).read_text())
    manifest_path(path).write_text(json.dumps(document | {"format": "something/9"}))
    with pytest.raises(CorruptBackup, match="unknown backup format"):
        read_manifest(path)


# --- restore -------------------------------------------------------------------


def test_restore_into_a_new_dir_gives_a_store_that_opens_with_everything(
    engine: LmdbEngine, tmp_path: Path
) -> None:
    records = sample_records()
    engine.apply([put(r) for r in records])
    engine.apply([hint(rec(b"key-0002", 50, b"h"), "node9")])
    path = tmp_path / "b.mdb"
    manifest = take_backup(engine, path)
    target = tmp_path / "restored" / "data"

    report = restore(path, target, node_id="node1")

    assert report.manifest == manifest
    assert report.data_file == target / "data.mdb"
    assert (report.contents.records, report.contents.hints) == (len(records), 1)
    assert sorted(p.name for p in target.iterdir()) == ["data.mdb", "node.id", "ringkv.lock"]
    assert owner(target) == "node1"
    # Everything in it is its owner's alone.
    assert stat.S_IMODE(target.stat().st_mode) == 0o700
    for path in target.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name
    reopened = LmdbEngine(target)
    try:
        assert scan_all(reopened) == in_scan_order(records)
        assert list(reopened.scan_hints()) == [("node9", rec(b"key-0002", 50, b"h"))]
        # The restored store takes writes.
        reopened.apply([put(rec(b"after", 1))])
        assert reopened.get(b"after") == rec(b"after", 1)
    finally:
        reopened.close()


def test_restore_without_a_manifest_checks_the_structure(
    engine: LmdbEngine, tmp_path: Path
) -> None:
    engine.apply([put(r) for r in sample_records(20)])
    path = tmp_path / "b.mdb"
    engine.snapshot(path)
    report = restore(path, tmp_path / "target")
    assert report.manifest is None
    assert report.contents.records == 23


def test_restore_refuses_a_non_empty_dir_and_leaves_it_alone(
    engine: LmdbEngine, tmp_path: Path
) -> None:
    path = tmp_path / "b.mdb"
    take_backup(engine, path)
    target = tmp_path / "target"
    target.mkdir()
    (target / "something").write_text("mine")

    with pytest.raises(DataDirNotEmpty) as raised:
        restore(path, target)

    assert raised.value.reason == "DATA_DIR_NOT_EMPTY"
    assert "something" in raised.value.message
    assert sorted(p.name for p in target.iterdir()) == ["something"]


def a_node_dir(path: Path) -> Path:
    """A stopped node's data dir: one record of its own and a ``cluster.json``."""
    engine = LmdbEngine(path)
    engine.apply([put(rec(b"its-key", 1))])
    engine.close()
    (path / "cluster.json").write_text("{}")
    return path


def test_restore_with_force_replaces_the_data_and_keeps_cluster_json(
    engine: LmdbEngine, tmp_path: Path
) -> None:
    old_dir = a_node_dir(tmp_path / "old")
    records = sample_records(5)
    engine.apply([put(r) for r in records])
    path = tmp_path / "b.mdb"
    take_backup(engine, path)

    restore(path, old_dir, force=True)

    assert (old_dir / "cluster.json").read_text() == "{}"
    reopened = LmdbEngine(old_dir)
    try:
        assert scan_all(reopened) == in_scan_order(records)
    finally:
        reopened.close()


def test_restoring_another_nodes_backup_over_a_dir_needs_its_node_id(
    engine: LmdbEngine, tmp_path: Path
) -> None:
    node2_dir = a_node_dir(tmp_path / "node2")
    write_owner(node2_dir, "node2")
    engine.apply([put(r) for r in sample_records(5)])
    path = tmp_path / "b.mdb"
    take_backup(engine, path, node_id="node1")

    with pytest.raises(PreconditionFailed, match="belongs to node2") as refused:
        restore(path, node2_dir, force=True)
    assert refused.value.reason == "WRONG_NODE"
    assert owner(node2_dir) == "node2"
    assert (node2_dir / "cluster.json").exists()

    # Named, the backup takes the dir over: node2's vote and table go with it.
    restore(path, node2_dir, force=True, node_id="node1")
    assert owner(node2_dir) == "node1"
    assert not (node2_dir / "cluster.json").exists()
    with pytest.raises(PreconditionFailed, match="belongs to node1"):
        claim(node2_dir, "node2")
    claim(node2_dir, "node1")


def test_planted_files_are_neither_followed_nor_replaced(
    engine: LmdbEngine, tmp_path: Path
) -> None:
    engine.apply([put(r) for r in sample_records(5)])
    precious = tmp_path / "precious"
    precious.write_text("keep me")
    path = tmp_path / "b.mdb"
    # A manifest name taken by a symlink to an unrelated file: refused, untouched.
    (tmp_path / "b.mdb.json").symlink_to(precious)
    stats = engine.snapshot(path)
    manifest = Manifest("node1", stats.records, stats.hints, stats.bytes_used, file_sha256(path), 1)
    with pytest.raises(FileExistsError):
        write_manifest(path, manifest)
    assert precious.read_text() == "keep me"
    (tmp_path / "b.mdb.json").unlink()
    write_manifest(path, manifest)
    assert stat.S_IMODE((tmp_path / "b.mdb.json").stat().st_mode) == 0o600

    # A symlink where restore puts its temporary copy is removed, not written through.
    target = tmp_path / "restored"
    target.mkdir()
    (target / ".data.mdb.restoring").symlink_to(precious)
    restore(path, target, force=True)
    assert precious.read_text() == "keep me"
    assert not (target / "data.mdb").is_symlink()


def test_restore_refuses_a_dir_a_node_holds(engine: LmdbEngine, tmp_path: Path) -> None:
    path = tmp_path / "b.mdb"
    take_backup(engine, path)
    running = LmdbEngine(tmp_path / "running")
    running.apply([put(rec(b"live", 1))])
    try:
        with pytest.raises(Unavailable, match="in use"):
            restore(path, tmp_path / "running", force=True)
        assert running.get(b"live") == rec(b"live", 1)
    finally:
        running.close()


def test_restore_refuses_a_backup_of_another_node(engine: LmdbEngine, tmp_path: Path) -> None:
    path = tmp_path / "b.mdb"
    take_backup(engine, path, node_id="node1")
    with pytest.raises(PreconditionFailed) as raised:
        restore(path, tmp_path / "target", node_id="node2")
    assert raised.value.reason == "WRONG_NODE"
    assert not (tmp_path / "target").exists()


def corrupt_copy(source: Path, target: Path, offset: int) -> None:
    data = bytearray(source.read_bytes())
    data[offset] ^= 0xFF
    target.write_bytes(bytes(data))


def test_restore_refuses_a_file_that_fails_its_checksum(engine: LmdbEngine, tmp_path: Path) -> None:
    engine.apply([put(r) for r in sample_records()])
    path = tmp_path / "b.mdb"
    take_backup(engine, path)
    corrupt_copy(path, path, path.stat().st_size // 2)

    with pytest.raises(CorruptBackup, match="checksum"):
        restore(path, tmp_path / "target")
    assert not (tmp_path / "target").exists()


def test_restore_refuses_a_truncated_file_without_reading_past_its_end(
    engine: LmdbEngine, tmp_path: Path
) -> None:
    engine.apply([put(r) for r in sample_records(2000)])
    path = tmp_path / "b.mdb"
    engine.snapshot(path)  # no manifest: LMDB itself must notice
    with path.open("r+b") as file:
        file.truncate(path.stat().st_size // 2)

    with pytest.raises(CorruptBackup, match="truncated"):
        restore(path, tmp_path / "target")


@pytest.mark.parametrize(
    "content",
    [b"", b"not an lmdb file at all" * 1000, os.urandom(64 * 1024)],
    ids=["empty", "text", "random"],
)
def test_restore_refuses_a_file_that_is_not_lmdb(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "b.mdb"
    path.write_bytes(content)
    with pytest.raises(CorruptBackup):
        restore(path, tmp_path / "target")
    assert not (tmp_path / "target").exists()


def test_restore_refuses_an_lmdb_file_without_ringkv_tables(tmp_path: Path) -> None:
    other = lmdb.open(str(tmp_path / "other"), max_dbs=2)
    other.open_db(b"something")
    path = tmp_path / "b.mdb"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        other.copyfd(fd)
    finally:
        os.close(fd)
        other.close()
    with pytest.raises(CorruptBackup, match="tables"):
        restore(path, tmp_path / "target")


def test_restore_refuses_counts_that_differ_from_the_manifest(
    engine: LmdbEngine, tmp_path: Path
) -> None:
    engine.apply([put(r) for r in sample_records(10)])
    path = tmp_path / "b.mdb"
    manifest = take_backup(engine, path)
    manifest_path(path).write_text(replace(manifest, records=manifest.records + 1).to_json())
    with pytest.raises(CorruptBackup, match="records"):
        restore(path, tmp_path / "target")


def test_a_missing_backup_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="no backup file"):
        restore(tmp_path / "nothing.mdb", tmp_path / "target")
