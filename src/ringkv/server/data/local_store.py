"""This node's replica: versioned reads and writes of its engine."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from ringkv.core.records import ApplyResult, Mutation, Record
from ringkv.core.replica import mutations
from ringkv.server.data.commit import CommitObserver, CommitQueue
from ringkv.storage import Engine
from ringkv.storage.engine import PaxosStep, T

READ_PIECE = 32
"""Keys read from the engine at once when the answers may be large."""


class LocalStore:
    """The records this node holds, and the hints it holds for others."""

    def __init__(self, engine: Engine, commits: CommitQueue) -> None:
        self._engine = engine
        self._commits = commits

    def read(self, key: bytes) -> Record | None:
        """The newest version held here, as a replica or as a stand-in's hint.

        Tombstones and expired values included: the coordinator decides
        liveness, and needs their versions to order replies.
        """
        (record,) = self.read_many([key])
        return record

    def read_many(self, keys: Sequence[bytes]) -> list[Record | None]:
        """``read`` for many keys, in one read of the engine."""
        return self._engine.newest(keys)

    def read_each(
        self, keys: Sequence[bytes], *, max_bytes: int | None = None
    ) -> Iterator[Record | None]:
        """``read`` for each key in turn, a few keys per read of the engine, so
        that only what the caller keeps is held; with ``max_bytes``, stopping
        once the records' keys and values passed it."""
        size = 0
        for first in range(0, len(keys), READ_PIECE):
            for record in self._engine.newest(keys[first : first + READ_PIECE]):
                if max_bytes is not None and size > max_bytes:
                    return
                yield record
                if record is not None:
                    size += len(record.key) + len(record.value)

    def observe(self, observer: CommitObserver) -> None:
        """Tell ``observer`` of every change to the records from now on."""
        self._commits.observe(observer)

    async def apply(self, record: Record, *, hint_for: str | None = None) -> ApplyResult:
        """Store a record if it is newer than the one held (or the hint, with ``hint_for``)."""
        return await self._commits.submit(Mutation(record, hint_for=hint_for))

    async def apply_many(
        self, records: list[Record], *, hint_for: str | None = None
    ) -> list[ApplyResult | Exception]:
        """``apply`` for many records at once, in one commit: a result or an error each."""
        return await self.persist(mutations(records, hint_for))

    async def persist(self, to_apply: list[Mutation]) -> list[ApplyResult | Exception]:
        """Apply mutations in one commit; one that cannot be stored fails alone."""
        return await self._commits.submit_many(to_apply)

    async def purge(self, records: Sequence[Record]) -> int:
        """Remove these records outright (ranges handed off), each only if it is
        still the version given: a newer write that landed since stays."""
        return await self._commits.purge(records)

    async def paxos(self, key: bytes, step: PaxosStep[T]) -> T:
        """One acceptor step on a key, durable before it returns (``Engine.paxos``)."""
        return await self._commits.paxos(key, step)

    async def drop_hint(self, record: Record, node_id: str) -> None:
        """Forget a hint held for ``node_id`` if it is still this version."""
        await self._commits.submit(Mutation(record, hint_for=node_id, delivered=True))
