"""Opening the engine a node's configuration names."""

from __future__ import annotations

from pathlib import Path

from ringkv.storage.engine import Engine, FsyncMode
from ringkv.storage.lmdb_engine import LmdbEngine
from ringkv.storage.memory import MemoryEngine

ENGINE_KINDS = ("lmdb", "memory")


def open_engine(kind: str, data_dir: Path, fsync: FsyncMode) -> Engine:
    """A ready engine of ``kind`` ("lmdb" or "memory")."""
    if kind == "lmdb":
        return LmdbEngine(data_dir, fsync)
    if kind == "memory":
        return MemoryEngine()
    raise ValueError(f"unknown engine {kind!r}; choose from {', '.join(ENGINE_KINDS)}")
