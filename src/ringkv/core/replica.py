"""One replica's side of a coordinator's calls, without I/O.

The same rules answer a call from another node (``ReplicaService``), from
this node's own coordinator (``ReplicaCalls``, which needs no clock or
limits for its own calls: ``refusal``, ``mutations`` and ``answers``) and
from the nodes of the replication simulation, so none of them has rules of
its own:

* a call planned on an older member table than the replica's is refused
  whatever its keys, with the replica's table sent back: its coordinator may
  have chosen replicas, or a quorum size, that the newer table no longer has;
  it adopts the table and plans again;
* the caller's clock is observed before anything is stamped or answered;
* records from a peer are held to the client API's limits: a member's
  messages are trusted no more than a client's;
* a write is persisted as one mutation per record (a hint, for a stand-in),
  all in one commit, and answered per record: held, or beaten by a newer
  version whose timestamp the coordinator must write past, or failed alone.

The shell persists the mutations and reads the engine; these rules decide
what to persist and what to answer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ringkv.core import validation
from ringkv.core.errors import StaleMemberTable
from ringkv.core.hlc import HybridLogicalClock
from ringkv.core.records import ApplyResult, Mutation, Record, ReplicaAck, ack
from ringkv.core.validation import Limits

Fence = tuple[int, int]
"""(epoch, term) of the member table a call was planned on (``Membership.fence``)."""


def refusal(mine: Fence, theirs: Fence) -> StaleMemberTable | None:
    """Why a replica on table ``mine`` refuses a call planned on ``theirs``, if it does."""
    if mine <= theirs:
        return None
    return StaleMemberTable(
        f"this node moved on to member table epoch {mine[0]} (term {mine[1]}) "
        f"since the request was planned on epoch {theirs[0]}",
        metadata={"epoch": str(mine[0])},
    )


def answers(
    records: Sequence[Record], results: Sequence[ApplyResult | Exception], now_ms: int
) -> list[ReplicaAck | Exception]:
    """Each record's answer, once its mutation was persisted (or failed alone)."""
    return [
        result if isinstance(result, Exception) else ack(record, result, now_ms)
        for record, result in zip(records, results, strict=True)
    ]


class ReplicaRules:
    """The rules one replica answers calls by, on its table and clock."""

    def __init__(
        self,
        clock: HybridLogicalClock,
        fence: Callable[[], Fence] | None,
        limits: Limits | None = None,
    ) -> None:
        self._clock = clock
        self._fence = fence
        """The replica's table; None when it is fenced by nothing (one replica alone)."""
        self._limits = limits or Limits()

    def admit(self, theirs: Fence, caller_clock: int) -> StaleMemberTable | None:
        """Observe the caller's clock; why the call is refused, if it is."""
        self._clock.observe_peer(caller_clock)
        return None if self._fence is None else refusal(self._fence(), theirs)

    def write(
        self,
        records: Sequence[Record],
        *,
        fence: Fence,
        caller_clock: int,
        hint_for: str | None,
        now_ms: int,
    ) -> list[Mutation] | StaleMemberTable:
        """A peer's write: what to persist, in one commit, or why it is refused.

        Raises ``InvalidArgument`` for a record or stand-in no member could
        have sent; nothing of such a call is stored.
        """
        if hint_for is not None:
            validation.node_id(hint_for)
        for record in records:
            validation.replica_record(record, self._limits, now_ms)
        refused = self.admit(fence, caller_clock)
        if refused is not None:
            return refused
        return mutations(records, hint_for)


def mutations(records: Sequence[Record], hint_for: str | None) -> list[Mutation]:
    """A write's records as the mutations a replica (or a stand-in) persists."""
    return [Mutation(record, hint_for=hint_for) for record in records]
