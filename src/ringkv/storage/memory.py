"""An engine that keeps records in a dict: fast, and gone when the process ends."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ringkv.core import quorum
from ringkv.core.hlc import Version
from ringkv.core.paxos import AcceptorState
from ringkv.core.records import ApplyResult, Mutation, Outcome, Record, resolve
from ringkv.core.tokens import token_of
from ringkv.storage.engine import (
    CHANGE_LOG_OFF,
    CHANGES_READ_BYTES,
    DEFAULT_CHANGE_LOG_ENTRIES,
    BackupUnsupported,
    Change,
    ChangeLogState,
    EngineStats,
    PaxosOp,
    purge_checks,
    trim_count,
)


class MemoryEngine:
    """Records in memory, for tests and caches; ``--fsync`` does not apply."""

    def __init__(self, *, change_log_entries: int = DEFAULT_CHANGE_LOG_ENTRIES) -> None:
        self._change_log_entries = change_log_entries
        self._changes: list[Change] = []
        self._last_seq = 0
        self._horizon = 0 if change_log_entries else CHANGE_LOG_OFF
        self._records: dict[bytes, Record] = {}
        self._hints: dict[tuple[bytes, str], Record] = {}
        self._paxos: dict[bytes, AcceptorState] = {}
        self._lock = threading.Lock()
        self._generation = 0

    @property
    def generation(self) -> int:
        return self._generation

    def get(self, key: bytes) -> Record | None:
        with self._lock:
            return self._records.get(key)

    def get_hints(self, key: bytes) -> list[Record]:
        with self._lock:
            held = [
                (node, record) for (hinted, node), record in self._hints.items() if hinted == key
            ]
        return [record for _, record in sorted(held, key=lambda item: item[0])]

    def newest(self, keys: Sequence[bytes]) -> list[Record | None]:
        with self._lock:
            held = {key: [self._records.get(key)] for key in keys}
            # By node id, as LMDB keeps them: the first of equal versions wins.
            for (hinted, _), record in sorted(self._hints.items(), key=lambda item: item[0]):
                if hinted in held:
                    held[hinted].append(record)
        return [quorum.newest(held[key]) for key in keys]

    def apply(self, mutations: Sequence[Mutation]) -> list[ApplyResult]:
        results = []
        with self._lock:
            self._generation += 1
            for mutation in mutations:
                key = mutation.record.key
                store: dict[Any, Record] = self._records
                slot: Any = key
                if mutation.hint_for is not None:
                    store, slot = self._hints, (key, mutation.hint_for)
                result = resolve(mutation, store.get(slot))
                if result.outcome is Outcome.APPLIED and mutation.delivered:
                    del store[slot]
                elif result.outcome is Outcome.APPLIED:
                    store[slot] = mutation.record
                    if mutation.hint_for is None:
                        self._log_change(mutation.record)
                results.append(result)
            self._trim_changes()
        return results

    def paxos(self, ops: Sequence[PaxosOp]) -> list[Any]:
        answers = []
        with self._lock:
            self._generation += 1
            for key, step in ops:
                current = self._records.get(key)
                state, answer, chosen = step(self._paxos.get(key, AcceptorState()), current)
                self._paxos[key] = state
                if (
                    chosen is not None
                    and resolve(Mutation(chosen), current).outcome is Outcome.APPLIED
                ):
                    self._records[key] = chosen
                    self._log_change(chosen)
                answers.append(answer)
            self._trim_changes()
        return answers

    def _log_change(self, record: Record) -> None:
        if self._change_log_entries:
            self._last_seq += 1
            self._changes.append(Change(self._last_seq, record))

    def _trim_changes(self) -> None:
        count = trim_count(len(self._changes), self._change_log_entries)
        if count:
            trimmed = self._changes[:count]
            del self._changes[:count]
            newest = max(change.record.version.timestamp for change in trimmed)
            self._horizon = max(self._horizon, newest)

    def changes(self, after: int, limit: int) -> list[Change]:
        with self._lock:
            if not self._changes:
                return []
            # Numbers are consecutive: the entry after ``after`` is at a known place.
            first = max(0, after + 1 - self._changes[0].seq)
            found: list[Change] = []
            size = 0
            for change in self._changes[first : first + limit]:
                found.append(change)
                size += len(change.record.key) + len(change.record.value)
                if size >= CHANGES_READ_BYTES:
                    break
            return found

    def change_log_state(self) -> ChangeLogState:
        with self._lock:
            return ChangeLogState(self._last_seq, self._horizon)

    def purge(self, keys: Sequence[bytes], *, expected: Sequence[Version] | None = None) -> int:
        versions = purge_checks(keys, expected)
        removed = 0
        with self._lock:
            self._generation += 1
            for key, version in zip(keys, versions, strict=True):
                current = self._records.get(key)
                if current is not None and version in (None, current.version):
                    del self._records[key]
                    removed += 1
        return removed

    def scan(self, start_token: int, end_token: int) -> Iterator[Record]:
        with self._lock:
            in_range = [
                (token, record.key, record)
                for record in self._records.values()
                if start_token <= (token := token_of(record.key)) < end_token
            ]
        in_range.sort(key=lambda item: (item[0], item[1]))
        return iter([record for _, _, record in in_range])

    def scan_hints(self) -> Iterator[tuple[str, Record]]:
        with self._lock:
            held = sorted(self._hints.items(), key=lambda item: (item[0][1], item[0][0]))
        return iter([(node, record) for (_, node), record in held])

    def stats(self) -> EngineStats:
        with self._lock:
            size = sum(len(r.key) + len(r.value) for r in self._records.values())
            return EngineStats(records=len(self._records), bytes_used=size, hints=len(self._hints))

    def snapshot(self, path: Path) -> EngineStats:
        """Always refused: what a memory node holds is gone when it stops, by
        design, so a backup of it is a backup of its replicas (LMDB nodes)."""
        raise BackupUnsupported(
            "the memory engine cannot be backed up: it keeps nothing on disk "
            "(back up a node that runs with --engine lmdb)"
        )

    def close(self) -> None:
        with self._lock:
            self._records.clear()
            self._hints.clear()
