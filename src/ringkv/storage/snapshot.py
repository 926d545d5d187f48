"""Backup files of the LMDB engine: their manifest, checking them, restoring them.

A backup is two files: the snapshot ``FILE``, one compacted LMDB data file
(what ``LmdbEngine.snapshot`` writes; ``mdb_stat -n FILE`` reads it), and its
manifest ``FILE.json``: the node it came from, how many records and hints it
holds, its size and its SHA-256.

Restoring checks the file before anything in the data dir changes: the size
and checksum the manifest gives, then that it opens as LMDB with ringkv's
``records`` and ``hints`` tables, that every entry decodes, and that the
counts match the manifest. Only then, holding the data dir's lock (the one a
node holds while it runs), it copies the file to ``DIR/data.mdb``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lmdb

from ringkv.core.errors import InvalidArgument, PreconditionFailed
from ringkv.core.records import Record
from ringkv.storage.codec import (
    decode_acceptor_state,
    decode_record,
    hint_key,
    hint_parts,
    storage_key,
    stored_user_key,
)
from ringkv.storage.files import (
    IDENTITY_FILES,
    create_private,
    create_private_anew,
    make_private_dir,
    owner,
    publish,
    sync_dir,
    write_owner,
)
from ringkv.storage.lmdb_engine import lock_data_dir

FORMAT = "ringkv-lmdb-snapshot/1"
"""The ``format`` of a manifest this version writes and reads."""
DATA_FILE = "data.mdb"
"""LMDB's data file in a data dir: what a restore writes."""
_LMDB_LOCK_FILE = "lock.mdb"
_DIR_LOCK_FILE = "ringkv.lock"
_TABLES = (b"records", b"hints")
_PAXOS = b"paxos"
_OPTIONAL_TABLES = (_PAXOS, b"changes", b"meta")
"""Tables a backup may hold, as the version that wrote it kept them."""
"""Conditional writes' acceptor state: in snapshots of nodes that ran any."""
_COPY_CHUNK = 1 << 20


class CorruptBackup(InvalidArgument):
    """A backup file (or its manifest) is not a whole, readable snapshot."""

    default_reason = "CORRUPT_BACKUP"


class DataDirNotEmpty(PreconditionFailed):
    """A restore would replace what a data dir holds, and was not told to."""

    default_reason = "DATA_DIR_NOT_EMPTY"


@dataclass(frozen=True, slots=True)
class Manifest:
    """What a backup holds, written beside it as ``FILE.json``."""

    node_id: str
    """The node whose store was copied."""
    records: int
    """Records in the snapshot, tombstones and expired values included."""
    hints: int
    """Hints the node held for other nodes."""
    size_bytes: int
    sha256: str
    """SHA-256 of the snapshot file, lower-case hex."""
    created_at_ms: int
    """When the node took the snapshot (its wall clock, Unix milliseconds)."""
    format: str = FORMAT

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        """The manifest in ``text``, or CorruptBackup saying what is wrong with it."""
        try:
            document: Any = json.loads(text)
            manifest = cls(
                node_id=_typed(document, "node_id", str),
                records=_typed(document, "records", int),
                hints=_typed(document, "hints", int),
                size_bytes=_typed(document, "size_bytes", int),
                sha256=_typed(document, "sha256", str),
                created_at_ms=_typed(document, "created_at_ms", int),
                format=_typed(document, "format", str),
            )
        except (ValueError, TypeError, KeyError) as error:
            raise CorruptBackup(f"the manifest is not valid: {error}") from None
        if manifest.format != FORMAT:
            raise CorruptBackup(f"unknown backup format {manifest.format!r}, expected {FORMAT!r}")
        return manifest


def _typed(document: Any, field: str, kind: type[Any]) -> Any:
    value = document[field]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise TypeError(f"{field} is not a {kind.__name__}")
    return value


def manifest_path(snapshot: Path) -> Path:
    """Where the manifest of the snapshot file ``snapshot`` lives: ``FILE.json``."""
    return snapshot.with_name(snapshot.name + ".json")


def write_manifest(snapshot: Path, manifest: Manifest) -> Path:
    """Write ``FILE.json`` beside the snapshot (synced); its path."""
    path = manifest_path(snapshot)
    temporary = path.with_name(path.name + ".partial")
    try:
        with os.fdopen(create_private(temporary), "w") as file:
            file.write(manifest.to_json())
            file.flush()
            os.fsync(file.fileno())
        publish(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def read_manifest(snapshot: Path) -> Manifest | None:
    """The manifest beside ``snapshot``; None if there is none."""
    path = manifest_path(snapshot)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as error:
        raise CorruptBackup(f"cannot read the manifest {path}: {error}") from None
    return Manifest.from_json(text)


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, lower-case hex."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(_COPY_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class SnapshotContents:
    """What a checked snapshot file holds."""

    records: int
    hints: int
    size_bytes: int
    sha256: str


def check_snapshot(path: Path, manifest: Manifest | None = None) -> SnapshotContents:
    """Check that ``path`` is a whole ringkv snapshot (and the one ``manifest``
    describes); what it holds. Raises CorruptBackup saying what is wrong.

    With a manifest, the size and checksum are compared first, so LMDB never
    reads a damaged file. Then the file must open as LMDB, have the
    ``records`` and ``hints`` tables and nothing else, and every entry must
    decode and sit under the key it belongs to.
    """
    try:
        size = path.stat().st_size
        sha256 = file_sha256(path)
    except OSError as error:
        raise CorruptBackup(f"cannot read {path}: {error.strerror or error}") from None
    if manifest is not None:
        if size != manifest.size_bytes:
            raise CorruptBackup(
                f"{path} has {size} bytes, its manifest says {manifest.size_bytes} "
                "(truncated or not the same file)"
            )
        if sha256 != manifest.sha256:
            raise CorruptBackup(f"{path} does not match the checksum in its manifest")
    records, hints = _count_entries(path, size)
    if manifest is not None and (records, hints) != (manifest.records, manifest.hints):
        raise CorruptBackup(
            f"{path} holds {records} records and {hints} hints, its manifest says "
            f"{manifest.records} and {manifest.hints}"
        )
    return SnapshotContents(records=records, hints=hints, size_bytes=size, sha256=sha256)


def _count_entries(path: Path, size: int) -> tuple[int, int]:
    counts = dict.fromkeys(_TABLES, 0)
    try:
        with _open_snapshot(path, size) as (env, tables), env.begin(buffers=True) as txn:
            for stored, data in txn.cursor(db=tables[b"records"]):
                stored_key = bytes(stored)
                key = stored_user_key(stored_key, data)
                decode_record(key, data)
                if storage_key(key) != stored_key:
                    raise CorruptBackup(f"{path}: a record is stored under another key")
                counts[b"records"] += 1
            for stored, data in txn.cursor(db=tables[b"hints"]):
                stored_key = bytes(stored)
                key, node = hint_parts(stored_key, data)
                decode_record(key, data)
                if hint_key(key, node) != stored_key:
                    raise CorruptBackup(f"{path}: a hint is stored under another key")
                counts[b"hints"] += 1
            if _PAXOS in tables:
                counts[_PAXOS] = 0
                for _, data in txn.cursor(db=tables[_PAXOS]):
                    decode_acceptor_state(b"", data)
                    counts[_PAXOS] += 1
            for table, counted in counts.items():
                if txn.stat(tables[table])["entries"] != counted:
                    raise CorruptBackup(f"{path}: the {table.decode()} table is inconsistent")
    except CorruptBackup:
        raise
    except (lmdb.Error, ValueError, IndexError, UnicodeDecodeError) as error:
        raise CorruptBackup(f"{path} is not a readable ringkv snapshot: {error}") from None
    return counts[b"records"], counts[b"hints"]


@contextmanager
def _open_snapshot(path: Path, size: int) -> Iterator[tuple[lmdb.Environment, dict[bytes, Any]]]:
    """The snapshot file opened read-only (no lock file), with its tables."""
    env = lmdb.open(str(path), subdir=False, readonly=True, lock=False, create=False, max_dbs=8)
    try:
        info, stat = env.info(), env.stat()
        # LMDB maps the file and follows page numbers into it: a page past the
        # end of a truncated file would be a SIGBUS, not an error.
        needed = (int(info["last_pgno"]) + 1) * int(stat["psize"])
        if needed > size:
            raise CorruptBackup(f"{path} is truncated: {size} bytes, its pages need {needed}")
        with env.begin() as txn:
            names = sorted(bytes(name) for name, _ in txn.cursor())
        if not set(_TABLES) <= set(names) <= {*_TABLES, *_OPTIONAL_TABLES}:
            found = ", ".join(repr(name.decode(errors="replace")) for name in names) or "none"
            raise CorruptBackup(
                f"{path} has the tables {found}, not 'hints' and 'records' "
                "(and 'paxos', 'changes', 'meta')"
            )
        yield env, {name: env.open_db(name, create=False) for name in names}
    finally:
        env.close()


def snapshot_records(path: Path) -> Iterator[Record]:
    """Every record of a snapshot file, in (token, key) order (for checks and tools)."""
    with _open_snapshot(path, path.stat().st_size) as (env, tables), env.begin() as txn:
        for stored_key, data in txn.cursor(db=tables[b"records"]):
            yield decode_record(stored_user_key(stored_key, data), data)


@dataclass(frozen=True, slots=True)
class RestoreReport:
    """What a restore wrote."""

    data_file: Path
    contents: SnapshotContents
    manifest: Manifest | None
    """None if the backup had no manifest (only the LMDB structure was checked)."""


def restore(
    snapshot: Path,
    data_dir: Path,
    *,
    force: bool = False,
    node_id: str | None = None,
) -> RestoreReport:
    """Load a backup into ``data_dir`` for a node to start on.

    The dir must be empty (or absent) unless ``force``; then its ``data.mdb``
    is replaced and everything else (``cluster.json``, the node's vote and
    member table) stays. With ``node_id``, the manifest must name that node.
    Raises CorruptBackup, DataDirNotEmpty, or Unavailable if a node (or
    another restore) holds the dir's lock; nothing in the dir changes then.
    """
    if not snapshot.is_file():
        raise InvalidArgument(f"no backup file {snapshot}", reason="NO_SUCH_FILE")
    if not force:
        _refuse_if_not_empty(data_dir)  # before reading a large file for nothing
    manifest = read_manifest(snapshot)
    new_owner = _new_owner(data_dir, manifest, node_id, snapshot)
    contents = check_snapshot(snapshot, manifest)
    make_private_dir(data_dir)
    lock = lock_data_dir(data_dir)
    try:
        if not force:
            _refuse_if_not_empty(data_dir)
        target = data_dir / DATA_FILE
        _copy_checked(snapshot, target, contents.sha256)
        # LMDB rebuilds its lock file on open; an old one describes old readers.
        (data_dir / _LMDB_LOCK_FILE).unlink(missing_ok=True)
        held = owner(data_dir)
        if new_owner is not None and new_owner != held:
            if held is not None:
                # The former owner's vote, member table and clock mark are
                # not the new owner's: it starts as if restored into an empty dir.
                for name in IDENTITY_FILES:
                    (data_dir / name).unlink(missing_ok=True)
            write_owner(data_dir, new_owner)
        sync_dir(data_dir)
    finally:
        os.close(lock)
    return RestoreReport(data_file=target, contents=contents, manifest=manifest)


def _new_owner(
    data_dir: Path, manifest: Manifest | None, node_id: str | None, snapshot: Path
) -> str | None:
    """The node the data dir belongs to after the restore, or WRONG_NODE.

    ``--node-id`` must name the backup's node. A dir that belongs to another
    node takes the backup only with ``--node-id``: restoring over a node's
    data by mistake would make it serve another node's replicas as its own.
    """
    backed_up = manifest.node_id if manifest is not None else None
    if node_id is not None:
        if manifest is None:
            raise CorruptBackup(f"no manifest {manifest_path(snapshot)} to check the node id in")
        if backed_up != node_id:
            raise PreconditionFailed(
                f"the backup is of {backed_up}, not {node_id}", reason="WRONG_NODE"
            )
    held = owner(data_dir)
    if held is not None and backed_up is not None and held != backed_up and node_id is None:
        raise PreconditionFailed(
            f"data dir {data_dir} belongs to {held} and the backup is of {backed_up}: pass "
            f"--node-id {backed_up} to restore it there (the dir then belongs to {backed_up})",
            reason="WRONG_NODE",
        )
    return backed_up


def _refuse_if_not_empty(data_dir: Path) -> None:
    if not data_dir.exists():
        return
    if not data_dir.is_dir():
        raise InvalidArgument(f"{data_dir} is not a directory", reason="NOT_A_DIRECTORY")
    present = sorted(p.name for p in data_dir.iterdir() if p.name != _DIR_LOCK_FILE)
    if present:
        shown = ", ".join(present[:5]) + (", ..." if len(present) > 5 else "")
        raise DataDirNotEmpty(
            f"data dir {data_dir} is not empty ({shown}); pass --force to replace its data"
        )


def _copy_checked(source: Path, target: Path, sha256: str) -> None:
    """Copy ``source`` to ``target`` through a synced temporary file, checking on
    the way that the bytes are still the ones checked before."""
    temporary = target.with_name(f".{target.name}.restoring")
    digest = hashlib.sha256()
    try:
        with source.open("rb") as reader, os.fdopen(create_private_anew(temporary), "wb") as writer:
            while chunk := reader.read(_COPY_CHUNK):
                digest.update(chunk)
                writer.write(chunk)
            writer.flush()
            os.fsync(writer.fileno())
        if digest.hexdigest() != sha256:
            raise CorruptBackup(f"{source} changed while it was being restored")
        temporary.replace(target)
    finally:
        temporary.unlink(missing_ok=True)
