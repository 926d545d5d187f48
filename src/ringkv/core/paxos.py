"""Compare-and-set by consensus: single-decree Paxos per key among its home
replicas, as Cassandra's lightweight transactions.

A conditional write is one Paxos round. The proposer prepares a ballot at a
quorum, which answers with its promise, the proposal it accepted last, the
ballot of the last proposal committed there, and its copy of the key (the
read). A proposal accepted but not committed is finished first, with the new
ballot. Then the precondition is checked against the newest copy; if it holds
the new record is proposed, and once a quorum accepted it, committed: applied
to each replica's data like any write. So two conditional writes on one key
are ordered by their ballots wherever their coordinators run, and one that
lost the race finds the other's value when it reads again.

The acceptor's rules are pure functions of the key's persisted state; the
proposer's decision after the prepare round is a pure function of the
promises. The I/O (persisting before answering, the rounds, backoff) is
``ringkv.server.data.compare_and_set``'s.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from ringkv.core.quorum import newest
from ringkv.core.records import Record


@dataclass(frozen=True, order=True, slots=True)
class Ballot:
    """Orders proposals for one key: a hybrid clock timestamp, ties broken by node."""

    timestamp: int
    node_id: str


@dataclass(frozen=True, slots=True)
class Proposal:
    ballot: Ballot
    record: Record


@dataclass(frozen=True, slots=True)
class AcceptorState:
    """What one replica remembers of a key's Paxos rounds (persisted before it answers)."""

    promised: Ballot | None = None
    """No proposal with a smaller ballot is accepted here."""
    accepted: Proposal | None = None
    """The last proposal accepted here that is not known to be committed."""
    committed: Ballot | None = None
    """The ballot of the newest proposal committed here."""


@dataclass(frozen=True, slots=True)
class Promise:
    """A replica's answer to a prepare."""

    granted: bool
    promised: Ballot | None
    """The ballot promised (when refused: the larger one that won)."""
    accepted: Proposal | None
    committed: Ballot | None
    current: Record | None
    """The replica's copy of the key, tombstones included: the round's read."""


def prepare(
    state: AcceptorState, ballot: Ballot, current: Record | None
) -> tuple[AcceptorState, Promise]:
    """Promise ``ballot`` unless a larger one was promised (the same one again: a duplicate)."""
    if state.promised is not None and ballot < state.promised:
        return state, Promise(False, state.promised, state.accepted, state.committed, current)
    promised = replace(state, promised=ballot)
    return promised, Promise(True, ballot, state.accepted, state.committed, current)


def propose(state: AcceptorState, proposal: Proposal) -> tuple[AcceptorState, bool]:
    """Accept ``proposal`` unless a larger ballot was promised since its prepare."""
    if state.promised is not None and proposal.ballot < state.promised:
        return state, False
    return replace(state, promised=proposal.ballot, accepted=proposal), True


def commit(state: AcceptorState, proposal: Proposal) -> AcceptorState:
    """Record that ``proposal`` is chosen; the caller applies its record to the data.

    An accepted proposal no newer than the newest commit is done: either it
    is that commit, or it never reached a quorum (a quorum that accepted it
    would have shown it to the committed round's prepare, which finishes it).
    The promise rises to the commit too, so a proposal of an older round
    that arrives late is refused.
    """
    committed = (
        proposal.ballot if state.committed is None else max(state.committed, proposal.ballot)
    )
    accepted = state.accepted
    if accepted is not None and accepted.ballot <= committed:
        accepted = None
    promised = committed if state.promised is None else max(state.promised, committed)
    return AcceptorState(promised, accepted, committed)


@dataclass(frozen=True, slots=True)
class Outbid:
    """A replica promised a larger ballot: prepare again above it (after a backoff)."""

    ballot: Ballot


@dataclass(frozen=True, slots=True)
class Unfinished:
    """A proposal accepted somewhere and never committed: finish it first."""

    proposal: Proposal


@dataclass(frozen=True, slots=True)
class Prepared:
    """The ballot holds a quorum; ``current`` is the key's newest committed copy."""

    current: Record | None


def after_prepare(promises: Sequence[Promise]) -> Outbid | Unfinished | Prepared:
    """What the proposer does once a quorum answered its prepare."""
    refusals = [p.promised for p in promises if not p.granted and p.promised is not None]
    if refusals:
        return Outbid(max(refusals))
    commits = [p.committed for p in promises if p.committed is not None]
    latest_commit = max(commits) if commits else None
    current = newest(p.current for p in promises)
    in_progress = [p.accepted for p in promises if p.accepted is not None]
    if in_progress:
        latest = max(in_progress, key=lambda proposal: proposal.ballot)
        # A proposal older than the newest copy is done with: had it been
        # chosen, the round that wrote that copy would have finished it first.
        # The copy also speaks where commit ballots cannot: a replica that
        # gained the range in a membership change pulled the data, not the
        # acceptor state, so only versions say that a later round committed.
        newer = current is None or latest.record.version > current.version
        if newer and (latest_commit is None or latest.ballot > latest_commit):
            return Unfinished(latest)
    return Prepared(current)


# The acceptor rules in the shape a storage engine runs them in one
# transaction (``Engine.paxos``): (state, the key's record) -> (new state,
# answer, record to apply).


def prepare_step(
    ballot: Ballot,
) -> Callable[[AcceptorState, Record | None], tuple[AcceptorState, Promise, None]]:
    def step(state: AcceptorState, current: Record | None) -> tuple[AcceptorState, Promise, None]:
        return (*prepare(state, ballot, current), None)

    return step


def propose_step(
    proposal: Proposal,
) -> Callable[[AcceptorState, Record | None], tuple[AcceptorState, bool, None]]:
    def step(state: AcceptorState, _: Record | None) -> tuple[AcceptorState, bool, None]:
        return (*propose(state, proposal), None)

    return step


def commit_step(
    proposal: Proposal,
) -> Callable[[AcceptorState, Record | None], tuple[AcceptorState, None, Record]]:
    def step(state: AcceptorState, _: Record | None) -> tuple[AcceptorState, None, Record]:
        return commit(state, proposal), None, proposal.record

    return step
