"""The durable engine: LMDB, one B+tree of records keyed by (token, key).

LMDB gives crash-safe copy-on-write transactions and lock-free readers. Its
map (the largest size the file may reach) is fixed when it is opened, so this
engine starts with a modest map and doubles it whenever a write finds it full.
A snapshot (for backups) is LMDB's compacting copy, read in one transaction
while writes go on.
"""

from __future__ import annotations

import fcntl
import os
import struct
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import lmdb

from ringkv.core.errors import StorageFull, Unavailable
from ringkv.core.hlc import Version
from ringkv.core.paxos import AcceptorState
from ringkv.core.records import ApplyResult, Mutation, Outcome, Record, resolve
from ringkv.core.tokens import MAX_TOKEN
from ringkv.storage.codec import (
    decode_acceptor_state,
    decode_record,
    encode_acceptor_state,
    encode_record,
    hint_key,
    hint_parts,
    hint_prefix,
    storage_key,
    stored_user_key,
    token_bound,
)
from ringkv.storage.engine import (
    CHANGE_LOG_OFF,
    CHANGES_READ_BYTES,
    DEFAULT_CHANGE_LOG_ENTRIES,
    Change,
    ChangeLogState,
    EngineStats,
    FsyncMode,
    PaxosOp,
    PaxosStep,
    T,
    purge_checks,
    trim_count,
)
from ringkv.storage.files import PRIVATE_FILE_MODE, create_private, make_private_dir

DEFAULT_INITIAL_MAP_BYTES = 256 << 20
DEFAULT_MAX_MAP_BYTES = 1 << 40
_SCAN_CHUNK = 512
_LOCK_FILE = "ringkv.lock"
_SEQ = struct.Struct(">Q")
_ENTRY_HEAD = struct.Struct(">qH")
_HORIZON = b"change-log-horizon"
_T = TypeVar("_T")


class LmdbEngine:
    """Records in an LMDB environment under ``path``."""

    def __init__(
        self,
        path: Path,
        fsync: FsyncMode = FsyncMode.BATCH,
        *,
        change_log_entries: int = DEFAULT_CHANGE_LOG_ENTRIES,
        initial_map_bytes: int = DEFAULT_INITIAL_MAP_BYTES,
        max_map_bytes: int = DEFAULT_MAX_MAP_BYTES,
    ) -> None:
        make_private_dir(path)
        self._path = path
        self._dir_lock = lock_data_dir(path)
        self._max_map_bytes = max_map_bytes
        try:
            self._env = lmdb.open(
                str(path),
                map_size=initial_map_bytes,
                max_dbs=8,
                mode=PRIVATE_FILE_MODE,
                sync=fsync is not FsyncMode.NEVER,
                metasync=fsync is not FsyncMode.NEVER,
            )
            self._records = self._env.open_db(b"records")
            self._hints = self._env.open_db(b"hints")
            self._paxos = self._env.open_db(b"paxos")
            self._changes = self._env.open_db(b"changes")
            self._meta = self._env.open_db(b"meta")
            self._change_log_entries = change_log_entries
            self._first_seq, self._last_seq, self._horizon = self._open_change_log()
            # Where the write transaction in progress moves them.
            self._pending_seq, self._committed_first = self._last_seq, self._first_seq
        except BaseException:
            os.close(self._dir_lock)
            raise
        # Growing the map needs every transaction of this process closed;
        # readers hold the lock for one short transaction, the resize holds it
        # while it swaps the map.
        self._map_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._generation = 0
        # A snapshot holds one read transaction for as long as it copies, so
        # it keeps the map from being resized (and the engine from closing)
        # by holding this lock; reads and writes go on meanwhile.
        self._snapshot_lock = threading.Lock()

    def get(self, key: bytes) -> Record | None:
        with self._map_lock, self._env.begin(db=self._records, buffers=True) as txn:
            data = txn.get(storage_key(key))
            return None if data is None else decode_record(key, data)

    def get_hints(self, key: bytes) -> list[Record]:
        prefix = hint_prefix(key)
        with self._map_lock, self._env.begin(db=self._hints, buffers=True) as txn:
            cursor = txn.cursor()
            if not cursor.set_range(prefix):
                return []
            hints = []
            for stored_key, data in cursor:
                if not bytes(stored_key).startswith(prefix):
                    break
                hints.append(decode_record(key, data))
            return hints

    def newest(self, keys: Sequence[bytes]) -> list[Record | None]:
        found: list[Record | None] = []
        with self._map_lock, self._env.begin(buffers=True) as txn:
            hints = txn.cursor(db=self._hints)
            for key in keys:
                data = txn.get(storage_key(key), db=self._records)
                record = None if data is None else decode_record(key, data)
                prefix = hint_prefix(key)
                if hints.set_range(prefix):
                    for stored_key, hint in hints:
                        if not bytes(stored_key).startswith(prefix):
                            break
                        held = decode_record(key, hint)
                        if record is None or held.version > record.version:
                            record = held
                found.append(record)
        return found

    @property
    def generation(self) -> int:
        return self._generation

    def apply(self, mutations: Sequence[Mutation]) -> list[ApplyResult]:
        return self._write(lambda txn: self._apply_in(txn, mutations))

    def _apply_in(self, txn: lmdb.Transaction, mutations: Sequence[Mutation]) -> list[ApplyResult]:
        results = []
        for mutation in mutations:
            record = mutation.record
            if mutation.hint_for is None:
                db, stored_key = self._records, storage_key(record.key)
            else:
                db, stored_key = self._hints, hint_key(record.key, mutation.hint_for)
            data = txn.get(stored_key, db=db)
            current = None if data is None else decode_record(record.key, data)
            result = resolve(mutation, current)
            if result.outcome is Outcome.APPLIED:
                if mutation.delivered:
                    txn.delete(stored_key, db=db)
                else:
                    encoded = encode_record(record)
                    txn.put(stored_key, encoded, db=db)
                    if mutation.hint_for is None:
                        self._log_change(txn, record, encoded)
            results.append(result)
        self._trim_changes(txn)
        return results

    def paxos(self, ops: Sequence[PaxosOp]) -> list[Any]:
        def paxos_all(txn: lmdb.Transaction) -> list[Any]:
            answers = [self._paxos_in(txn, key, step) for key, step in ops]
            self._trim_changes(txn)
            return answers

        return self._write(paxos_all)

    def _paxos_in(self, txn: lmdb.Transaction, key: bytes, step: PaxosStep[T]) -> T:
        stored_key = storage_key(key)
        data = txn.get(stored_key, db=self._paxos)
        state = AcceptorState() if data is None else decode_acceptor_state(key, data)
        data = txn.get(stored_key, db=self._records)
        current = None if data is None else decode_record(key, data)
        new_state, answer, chosen = step(state, current)
        if new_state != state:
            txn.put(stored_key, encode_acceptor_state(new_state), db=self._paxos)
        if chosen is not None and resolve(Mutation(chosen), current).outcome is Outcome.APPLIED:
            encoded = encode_record(chosen)
            txn.put(stored_key, encoded, db=self._records)
            self._log_change(txn, chosen, encoded)
        return answer

    # -- the change log ----------------------------------------------------------
    # Entries are keyed by their big-endian number, so the log is in order;
    # an entry is the record's timestamp (read when trimming without decoding
    # the rest), its key's length, the key, and the stored record. The largest
    # timestamp trimmed is kept under _HORIZON in the meta table. The numbers
    # in memory change only with their transaction (a write rolled back, say
    # for a full map, must not skip or reuse one); the horizon is raised as
    # soon as a trim is decided, so a reader that sees the gap also sees it.

    def _open_change_log(self) -> tuple[int, int, int]:
        """The first and last entry numbers and the horizon. A node that keeps
        no log empties it, so a log turned on again starts with no gap."""
        with self._env.begin(write=True) as txn:
            if not self._change_log_entries:
                txn.drop(self._changes, delete=False)
            cursor = txn.cursor(db=self._changes)
            last = _SEQ.unpack(cursor.key())[0] if cursor.last() else 0
            first = _SEQ.unpack(cursor.key())[0] if cursor.first() else last + 1
            horizon = txn.get(_HORIZON, db=self._meta)
        return first, last, 0 if horizon is None else _SEQ.unpack(horizon)[0]

    def _log_change(self, txn: lmdb.Transaction, record: Record, encoded: bytes) -> None:
        if self._change_log_entries:
            self._pending_seq += 1
            head = _ENTRY_HEAD.pack(record.version.timestamp, len(record.key))
            txn.put(_SEQ.pack(self._pending_seq), head + record.key + encoded, db=self._changes)

    def _trim_changes(self, txn: lmdb.Transaction) -> None:
        entries = self._pending_seq - self._first_seq + 1
        count = trim_count(entries, self._change_log_entries)
        if not count:
            return
        horizon = self._horizon
        cursor = txn.cursor(db=self._changes)
        cursor.first()
        for _ in range(count):
            horizon = max(horizon, _ENTRY_HEAD.unpack_from(cursor.value())[0])
            cursor.delete()
        self._first_seq += count
        self._horizon = horizon
        txn.put(_HORIZON, _SEQ.pack(horizon), db=self._meta)

    def changes(self, after: int, limit: int) -> list[Change]:
        found: list[Change] = []
        size = 0
        with self._map_lock, self._env.begin(db=self._changes, buffers=True) as txn:
            cursor = txn.cursor()
            if not cursor.set_range(_SEQ.pack(after + 1)):
                return found
            for stored_key, data in cursor:
                found.append(_decode_change(stored_key, data))
                size += len(data)
                if len(found) == limit or size >= CHANGES_READ_BYTES:
                    break
        return found

    def change_log_state(self) -> ChangeLogState:
        if not self._change_log_entries:
            return ChangeLogState(self._last_seq, CHANGE_LOG_OFF)
        return ChangeLogState(self._last_seq, self._horizon)

    def purge(self, keys: Sequence[bytes], *, expected: Sequence[Version] | None = None) -> int:
        versions = purge_checks(keys, expected)
        return self._write(lambda txn: self._purge_in(txn, keys, versions))

    def _purge_in(
        self, txn: lmdb.Transaction, keys: Sequence[bytes], versions: Sequence[Version | None]
    ) -> int:
        removed = 0
        for key, version in zip(keys, versions, strict=True):
            stored_key = storage_key(key)
            if version is not None:
                data = txn.get(stored_key, db=self._records)
                if data is None or decode_record(key, data).version != version:
                    continue
            if txn.delete(stored_key, db=self._records):
                removed += 1
        return removed

    def _write(self, body: Callable[[lmdb.Transaction], _T]) -> _T:
        """Run ``body`` in one write transaction, growing the map when it is full.

        Writers are serialized here, not only by LMDB: growing the map needs
        every transaction of this process closed, and ``purge`` may write from
        another thread than the commit thread's ``apply``.
        """
        with self._write_lock:
            try:
                return self._write_growing(body)
            finally:
                self._generation += 1

    def _write_growing(self, body: Callable[[lmdb.Transaction], _T]) -> _T:
        while True:
            self._pending_seq, self._first_seq = self._last_seq, self._committed_first
            try:
                with self._env.begin(write=True, buffers=True) as txn:
                    result = body(txn)
            except lmdb.MapFullError:
                self._grow_map()
                continue
            except lmdb.DiskError as exc:
                raise StorageFull(f"the disk is full: {exc}") from None
            except lmdb.Error as exc:
                # A write cut short by a filling disk reports EIO ("short
                # write, filesystem full?"), not ENOSPC.
                if _disk_nearly_full(self._path):
                    raise StorageFull(f"the disk is full: {exc}") from None
                raise
            self._last_seq, self._committed_first = self._pending_seq, self._first_seq
            return result

    def _grow_map(self) -> None:
        size = int(self._env.info()["map_size"])
        if size >= self._max_map_bytes:
            raise StorageFull(f"the store reached its map limit of {self._max_map_bytes} bytes")
        with self._snapshot_lock, self._map_lock:
            self._env.set_mapsize(min(size * 2, self._max_map_bytes))

    def scan(self, start_token: int, end_token: int) -> Iterator[Record]:
        if start_token >= end_token or start_token > MAX_TOKEN:
            return
        end = token_bound(end_token) if end_token <= MAX_TOKEN else None
        for stored_key, data in self._scan(self._records, token_bound(start_token), end):
            yield decode_record(stored_user_key(stored_key, data), data)

    def scan_hints(self) -> Iterator[tuple[str, Record]]:
        for stored_key, data in self._scan(self._hints, b"", None):
            key, node_id = hint_parts(stored_key, data)
            yield node_id, decode_record(key, data)

    def _scan(self, db: Any, start: bytes, end: bytes | None) -> Iterator[tuple[bytes, bytes]]:
        # Chunks of short transactions: a long-lived reader would stop LMDB
        # from reusing pages freed by the writes that go on meanwhile.
        position, skip_first = start, False
        while True:
            chunk = self._scan_chunk(db, position, end, skip_first)
            yield from chunk
            if len(chunk) < _SCAN_CHUNK:
                return
            position, skip_first = chunk[-1][0], True

    def _scan_chunk(
        self, db: Any, position: bytes, end: bytes | None, skip_first: bool
    ) -> list[tuple[bytes, bytes]]:
        chunk: list[tuple[bytes, bytes]] = []
        with self._map_lock, self._env.begin(db=db) as txn:
            cursor = txn.cursor()
            if not cursor.set_range(position):
                return chunk
            for stored_key, data in cursor:
                if end is not None and stored_key >= end:
                    break
                if skip_first and stored_key == position:
                    continue
                chunk.append((stored_key, data))
                if len(chunk) == _SCAN_CHUNK:
                    break
        return chunk

    def stats(self) -> EngineStats:
        with self._map_lock, self._env.begin() as txn:
            stat = txn.stat(self._records)
            hints = txn.stat(self._hints)["entries"]
        pages = stat["branch_pages"] + stat["leaf_pages"] + stat["overflow_pages"]
        return EngineStats(
            records=int(stat["entries"]), bytes_used=int(pages * stat["psize"]), hints=int(hints)
        )

    def snapshot(self, path: Path) -> EngineStats:
        fd = create_private(path)
        try:
            with self._snapshot_lock:
                with self._map_lock:
                    txn = self._env.begin()
                try:
                    records = txn.stat(self._records)["entries"]
                    hints = txn.stat(self._hints)["entries"]
                    # Compacting is what lets the copy be read in ``txn``, and
                    # it leaves the free pages out.
                    self._env.copyfd(fd, compact=True, txn=txn)
                finally:
                    txn.abort()
            os.fsync(fd)
            size = os.fstat(fd).st_size
        except BaseException as exc:
            os.close(fd)
            path.unlink(missing_ok=True)
            if isinstance(exc, lmdb.DiskError) or (
                isinstance(exc, lmdb.Error | OSError) and _disk_nearly_full(path.parent)
            ):
                raise StorageFull(f"no room for the snapshot: {exc}") from None
            raise
        os.close(fd)
        return EngineStats(records=int(records), bytes_used=size, hints=int(hints))

    def close(self) -> None:
        with self._snapshot_lock, self._map_lock:
            self._env.sync(True)
            self._env.close()
        os.close(self._dir_lock)


def _decode_change(stored_key: bytes | memoryview, data: bytes | memoryview) -> Change:
    _, length = _ENTRY_HEAD.unpack_from(data)
    start = _ENTRY_HEAD.size
    key = bytes(data[start : start + length])
    return Change(_SEQ.unpack(stored_key)[0], decode_record(key, data[start + length :]))


def _disk_nearly_full(path: Path) -> bool:
    """Whether the filesystem of ``path`` has less than 1 MiB left."""
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize < 1 << 20


def lock_data_dir(path: Path) -> int:
    """Hold an exclusive lock on the data dir, so two nodes never share one (nor
    a node and a restore); the lock's file descriptor, which holds it until closed.

    Raises Unavailable if another process holds it.
    """
    fd = os.open(
        path / _LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, PRIVATE_FILE_MODE
    )
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise Unavailable(f"data dir {path} is in use by another process") from None
    return fd
