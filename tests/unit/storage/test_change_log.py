"""The change log every engine keeps for watches: what it logs, in what
order, how it is trimmed, and (LMDB) that it survives a restart."""

from __future__ import annotations

from pathlib import Path

import pytest

from ringkv.core.paxos import Ballot, Proposal, commit_step
from ringkv.core.validation import MAX_KEY_BYTES
from ringkv.storage.engine import CHANGE_LOG_OFF, Engine
from ringkv.storage.lmdb_engine import LmdbEngine
from ringkv.storage.memory import MemoryEngine

from .helpers import ENGINE_KINDS, hint, put, rec


def make(kind: str, path: Path, keep: int) -> Engine:
    if kind == "memory":
        return MemoryEngine(change_log_entries=keep)
    return LmdbEngine(path, change_log_entries=keep)


def test_newest_versions_are_logged_in_the_order_stored(engine: Engine) -> None:
    long_key = b"L" * MAX_KEY_BYTES
    engine.apply([put(rec(b"a", 5)), put(rec(b"b", 3)), put(rec(long_key, 4))])
    engine.apply(
        [
            put(rec(b"a", 4)),  # stale: not a change
            hint(rec(b"c", 9), "node-b"),  # a hint: not this replica's change
            put(rec(b"b", 6, tombstone=True)),
        ]
    )
    engine.paxos([(b"p", commit_step(Proposal(Ballot(1, "x"), rec(b"p", 8))))])

    changes = engine.changes(0, 100)
    assert [c.seq for c in changes] == [1, 2, 3, 4, 5]
    assert [c.record for c in changes] == [
        rec(b"a", 5),
        rec(b"b", 3),
        rec(long_key, 4),
        rec(b"b", 6, tombstone=True),
        rec(b"p", 8),
    ]
    assert engine.changes(3, 1) == changes[3:4]
    assert engine.changes(5, 10) == []
    assert engine.change_log_state().last_seq == 5
    assert engine.change_log_state().horizon == 0


@pytest.mark.parametrize("kind", ENGINE_KINDS)
def test_the_log_keeps_its_newest_entries_and_says_how_far_back_it_reaches(
    kind: str, tmp_path: Path
) -> None:
    engine = make(kind, tmp_path / "db", keep=8)
    try:
        timestamps = [30, 10, 20, 40, 50, 60, 70, 80, 90, 100]
        for number, timestamp in enumerate(timestamps):
            engine.apply([put(rec(f"k{number}".encode(), timestamp))])
        # Trimmed once it passed 8 + 1: down to 8, the largest trimmed is 30.
        changes = engine.changes(0, 100)
        assert [c.seq for c in changes] == [3, 4, 5, 6, 7, 8, 9, 10]
        assert engine.change_log_state().horizon == 30
    finally:
        engine.close()


@pytest.mark.parametrize("kind", ENGINE_KINDS)
def test_an_engine_with_no_log_logs_nothing(kind: str, tmp_path: Path) -> None:
    engine = make(kind, tmp_path / "db", keep=0)
    try:
        engine.apply([put(rec(b"a", 5))])
        assert engine.changes(0, 10) == []
        assert engine.change_log_state().horizon == CHANGE_LOG_OFF
    finally:
        engine.close()


def test_the_lmdb_log_survives_a_restart(tmp_path: Path) -> None:
    engine = LmdbEngine(tmp_path / "db", change_log_entries=2)
    engine.apply([put(rec(b"a", 1)), put(rec(b"b", 2)), put(rec(b"c", 3)), put(rec(b"d", 4))])
    before = engine.changes(0, 10)
    engine.close()

    engine = LmdbEngine(tmp_path / "db", change_log_entries=2)
    try:
        assert engine.changes(0, 10) == before
        assert engine.change_log_state().horizon == 2
        engine.apply([put(rec(b"e", 5))])
        assert engine.changes(before[-1].seq, 10)[0].seq == before[-1].seq + 1
    finally:
        engine.close()
