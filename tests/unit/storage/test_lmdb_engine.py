"""What only the LMDB engine does: durability, map growth and limits, full disks, dir locks."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import ExitStack, closing
from pathlib import Path

import lmdb
import pytest

from ringkv.core.errors import StorageFull, Unavailable
from ringkv.core.records import ApplyResult, Outcome, Record
from ringkv.core.tokens import token_of
from ringkv.storage.engine import FsyncMode
from ringkv.storage.lmdb_engine import LmdbEngine
from tests.support.tmpfs import small_tmpfs

from .helpers import by_version, hint, in_scan_order, put, rec, scan_all

MIB = 1 << 20


def value_of(index: int, size: int) -> bytes:
    """A recognisable value of ``size`` bytes."""
    return (b"%08d|" % index * (size // 9 + 1))[:size]


def fill_until_full(
    engine: LmdbEngine, *, value_bytes: int, per_batch: int, max_batches: int
) -> tuple[list[Record], list[Record]]:
    """Write batches of new records until StorageFull: (the written, the rejected batch)."""
    written: list[Record] = []
    for batch_index in range(max_batches):
        batch = [
            rec(b"fill-%06d" % i, 1, value_of(i, value_bytes))
            for i in range(batch_index * per_batch, (batch_index + 1) * per_batch)
        ]
        try:
            results = engine.apply([put(r) for r in batch])
        except StorageFull:
            return written, batch
        assert all(r.outcome is Outcome.APPLIED for r in results)
        written.extend(batch)
    pytest.fail(f"no StorageFull after {max_batches} batches of {per_batch}x{value_bytes} bytes")


def assert_holds_exactly(engine: LmdbEngine, records: list[Record]) -> None:
    for record in records:
        assert engine.get(record.key) == record
    assert engine.stats().records == len(records)
    assert scan_all(engine) == in_scan_order(records)


# --- (a) durability across reopen -------------------------------------------


@pytest.mark.parametrize("fsync", list(FsyncMode))
def test_writes_survive_close_and_reopen(tmp_path: Path, fsync: FsyncMode) -> None:
    records = [rec(b"k%04d" % i, 10 + i, value_of(i, 300)) for i in range(1000)]
    tombstone = rec(b"k0000", 5_000, tombstone=True)
    expiring = rec(b"ttl", 3, b"v", expires_at_ms=12_345)

    engine = LmdbEngine(tmp_path, fsync)
    assert engine._env.flags()["sync"] is (fsync is not FsyncMode.NEVER)
    for start in range(0, len(records), 100):  # many transactions
        engine.apply([put(r) for r in records[start : start + 100]])
    engine.apply([put(tombstone), put(expiring)])
    engine.close()

    reopened = LmdbEngine(tmp_path, fsync)
    try:
        assert_holds_exactly(reopened, [tombstone, *records[1:], expiring])
        # Versions survive too: an old write is still stale after the reopen.
        stale = reopened.apply([put(rec(b"k0001", 10, b"old"))])
        assert stale == [ApplyResult(Outcome.STALE, records[1])]
    finally:
        reopened.close()


def test_reopen_with_another_fsync_mode(tmp_path: Path) -> None:
    first = rec(b"a", 1, b"one")
    second = rec(b"b", 2, b"two")
    with_never = LmdbEngine(tmp_path, FsyncMode.NEVER)
    with_never.apply([put(first)])
    with_never.close()

    with_always = LmdbEngine(tmp_path, FsyncMode.ALWAYS)
    with_always.apply([put(second)])
    with_always.close()

    reopened = LmdbEngine(tmp_path)
    try:
        assert_holds_exactly(reopened, [first, second])
    finally:
        reopened.close()


@pytest.mark.parametrize("fsync", list(FsyncMode))
def test_hints_survive_close_and_reopen(tmp_path: Path, fsync: FsyncMode) -> None:
    long_key = b"long-".ljust(600, b"k")
    record = rec(b"k", 1, b"record")
    for_b = rec(b"k", 5, b"for-b")
    for_c = rec(b"k", 3, tombstone=True)
    expiring = rec(b"k2", 4, b"v", expires_at_ms=12_345)
    long_hint = rec(long_key, 6, b"long")
    many = [rec(b"h%04d" % i, 10 + i, value_of(i, 300)) for i in range(500)]

    engine = LmdbEngine(tmp_path, fsync)
    engine.apply([put(record), hint(for_b, "node-b"), hint(for_c, "node-c")])
    engine.apply([hint(expiring, "node-b"), hint(long_hint, "node-b")])
    for start in range(0, len(many), 100):  # many transactions
        engine.apply([hint(r, "node-b") for r in many[start : start + 100]])
    engine.close()

    reopened = LmdbEngine(tmp_path, fsync)
    try:
        assert_holds_exactly(reopened, [record])
        assert by_version(reopened.get_hints(b"k")) == [for_c, for_b]
        assert reopened.get_hints(b"k2") == [expiring]
        assert reopened.get_hints(long_key) == [long_hint]
        for r in many:
            assert reopened.get_hints(r.key) == [r]
            assert reopened.get(r.key) is None
        # Hint versions survive too: an old hint is still stale after the reopen.
        stale = reopened.apply([hint(rec(b"k", 4, b"old"), "node-b")])
        assert stale == [ApplyResult(Outcome.STALE, for_b)]
        newer = rec(b"k", 6, b"newer")
        assert reopened.apply([hint(newer, "node-c")]) == [ApplyResult(Outcome.APPLIED, for_c)]
        assert by_version(reopened.get_hints(b"k")) == [for_b, newer]
    finally:
        reopened.close()


# --- (b) and (c): the map grows, up to its limit ------------------------------


def test_map_grows_as_data_is_written(tmp_path: Path) -> None:
    engine = LmdbEngine(tmp_path, FsyncMode.NEVER, initial_map_bytes=MIB)
    try:
        assert engine._env.info()["map_size"] == MIB
        records = [rec(b"big-%04d" % i, 1, value_of(i, 32 * 1024)) for i in range(640)]  # 20 MiB
        for start in range(0, len(records), 16):  # 512 KiB a batch
            results = engine.apply([put(r) for r in records[start : start + 16]])
            assert all(r.outcome is Outcome.APPLIED for r in results)

        map_size = engine._env.info()["map_size"]
        assert map_size > 20 * MIB
        assert map_size <= 64 * MIB  # it doubled as needed, no more
        assert_holds_exactly(engine, records)
    finally:
        engine.close()


def test_one_batch_larger_than_the_map_grows_it(tmp_path: Path) -> None:
    engine = LmdbEngine(tmp_path, FsyncMode.NEVER, initial_map_bytes=MIB)
    try:
        records = [rec(b"b-%03d" % i, 1, value_of(i, 64 * 1024)) for i in range(64)]  # 4 MiB
        assert all(r.outcome is Outcome.APPLIED for r in engine.apply([put(r) for r in records]))
        assert engine._env.info()["map_size"] >= 4 * MIB
        assert_holds_exactly(engine, records)
    finally:
        engine.close()


def test_map_limit_raises_storage_full_and_keeps_what_was_written(tmp_path: Path) -> None:
    engine = LmdbEngine(tmp_path, FsyncMode.NEVER, initial_map_bytes=MIB, max_map_bytes=2 * MIB)
    try:
        written, rejected = fill_until_full(engine, value_bytes=1000, per_batch=32, max_batches=200)

        assert written, "the first batch should have fit"
        assert engine._env.info()["map_size"] == 2 * MIB
        assert_holds_exactly(engine, written)
        for record in rejected:
            assert engine.get(record.key) is None

        # A rejected batch that also updates existing keys leaves them alone.
        update = rec(written[0].key, 2, b"updated")
        with pytest.raises(StorageFull) as raised:
            engine.apply([put(update), *(put(r) for r in rejected)])
        assert raised.value.reason == "STORAGE_FULL"
        assert_holds_exactly(engine, written)
    finally:
        engine.close()

    reopened = LmdbEngine(tmp_path, initial_map_bytes=MIB, max_map_bytes=2 * MIB)
    try:
        assert_holds_exactly(reopened, written)
    finally:
        reopened.close()


def test_initial_map_at_the_limit_is_full_at_once(tmp_path: Path) -> None:
    engine = LmdbEngine(tmp_path, FsyncMode.NEVER, initial_map_bytes=MIB, max_map_bytes=MIB)
    try:
        with pytest.raises(StorageFull):
            engine.apply([put(rec(b"huge", 1, bytes(2 * MIB)))])
        assert engine.get(b"huge") is None
        assert engine.stats().records == 0
        small = rec(b"small", 1, b"fits")
        assert engine.apply([put(small)]) == [ApplyResult(Outcome.APPLIED, None)]
        assert engine.get(b"small") == small
    finally:
        engine.close()


def test_scan_holds_no_transaction_between_chunks(tmp_path: Path) -> None:
    # Growing the map needs every transaction of the process closed, so a scan
    # that is paused half way must not hold one open.
    engine = LmdbEngine(tmp_path, FsyncMode.NEVER, initial_map_bytes=MIB)
    try:
        original = [rec(b"k%04d" % i, 1, b"v") for i in range(1500)]
        engine.apply([put(r) for r in original])
        scan = engine.scan(0, 1 << 64)
        seen = [next(scan) for _ in range(600)]  # past the first chunk

        big = [rec(b"big-%02d" % i, 1, value_of(i, 256 * 1024)) for i in range(16)]  # 4 MiB
        engine.apply([put(r) for r in big])
        assert engine._env.info()["map_size"] > MIB

        seen.extend(scan)
        stored_keys = [(token_of(r.key), r.key) for r in seen]
        assert stored_keys == sorted(set(stored_keys))
        assert {r.key for r in original} <= {r.key for r in seen}
    finally:
        engine.close()


def test_reads_run_while_writes_grow_the_map(tmp_path: Path) -> None:
    engine = LmdbEngine(tmp_path, FsyncMode.NEVER, initial_map_bytes=MIB)
    records = [rec(b"c-%03d" % i, 1, value_of(i, 64 * 1024)) for i in range(128)]  # 8 MiB
    by_key = {r.key: r for r in records}
    errors: list[BaseException] = []
    reads = 0
    first_read = threading.Event()
    stop = threading.Event()

    def reader() -> None:
        nonlocal reads
        try:
            while not stop.is_set():
                for record in records[::7]:
                    found = engine.get(record.key)
                    assert found is None or found == record
                for found in engine.scan(0, 1 << 64):
                    assert found == by_key[found.key]
                reads += 1
                first_read.set()
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
            first_read.set()

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        assert first_read.wait(timeout=30)
        for start in range(0, len(records), 4):
            engine.apply([put(r) for r in records[start : start + 4]])
    finally:
        stop.set()
        thread.join(timeout=30)
    try:
        assert not thread.is_alive()
        assert errors == []
        assert reads >= 1
        assert engine._env.info()["map_size"] >= 8 * MIB
        assert_holds_exactly(engine, records)
    finally:
        engine.close()


# --- (d) a full disk ---------------------------------------------------------


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A mounted 2 MiB tmpfs, unmounted afterwards."""
    with small_tmpfs(tmp_path / "tmpfs") as mountpoint:
        yield mountpoint


@pytest.mark.needs_root
@pytest.mark.parametrize(
    ("value_bytes", "per_batch"),
    [
        pytest.param(4000, 1, id="one-4000B-value-a-batch"),
        pytest.param(
            1000,
            16,
            id="16-1000B-values-a-batch",
        ),
    ],
)
def test_full_disk_raises_storage_full_and_keeps_earlier_writes(
    tiny_tmpfs: Path, value_bytes: int, per_batch: int
) -> None:
    data_dir = tiny_tmpfs / "data"
    with ExitStack() as cleanup:
        engine = LmdbEngine(data_dir, FsyncMode.BATCH)
        cleanup.callback(engine.close)

        written, rejected = fill_until_full(
            engine, value_bytes=value_bytes, per_batch=per_batch, max_batches=2000
        )

        assert written, "the first batch should have fit"
        assert_holds_exactly(engine, written)
        for record in rejected:
            assert engine.get(record.key) is None

    reopened = LmdbEngine(data_dir, FsyncMode.BATCH)
    try:
        assert_holds_exactly(reopened, written)
    finally:
        reopened.close()


# --- (e) one engine per data dir ---------------------------------------------


def test_a_data_dir_opens_in_one_engine_at_a_time(tmp_path: Path) -> None:
    record = rec(b"k", 1, b"v")
    first = LmdbEngine(tmp_path)
    try:
        first.apply([put(record)])

        with pytest.raises(Unavailable) as raised:
            LmdbEngine(tmp_path)
        assert raised.value.reason == "UNAVAILABLE"
        assert str(tmp_path) in raised.value.message

        # The failed open did not disturb the engine that holds the dir.
        assert first.get(b"k") == record
        second_record = rec(b"k2", 1, b"v2")
        assert first.apply([put(second_record)])[0].outcome is Outcome.APPLIED
    finally:
        first.close()

    second = LmdbEngine(tmp_path)
    try:
        assert_holds_exactly(second, [record, second_record])
    finally:
        second.close()


def test_other_data_dirs_open_side_by_side(tmp_path: Path) -> None:
    engines = [LmdbEngine(tmp_path / name) for name in ("a", "b", "nested/c")]
    try:
        for index, engine in enumerate(engines):
            engine.apply([put(rec(b"k", 1, b"%d" % index))])
        assert [engine.get(b"k") for engine in engines] == [
            rec(b"k", 1, b"%d" % index) for index in range(3)
        ]
    finally:
        for engine in engines:
            engine.close()


def test_a_failed_open_releases_the_data_dir(tmp_path: Path) -> None:
    (tmp_path / "data.mdb").write_bytes(b"not an lmdb file" * 512)
    with pytest.raises(lmdb.InvalidError):
        LmdbEngine(tmp_path)

    (tmp_path / "data.mdb").unlink()
    engine = LmdbEngine(tmp_path)
    engine.close()


# --- (e) purge ---------------------------------------------------------------


def test_purged_records_stay_gone_after_reopen(tmp_path: Path) -> None:
    records = [rec(b"k%03d" % i, 1, tombstone=i % 2 == 0) for i in range(100)]
    long_record = rec(b"L" * 600, 1)
    with closing(LmdbEngine(tmp_path, FsyncMode.BATCH)) as engine:
        engine.apply([put(r) for r in [*records, long_record]])
        assert engine.purge([r.key for r in records[::2]] + [long_record.key]) == 51

    with closing(LmdbEngine(tmp_path, FsyncMode.BATCH)) as engine:
        assert_holds_exactly(engine, records[1::2])


def test_purge_from_another_thread_while_writes_grow_the_map(tmp_path: Path) -> None:
    """``purge`` runs beside the commit thread; the map may only grow between writes."""
    engine = LmdbEngine(tmp_path, FsyncMode.NEVER, initial_map_bytes=MIB)
    doomed = [rec(b"doomed-%04d" % i, 1, b"x") for i in range(2000)]
    engine.apply([put(r) for r in doomed])
    records = [rec(b"c-%03d" % i, 1, value_of(i, 64 * 1024)) for i in range(128)]  # 8 MiB
    errors: list[BaseException] = []
    purged = 0

    def purger() -> None:
        nonlocal purged
        try:
            for start in range(0, len(doomed), 10):
                chunk = doomed[start : start + 10]
                purged += engine.purge([r.key for r in chunk], expected=[r.version for r in chunk])
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    thread = threading.Thread(target=purger)
    thread.start()
    try:
        for start in range(0, len(records), 4):
            engine.apply([put(r) for r in records[start : start + 4]])
    finally:
        thread.join(timeout=30)
    try:
        assert not thread.is_alive()
        assert errors == []
        assert purged == len(doomed)
        assert engine._env.info()["map_size"] >= 8 * MIB
        assert_holds_exactly(engine, records)
    finally:
        engine.close()
