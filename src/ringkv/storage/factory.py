"""Opening the engine a node's configuration names."""

from __future__ import annotations

from pathlib import Path

from ringkv.storage.engine import DEFAULT_CHANGE_LOG_ENTRIES, Engine, FsyncMode
from ringkv.storage.lmdb_engine import LmdbEngine
from ringkv.storage.memory import MemoryEngine

ENGINE_KINDS = ("lmdb", "memory")


def open_engine(
    kind: str,
    data_dir: Path,
    fsync: FsyncMode,
    *,
    change_log_entries: int = DEFAULT_CHANGE_LOG_ENTRIES,
) -> Engine:
    """A ready engine of ``kind`` ("lmdb" or "memory")."""
    if kind == "lmdb":
        return LmdbEngine(data_dir, fsync, change_log_entries=change_log_entries)
    if kind == "memory":
        return MemoryEngine(change_log_entries=change_log_entries)
    raise ValueError(f"unknown engine {kind!r}; choose from {', '.join(ENGINE_KINDS)}")
