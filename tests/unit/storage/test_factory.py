"""Opening the engine a node's configuration names."""

from __future__ import annotations

from pathlib import Path

import pytest

from ringkv.storage import ENGINE_KINDS, open_engine
from ringkv.storage.engine import Engine, FsyncMode
from ringkv.storage.lmdb_engine import LmdbEngine
from ringkv.storage.memory import MemoryEngine

from .helpers import put, rec


def test_engine_kinds() -> None:
    assert set(ENGINE_KINDS) == {"lmdb", "memory"}


@pytest.mark.parametrize("fsync", list(FsyncMode))
def test_lmdb_kind_opens_an_lmdb_engine_in_the_data_dir(tmp_path: Path, fsync: FsyncMode) -> None:
    data_dir = tmp_path / "node" / "data"
    engine = open_engine("lmdb", data_dir, fsync)
    try:
        assert isinstance(engine, LmdbEngine)
        assert engine._env.flags()["sync"] is (fsync is not FsyncMode.NEVER)
        engine.apply([put(rec(b"k", 1))])
        assert engine.get(b"k") == rec(b"k", 1)
    finally:
        engine.close()
    assert (data_dir / "data.mdb").is_file()


def test_memory_kind_opens_a_memory_engine_and_touches_no_disk(tmp_path: Path) -> None:
    data_dir = tmp_path / "unused"
    engine = open_engine("memory", data_dir, FsyncMode.ALWAYS)
    try:
        assert isinstance(engine, MemoryEngine)
        engine.apply([put(rec(b"k", 1))])
        assert engine.get(b"k") == rec(b"k", 1)
    finally:
        engine.close()
    assert not data_dir.exists()


@pytest.mark.parametrize("kind", ENGINE_KINDS)
def test_every_kind_opens_an_empty_engine(tmp_path: Path, kind: str) -> None:
    engine: Engine = open_engine(kind, tmp_path, FsyncMode.BATCH)
    try:
        assert engine.stats().records == 0
        assert list(engine.scan(0, 1 << 64)) == []
    finally:
        engine.close()


@pytest.mark.parametrize("kind", ["rocksdb", "LMDB", "Memory", " lmdb", "", "lmdb,memory"])
def test_unknown_kinds_are_rejected(tmp_path: Path, kind: str) -> None:
    with pytest.raises(ValueError, match=r"unknown engine .*; choose from lmdb, memory") as raised:
        open_engine(kind, tmp_path / "data", FsyncMode.BATCH)
    assert repr(kind) in str(raised.value)
    assert not (tmp_path / "data").exists()


def test_engines_satisfy_the_protocol(tmp_path: Path) -> None:
    # Checked by mypy as much as at run time: both classes are Engines.
    engines: list[Engine] = [MemoryEngine(), LmdbEngine(tmp_path)]
    for engine in engines:
        engine.close()
