"""Builders shared by the storage tests."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ringkv.core.hlc import Version
from ringkv.core.records import NO_EXPIRY, Mutation, Record
from ringkv.core.tokens import token_of
from ringkv.storage.engine import Engine, FsyncMode
from ringkv.storage.lmdb_engine import LmdbEngine
from ringkv.storage.memory import MemoryEngine

ENGINE_KINDS = ("memory", "lmdb")
"""The engines every contract test runs against."""

NODE = "node-a"
FULL_RANGE = (0, 1 << 64)


def make_engine(kind: str, path: Path, fsync: FsyncMode = FsyncMode.BATCH) -> Engine:
    """A fresh engine of ``kind``; ``path`` is used only by LMDB."""
    if kind == "memory":
        return MemoryEngine()
    if kind == "lmdb":
        return LmdbEngine(path, fsync)
    raise AssertionError(f"unknown engine kind {kind!r}")


@contextmanager
def fresh_engine(kind: str, fsync: FsyncMode = FsyncMode.NEVER) -> Iterator[Engine]:
    """An engine in its own temporary dir, closed and removed afterwards.

    For Hypothesis, whose examples cannot use function-scoped fixtures.
    """
    root = Path(tempfile.mkdtemp(prefix="ringkv-storage-test-"))
    try:
        engine = make_engine(kind, root / "data", fsync)
        try:
            yield engine
        finally:
            engine.close()
    finally:
        shutil.rmtree(root)


def rec(
    key: bytes,
    timestamp: int,
    value: bytes = b"value",
    *,
    node: str = NODE,
    tombstone: bool = False,
    expires_at_ms: int = NO_EXPIRY,
) -> Record:
    """A record of ``key`` at version (timestamp, node)."""
    return Record(
        key=key,
        value=b"" if tombstone else value,
        version=Version(timestamp, node),
        tombstone=tombstone,
        expires_at_ms=expires_at_ms,
    )


def put(record: Record) -> Mutation:
    """A mutation that stores ``record`` as this node's replica."""
    return Mutation(record=record)


def hint(record: Record, node: str) -> Mutation:
    """A mutation that holds ``record`` as a hint for ``node``."""
    return Mutation(record=record, hint_for=node)


def by_version(records: Iterable[Record]) -> list[Record]:
    """Records in a canonical order, for comparing lists of hints (whose order is unspecified)."""
    return sorted(records, key=lambda r: (r.version, r.value, r.tombstone, r.expires_at_ms))


def in_scan_order(records: Iterable[Record]) -> list[Record]:
    """Records sorted as scan returns them: by (token, key)."""
    return sorted(records, key=lambda r: (token_of(r.key), r.key))


def scan_all(engine: Engine) -> list[Record]:
    """Every record of the engine, in scan order."""
    return list(engine.scan(*FULL_RANGE))
