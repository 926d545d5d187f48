"""The Engine protocol that every storage engine implements."""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from ringkv.core.errors import PreconditionFailed
from ringkv.core.hlc import Version
from ringkv.core.paxos import AcceptorState
from ringkv.core.records import ApplyResult, Mutation, Record

T = TypeVar("T")
PaxosStep = Callable[[AcceptorState, Record | None], tuple[AcceptorState, T, Record | None]]
"""One acceptor rule applied to a key's state and record (``Engine.paxos``)."""
PaxosOp = tuple[bytes, PaxosStep[Any]]
"""A key and the acceptor rule to apply to it."""


class FsyncMode(enum.StrEnum):
    """When a write reaches the disk before it is acknowledged."""

    ALWAYS = "always"
    """Every write is its own transaction, synced before it is acknowledged."""
    BATCH = "batch"
    """Concurrent writes share one transaction, synced before any is acknowledged."""
    NEVER = "never"
    """Writes are committed to the OS page cache and never synced: they survive a
    crash of the process, not of the machine."""


@dataclass(frozen=True, slots=True)
class EngineStats:
    """Sizes of an engine's contents."""

    records: int
    """Stored records, tombstones and expired values included."""
    bytes_used: int
    """Bytes the records occupy (pages in use for LMDB)."""
    hints: int = 0
    """Hints held for other nodes."""


DEFAULT_CHANGE_LOG_ENTRIES = 100_000
"""Change log entries an engine keeps by default (``--watch-log-entries``)."""
CHANGES_READ_BYTES = 4 << 20
"""``Engine.changes`` stops after the entry that passes this many bytes."""
CHANGE_LOG_OFF = (1 << 63) - 1
"""``ChangeLogState.horizon`` of an engine that keeps no change log."""


@dataclass(frozen=True, slots=True)
class Change:
    """One entry of an engine's change log."""

    seq: int
    """Numbers the entries from 1 in the order they were stored."""
    record: Record


@dataclass(frozen=True, slots=True)
class ChangeLogState:
    last_seq: int
    """The sequence number of the newest entry; 0 for none yet."""
    horizon: int
    """The largest version timestamp trimmed from the log (0: none): a
    change at or below it may be gone. ``CHANGE_LOG_OFF`` when the engine
    keeps no log."""


def trim_count(entries: int, keep: int) -> int:
    """How many of the oldest entries to trim from a log of ``entries`` that
    keeps ``keep``: none until it is an eighth over, so trimming is amortized."""
    return entries - keep if entries > keep + max(1, keep // 8) else 0


class BackupUnsupported(PreconditionFailed):
    """The engine keeps nothing on disk, so there is nothing to back up."""

    default_reason = "BACKUP_UNSUPPORTED"


def purge_checks(
    keys: Sequence[bytes], expected: Sequence[Version] | None
) -> Sequence[Version | None]:
    """The version each key of a ``purge`` must still have (None: any), checked
    before anything is removed so a bad call removes nothing."""
    if expected is None:
        return [None] * len(keys)
    if len(expected) != len(keys):
        raise ValueError(f"purge of {len(keys)} keys got {len(expected)} expected versions")
    return expected


class Engine(Protocol):
    """A store of versioned records, keyed by (token, key).

    ``apply`` is called from one thread at a time (the node's commit thread);
    ``get``, ``scan`` and ``purge`` may run concurrently with it from another
    thread.
    """

    @property
    def generation(self) -> int:
        """Grows after every ``apply``, ``purge`` and ``paxos`` call: what a
        scan found is still what the engine holds while this has not moved
        since before the scan began."""
        ...

    def get(self, key: bytes) -> Record | None:
        """The newest stored record of a key, tombstones and expired values included."""
        ...

    def get_hints(self, key: bytes) -> list[Record]:
        """The hints held for ``key``, one per node they are held for, by node id."""
        ...

    def newest(self, keys: Sequence[bytes]) -> list[Record | None]:
        """For each key, the newest version held, as a record or as a hint
        (what this node's replica answers, and what it stamps past), read at
        one moment."""
        ...

    def apply(self, mutations: Sequence[Mutation]) -> list[ApplyResult]:
        """Store each mutation whose version is newer than the one stored.

        A mutation with ``hint_for`` is compared with, and replaces, the hint
        held for that node, not the record.

        All mutations commit in one transaction, in order, durably as the
        engine's fsync mode says, before this returns. Raises StorageFull when
        there is no room; then nothing of the batch is stored.
        """
        ...

    def purge(self, keys: Sequence[bytes], *, expected: Sequence[Version] | None = None) -> int:
        """Remove the records (not the hints) of ``keys`` for good, in one
        transaction; the number removed.

        With ``expected``, one version per key, a key's record is removed only
        if it is still that version: a write that replaced it after the caller
        looked stays. The check and the removal share the transaction, so no
        write can slip in between. Raises StorageFull like ``apply``.
        """
        ...

    def paxos(self, ops: Sequence[PaxosOp]) -> list[Any]:
        """Paxos steps, in order, in one transaction, durably: each step gets
        its key's acceptor state and record (as the steps before it left them)
        and returns the new state, its answer, and a record to apply (a commit)
        or None. Returns the answers once everything is committed; called from
        the commit thread, like ``apply``. Raises StorageFull like ``apply``.
        """
        ...

    def scan(self, start_token: int, end_token: int) -> Iterator[Record]:
        """Records with ``start_token <= token < end_token``, in (token, key) order."""
        ...

    def changes(self, after: int, limit: int) -> list[Change]:
        """Up to ``limit`` change log entries numbered above ``after``, oldest
        first, ending early once they pass ``CHANGES_READ_BYTES``.

        The log holds every record stored as its key's newest version (by
        ``apply`` or a Paxos commit; hints are not changes), in the order they
        were stored, in the same transaction: the last ``change_log_entries``
        of them (the engine's setting), durable like the records.
        """
        ...

    def change_log_state(self) -> ChangeLogState:
        """The newest entry's number and how far back the log reaches."""
        ...

    def scan_hints(self) -> Iterator[tuple[str, Record]]:
        """Every hint held, with the node it is for."""
        ...

    def stats(self) -> EngineStats:
        """Current sizes."""
        ...

    def snapshot(self, path: Path) -> EngineStats:
        """Write a consistent copy of the store to ``path``, a new file, while
        reads and writes go on; the sizes of what the copy holds.

        The copy is one LMDB file (a compacted ``data.mdb``, records and hints)
        read in one transaction: it holds every write committed before the
        snapshot began and none committed after. Raises BackupUnsupported if
        the engine keeps nothing on disk, StorageFull if the copy does not fit;
        then ``path`` is not left behind.
        """
        ...

    def close(self) -> None:
        """Flush and release the engine; it must not be used afterwards."""
        ...
