"""Conditional increments by Paxos (``ringkv.core.paxos``) over a network that
drops, duplicates, delays and reorders, with proposers that time out and retry.

Three acceptors run the real acceptor steps (``prepare_step``, ``propose_step``,
``commit_step``) on their state and record; proposers follow the
coordinator's sequence (``server/data/compare_and_set.py``: prepare with the
read, ``after_prepare``, finish or check and propose, commit) as explicit
state machines driven by a seeded scheduler. The invariant is the one a lost
update breaks: the committed records form one chain of values 1, 2, 3, ...,
and every acknowledged increment is a link of it.

A failure prints its seed; ``RINGKV_SIM_SEED=<n> pytest tests/sim -k paxos``
replays one.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from ringkv.core.errors import PreconditionFailed
from ringkv.core.hlc import Version
from ringkv.core.paxos import (
    AcceptorState,
    Ballot,
    Outbid,
    Promise,
    Proposal,
    Unfinished,
    after_prepare,
    commit_step,
    prepare_step,
    propose_step,
)
from ringkv.core.records import EXPECT_ABSENT, Record, check_precondition

AcceptorStep = Callable[[AcceptorState, Record | None], tuple[AcceptorState, Any, Record | None]]
KEY = b"counter"
ACCEPTORS = ("a", "b", "c")
QUORUM = 2
TIMEOUT_STEPS = 40


@dataclass
class Acceptor:
    state: AcceptorState = field(default_factory=AcceptorState)
    record: Record | None = None
    committed: list[Record] = field(default_factory=list)
    held: set[Version] = field(default_factory=set)
    """Every version that was this acceptor's copy at some moment: what a read
    of it could have returned."""

    def run(self, step: AcceptorStep) -> Any:
        self.state, answer, chosen = step(self.state, self.record)
        if chosen is not None:
            self.committed.append(chosen)
            self.hold(chosen)
        return answer

    def hold(self, record: Record) -> None:
        if self.record is None or record.version > self.record.version:
            self.record = record
            self.held.add(record.version)


@dataclass
class Proposer:
    name: str
    clock: int
    expected: int = EXPECT_ABSENT
    base: int = 0
    phase: str = "idle"
    ballot: Ballot | None = None
    proposal: Proposal | None = None
    finishing: bool = False
    replies: dict[str, Any] = field(default_factory=dict)
    waited: int = 0
    mine: set[Version] = field(default_factory=set)
    repairing: Record | None = None
    behind: frozenset[str] = frozenset()
    acknowledged: list[Record] = field(default_factory=list)
    refused: list[frozenset[Version]] = field(default_factory=list)
    """The proposals of each increment answered VERSION_MISMATCH: none may
    ever be committed."""

    ops_left: int = 3


class Simulation:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.acceptors = {name: Acceptor() for name in ACCEPTORS}
        self.proposers = [Proposer(f"p{i}", clock=i) for i in range(3)]
        self.network: list[tuple[str, str, str, Any]] = []  # (to, from, kind, body)

    def send(self, to: str, sender: str, kind: str, body: Any) -> None:
        if self.rng.random() < 0.1:
            return  # lost
        self.network.append((to, sender, kind, body))
        if self.rng.random() < 0.05:
            self.network.append((to, sender, kind, body))  # duplicated

    def broadcast(self, proposer: Proposer, kind: str, body: Any) -> None:
        proposer.replies = {}
        proposer.waited = 0
        for acceptor in ACCEPTORS:
            self.send(acceptor, proposer.name, kind, body)

    def start_op(self, proposer: Proposer) -> None:
        # The client's read: one acceptor's copy, possibly stale.
        record = self.acceptors[self.rng.choice(ACCEPTORS)].record
        proposer.expected = EXPECT_ABSENT if record is None else record.version.timestamp
        proposer.base = 0 if record is None else int(record.value)
        proposer.mine = set()
        self.prepare(proposer)

    def prepare(self, proposer: Proposer) -> None:
        proposer.clock += 1
        proposer.ballot = Ballot(proposer.clock, proposer.name)
        proposer.phase = "prepare"
        self.broadcast(proposer, "prepare", proposer.ballot)

    def deliver(self, to: str, sender: str, kind: str, body: Any) -> None:
        if to in self.acceptors:
            acceptor = self.acceptors[to]
            steps: dict[str, Callable[[Any], AcceptorStep]] = {
                "prepare": prepare_step,
                "propose": propose_step,
                "commit": commit_step,
            }
            if kind == "repair":
                # A plain replica write, by version (not an acceptor step).
                acceptor.hold(body)
                self.send(sender, to, kind, (body, True))
                return
            answer = acceptor.run(steps[kind](body))
            self.send(sender, to, kind, (body, answer))
            return
        proposer = next(p for p in self.proposers if p.name == to)
        sent, answer = body
        expected_body = {
            "prepare": proposer.ballot,
            "repair": proposer.repairing,
        }.get(kind, proposer.proposal)
        if kind != proposer.phase or sent != expected_body:
            return  # a reply to an earlier round
        proposer.replies[sender] = answer
        if kind == "repair":
            if proposer.behind <= proposer.replies.keys():
                assert proposer.repairing is not None
                self.build_on(proposer, proposer.repairing)
        elif len(proposer.replies) >= QUORUM:
            self.advance(proposer)

    def advance(self, proposer: Proposer) -> None:
        assert proposer.ballot is not None
        if proposer.phase == "prepare":
            promises: list[Promise] = list(proposer.replies.values())
            decision = after_prepare(promises)
            if isinstance(decision, Outbid):
                proposer.clock = max(proposer.clock, decision.ballot.timestamp)
                self.prepare(proposer)
            elif isinstance(decision, Unfinished):
                proposer.finishing = True
                self.propose(proposer, Proposal(proposer.ballot, decision.proposal.record))
            else:
                current = decision.current
                # The newest copy may be a round's commit that reached only
                # some replicas: the coordinator writes it to the rest of its
                # quorum before it builds on it or acknowledges it.
                behind = frozenset(
                    name
                    for name, promise in proposer.replies.items()
                    if current is not None
                    and (promise.current is None or promise.current.version < current.version)
                )
                if behind:
                    assert current is not None
                    proposer.phase = "repair"
                    proposer.repairing = current
                    proposer.behind = behind
                    proposer.replies = {}
                    proposer.waited = 0
                    for name in behind:
                        self.send(name, proposer.name, "repair", current)
                    return
                self.build_on(proposer, current)
        elif proposer.phase == "propose":
            assert proposer.proposal is not None
            if not all(proposer.replies.values()):
                self.prepare(proposer)
                return
            proposer.phase = "commit"
            self.broadcast(proposer, "commit", proposer.proposal)
        elif proposer.phase == "commit":
            assert proposer.proposal is not None
            record = proposer.proposal.record
            if proposer.finishing and record.version not in proposer.mine:
                self.prepare(proposer)  # finished another's round: now its own
            else:
                self.finish_op(proposer, record)

    def build_on(self, proposer: Proposer, current: Record | None) -> None:
        """The ballot holds a quorum that all have ``current``: acknowledge it if
        it is this proposer's own write, or check and propose past it."""
        assert proposer.ballot is not None
        if current is not None and current.version in proposer.mine:
            self.finish_op(proposer, current)
            return
        try:
            check_precondition(proposer.expected, current, 0)
        except PreconditionFailed:
            if not proposer.mine:
                # VERSION_MISMATCH. With a proposal of an earlier round out,
                # the write's fate is unknown instead (WRITE_UNCERTAIN): it
                # may have been chosen, or be finished by a later round.
                proposer.refused.append(frozenset(proposer.mine))
            self.finish_op(proposer, None)
            return
        proposer.clock = max(proposer.clock, current.version.timestamp if current else 0)
        proposer.clock += 1
        version = Version(proposer.clock, proposer.name)
        proposer.mine.add(version)
        record = Record(KEY, str(proposer.base + 1).encode(), version)
        proposer.finishing = False
        self.propose(proposer, Proposal(proposer.ballot, record))

    def propose(self, proposer: Proposer, proposal: Proposal) -> None:
        proposer.phase = "propose"
        proposer.proposal = proposal
        self.broadcast(proposer, "propose", proposal)

    def finish_op(self, proposer: Proposer, acknowledged: Record | None) -> None:
        if acknowledged is not None:
            # Acknowledged: a LINEARIZABLE read of any quorum must now see it.
            holding = sum(
                1
                for acceptor in self.acceptors.values()
                if acceptor.record is not None and acceptor.record.version >= acknowledged.version
            )
            assert holding >= QUORUM, f"{acknowledged} acknowledged on {holding} acceptors"
            proposer.acknowledged.append(acknowledged)
        proposer.phase = "idle"
        proposer.ops_left -= 1

    def step(self) -> bool:
        """One scheduler step; False when every proposer is done."""
        idle = [p for p in self.proposers if p.phase == "idle" and p.ops_left > 0]
        busy = [p for p in self.proposers if p.phase != "idle"]
        if not idle and not busy and not self.network:
            return False
        choice = self.rng.random()
        if idle and choice < 0.2:
            self.start_op(self.rng.choice(idle))
        elif self.network and choice < 0.9:
            message = self.network.pop(self.rng.randrange(len(self.network)))
            self.deliver(*message)
        else:
            for proposer in busy:
                proposer.waited += 1
                if proposer.waited > TIMEOUT_STEPS:
                    self.prepare(proposer)  # timed out: a new round, same operation
        return True


def check(simulation: Simulation) -> None:
    committed = {r.version: r for a in simulation.acceptors.values() for r in a.committed}
    chain = sorted(committed.values(), key=lambda r: r.version)
    values = [int(r.value) for r in chain]
    assert values == list(range(1, len(values) + 1)), f"committed values {values}"
    for proposer in simulation.proposers:
        for record in proposer.acknowledged:
            assert committed.get(record.version) == record, (proposer.name, record)
        seen = {version for acceptor in simulation.acceptors.values() for version in acceptor.held}
        for proposals in proposer.refused:
            assert not proposals & seen, (proposer.name, "a VERSION_MISMATCH write was readable")


def run(seed: int) -> Simulation:
    simulation = Simulation(seed)
    for _ in range(20_000):
        if not simulation.step():
            break
    check(simulation)
    return simulation


def _seeds() -> list[int]:
    replay = os.environ.get("RINGKV_SIM_SEED")
    if replay is not None:
        return [int(replay)]
    return list(range(int(os.environ.get("RINGKV_PAXOS_SIM_SEEDS", "300"))))


@pytest.mark.parametrize("seed", _seeds())
def test_conditional_increments_never_lose_an_update(seed: int) -> None:
    run(seed)


def test_the_simulation_makes_progress() -> None:
    """Not vacuous: across seeds, increments are acknowledged and some contend."""
    acknowledged = sum(len(p.acknowledged) for seed in range(30) for p in run(seed).proposers)
    assert acknowledged > 30
