"""Coordinating one read or write over a key's replicas, without I/O.

In the style of etcd raft's ``RawNode``/``Ready``: a request is a state
machine told what happened (a replica answered a call, a call failed, the
deadline passed) that says in a :class:`Ready` what to do next: calls to
start, hints to hold, repairs to send, and whether the request is finished.
It never waits, sends, or reads a clock of its own. The server drives it with
real calls (``ringkv.server.data.coordinator``) and the replication
simulation (``tests/sim/test_replication_sim.py``) over a fake network that
loses, delays and reorders, so both run the same rules.

Reads go to just enough of the key's live replicas (stand-ins too, at sloppy
levels); each failure brings in the next one. The newest version wins and
stale replicas are repaired, by a write-back that must reach the level
before the read answers at LINEARIZABLE (ABD), in the background otherwise.
Writes go to every live target and finish once the level is met; a replica
that holds a newer version answers with its timestamp and the write is
stamped past it and sent again, so a write that met a quorum holding a newer
acknowledged write ends with the larger version whatever the clocks say.
Replicas the write missed get hints. One write request carries every record
of a batch that shares a plan (a MultiSet's keys with the same replicas):
one call per replica for all of them, one quorum count, and each record
finishes on its own (stamped again alone if a replica held a newer version).
A replica that refuses the request's member table has the newer table sent
along: the request is planned again.
"""

from __future__ import annotations

import abc
import itertools
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Generic, TypeVar

from ringkv.core import quorum
from ringkv.core.consistency import Consistency
from ringkv.core.errors import (
    DeadlineExceeded,
    InternalError,
    ResourceExhausted,
    RingkvError,
    StaleMemberTable,
    Unavailable,
)
from ringkv.core.hlc import HybridLogicalClock, physical_ms
from ringkv.core.quorum import ReplicaSets, Target
from ringkv.core.records import NO_EXPIRY, Record, ReplicaAck

A = TypeVar("A")
R = TypeVar("R")

MAX_STAMPS = 10
"""Rounds a write is sent, stamped again past newer versions, before it gives
up. Each round's version is above every version the node has seen, so only
writes stamped after it (concurrent ones, on a key many write at once) beat
it again; three rounds proved too few for four writers on a loaded box."""
MAX_REPLANS = 3
"""Times a request is planned again after a replica refused its member table."""


@dataclass(frozen=True, slots=True)
class Plan:
    """Who a request for one key goes to, decided before anything is sent."""

    sets: ReplicaSets
    """The key's replicas now and, during a membership change, after it."""
    targets: tuple[Target, ...]
    """The live nodes to call, in the order to call them."""
    stand_ins: tuple[str, ...]
    """Live nodes past the preference list that may replace a replica whose
    call failed (at sloppy levels; empty otherwise)."""
    fence: tuple[int, int] = (0, 0)
    """The (epoch, term) of the member table planned on. Every call of the
    plan carries it, including one started long after: a replica on a newer
    table refuses it, and the request is planned again."""


def plan(
    level: Consistency,
    sets: ReplicaSets,
    clockwise: tuple[str, ...],
    is_live: Callable[[str], bool],
    *,
    first: str | None = None,
    fence: tuple[int, int] = (0, 0),
) -> Plan:
    """The plan for a key: its live replicas (with stand-ins for the down ones
    at sloppy levels) and, during a membership change, its live replicas after
    the change; ``first`` (this node, whose answer is local) is called first.

    Raises Unavailable, before anything is sent, when too few are live.
    """
    replicas = len(sets.current)
    targets = quorum.targets(clockwise, replicas, is_live, level)
    targets += [Target(node) for node in sets.pending() if is_live(node)]
    quorum.check_reachable(level, sets, covered(targets))
    if first is not None:
        targets.sort(key=lambda target: target.node_id != first)
    sloppy = quorum.sloppy(level, replicas)
    stand_ins = tuple(node for node in clockwise[replicas:] if is_live(node)) if sloppy else ()
    return Plan(sets, tuple(targets), stand_ins, fence)


Planner = Callable[[], Plan]
"""Plans a request again on the newest member table (it raises Unavailable
when the level cannot be met)."""


class PlanDiverged(Unavailable):
    """A new member table gives the records of one write request different
    plans; its caller writes them again one by one."""

    default_reason = "PLAN_DIVERGED"


PlanShape = tuple[
    frozenset[str], frozenset[str] | None, frozenset[Target], tuple[str, ...], tuple[int, int]
]


def plan_shape(plan: Plan) -> PlanShape:
    """What the plans of records written by one request must share: the
    replica sets and the targets as sets (a write calls every target at once),
    the stand-ins and the member table."""
    upcoming = plan.sets.upcoming
    return (
        frozenset(plan.sets.current),
        None if upcoming is None else frozenset(upcoming),
        frozenset(plan.targets),
        plan.stand_ins,
        plan.fence,
    )


def group_by_plan(
    keys: Sequence[bytes], plan_for: Callable[[bytes], Plan]
) -> tuple[list[tuple[Plan, list[int]]], dict[int, RingkvError]]:
    """The keys' indices grouped by plan shape, each group with its first
    key's plan; and the keys that cannot be planned, with why."""
    groups: dict[PlanShape, tuple[Plan, list[int]]] = {}
    refused: dict[int, RingkvError] = {}
    for index, key in enumerate(keys):
        try:
            key_plan = plan_for(key)
        except RingkvError as error:
            refused[index] = error
            continue
        groups.setdefault(plan_shape(key_plan), (key_plan, []))[1].append(index)
    return list(groups.values()), refused


WritePlanner = Callable[[Sequence[bytes]], Plan]
"""Plans a write request for the keys of the records it is about to send, on
the newest member table (Unavailable when the level cannot be met,
PlanDiverged when the keys no longer share a plan)."""


def key_planner(planner: Planner) -> WritePlanner:
    """The planner of a write request for one key."""
    return lambda _: planner()


def shared_planner(plan_for: Callable[[bytes], Plan], first: Plan) -> WritePlanner:
    """The planner of a write request whose records were grouped by ``first``:
    that plan, then one plan for the keys still to send, or PlanDiverged if
    the table now gives them different ones."""
    planned = [first]

    def plan_again(keys: Sequence[bytes]) -> Plan:
        if planned:
            return planned.pop()
        plans = [plan_for(key) for key in keys]
        if len({plan_shape(p) for p in plans}) > 1:
            raise PlanDiverged("the member table changed and gave the batch's keys other replicas")
        return plans[0]

    return plan_again


def covered(targets: Collection[Target]) -> set[str]:
    """The replicas these targets answer for (a stand-in for the one it replaces)."""
    return {target.stands_in_for or target.node_id for target in targets}


@dataclass(frozen=True, slots=True)
class Call:
    """A call to start: read ``key`` from ``target`` (no ``records``), or write ``records``.

    A write is answered with a ReplicaAck per record, in order; a replica
    that could not store one of them fails the whole call.
    """

    id: int
    """Names the call in ``answered`` and ``failed``."""
    target: Target
    key: bytes
    """The key read (empty for a write)."""
    records: tuple[Record, ...]
    fence: tuple[int, int]
    """The plan's member table: the replica refuses the call if its own is newer."""


@dataclass(frozen=True, slots=True)
class Hint:
    """Hold ``record`` on this node for a replica that missed it, to deliver later."""

    node_id: str
    record: Record


@dataclass(frozen=True, slots=True)
class Repair:
    """Write ``record`` to a replica that answered with an older version; no answer needed."""

    node_id: str
    record: Record


@dataclass(slots=True)
class Ready:
    """What the shell does after an event."""

    calls: list[Call] = field(default_factory=list)
    hints: list[Hint] = field(default_factory=list)
    repairs: list[Repair] = field(default_factory=list)

    def extend(self, other: Ready) -> Ready:
        self.calls += other.calls
        self.hints += other.hints
        self.repairs += other.repairs
        return self


class QuorumFailed(Unavailable):
    """Too few replicas answered a request in time."""

    def __init__(self, what: str, needed: int, answered: int, errors: list[BaseException]) -> None:
        reasons = "; ".join(str(e) for e in errors if isinstance(e, RingkvError))
        super().__init__(
            f"{what}: {answered} of {needed} required replicas answered"
            + (f" ({reasons})" if reasons else ""),
            reason="NOT_ENOUGH_REPLICAS",
            metadata={"needed": str(needed), "answered": str(answered)},
        )
        self.answered = answered
        self.errors = errors


class Fanout(Generic[A]):
    """Which targets of a plan are called, and when their answers meet the level.

    Calls the first ``launch`` targets and one more for each failure. When
    the targets run out, a failed replica is replaced by the next stand-in.
    """

    def __init__(self, plan: Plan, level: Consistency, launch: int) -> None:
        self.plan = plan
        self.level = level
        self._waiting = iter(plan.targets)
        self._stand_ins = iter(plan.stand_ins)
        self._used = {target.node_id for target in plan.targets}
        self._launch = launch
        self.in_flight: set[Target] = set()
        self.answers: dict[Target, A] = {}
        self.errors: list[BaseException] = []

    def start(self) -> list[Target]:
        """The targets to call first."""
        started = [self._next(None) for _ in range(self._launch)]
        return [target for target in started if target is not None]

    def answered(self, target: Target, answer: A) -> list[Target]:
        """Record an answer; returns the targets to call next."""
        self.in_flight.discard(target)
        self.answers[target] = answer
        return self._refill()

    def failed(self, target: Target, error: BaseException) -> list[Target]:
        """Record a failed call; returns the targets to call in its place."""
        self.in_flight.discard(target)
        self.errors.append(error)
        if self.met:
            return []
        replacement = self._next(target)
        return [replacement] if replacement is not None else self._refill()

    @property
    def met(self) -> bool:
        """Whether the answers meet the level in every replica set."""
        return quorum.met(self.level, self.plan.sets, covered(self.answers))

    @property
    def exhausted(self) -> bool:
        """Whether the level is not met and no call that could meet it is left."""
        return not self.met and not self.in_flight

    def failure(self, what: str) -> QuorumFailed:
        needed = quorum.required_replies(self.level, len(self.plan.sets.current))
        return QuorumFailed(what, needed, len(self.answers), self.errors)

    def _refill(self) -> list[Target]:
        if self.in_flight or self.met:
            return []
        target = self._next(None)
        return [target] if target is not None else []

    def _next(self, failed: Target | None) -> Target | None:
        target = next(self._waiting, None)
        if target is None and failed is not None:
            node = next((n for n in self._stand_ins if n not in self._used), None)
            if node is not None:
                target = Target(node, stands_in_for=failed.stands_in_for or failed.node_id)
        if target is not None:
            self._used.add(target.node_id)
            self.in_flight.add(target)
        return target


class Request(abc.ABC, Generic[R]):
    """A request driven by events until it is finished; see the module docstring.

    ``ids`` numbers its calls: a request nested in another shares its parent's.
    """

    def __init__(self, ids: Iterator[int] | None) -> None:
        self._ids = ids if ids is not None else itertools.count()
        self._outcome: tuple[R] | None = None
        self._error: RingkvError | None = None
        self.finished = False
        self._sent: dict[int, tuple[int, Target]] = {}
        """The round and target of each call not yet answered."""

    @abc.abstractmethod
    def start(self) -> Ready:
        """The first calls; raises Unavailable (nothing sent) when too few are live."""

    @abc.abstractmethod
    def answered(self, call_id: int, answer: object) -> Ready:
        """A call succeeded: a replica's record (reads) or ReplicaAck (writes)."""

    @abc.abstractmethod
    def failed(self, call_id: int, error: BaseException) -> Ready:
        """A call failed (a StaleMemberTable refusal plans the request again)."""

    @abc.abstractmethod
    def expired(self) -> Ready:
        """The deadline passed: finish now with what has been gathered."""

    def result(self) -> R:
        """The outcome of a finished request; raises its error."""
        if self._error is not None:
            raise self._error
        if self._outcome is None:
            raise InternalError("the request has not finished")
        return self._outcome[0]

    def _succeed(self, outcome: R) -> None:
        if not self.finished:
            self.finished, self._outcome = True, (outcome,)

    def _fail(self, error: RingkvError) -> None:
        if not self.finished:
            self.finished, self._error = True, error

    def _calls(
        self,
        plan: Plan,
        round_: int,
        key: bytes,
        records: tuple[Record, ...],
        targets: list[Target],
    ) -> list[Call]:
        """Calls to ``targets`` in round ``round_``, remembered until answered."""
        calls = [Call(next(self._ids), target, key, records, plan.fence) for target in targets]
        for call in calls:
            self._sent[call.id] = (round_, call.target)
        return calls


@dataclass(frozen=True, slots=True)
class Written:
    """A write that reached its consistency level."""

    record: Record
    replaced_live: bool
    """Whether a replica that acknowledged held a live value before."""


@dataclass(frozen=True, slots=True)
class Restamper:
    """Stamps a write again past a newer version a replica holds."""

    clock: HybridLogicalClock
    now_ms: Callable[[], int]
    may_stamp: Callable[[], bool]
    """Whether this node's clock may stamp versions now (its offset is known)."""

    def past(self, record: Record, newer: int) -> Record | None:
        """``record`` with a version above ``newer``, or None if this node may not stamp."""
        self.clock.observe(newer)
        if not self.may_stamp():
            return None
        return replace(record, version=self.clock.tick(self.now_ms()))


def stamp(
    clock: HybridLogicalClock,
    now_ms: int,
    key: bytes,
    value: bytes,
    *,
    tombstone: bool,
    ttl_ms: int,
    local: Record | None,
) -> Record:
    """A new version of a key, above this node's copy of it (``local``).

    Past the local copy first: the clock restarts at 0 with the process.
    Expiry counts from the version's time, not this node's wall clock: the
    clock has caught up with the peers it heard from (up to the maximum
    offset), so a lagging wall clock writes no value born expired.
    """
    if local is not None:
        clock.observe(local.version.timestamp)
    version = clock.tick(now_ms)
    expires_at_ms = physical_ms(version.timestamp) + ttl_ms if ttl_ms else NO_EXPIRY
    return Record(key, value, version, tombstone=tombstone, expires_at_ms=expires_at_ms)


WriteOutcome = Written | RingkvError
"""A record's outcome in a write request: written, or why not."""


class WriteRequest(Request[list[WriteOutcome]]):
    """Records written at a level, all on one plan, each stamped again past
    newer versions on its own; the outcome is one per record, in order.

    Every live target is called with every record still unfinished. Once the
    level is met, records no replica held a newer version of are written;
    the others are stamped past it and sent again, alone. Replicas neither
    answered nor still being called get hints, and so does any call of that
    round that fails later. With no ``restamper`` (a read's write-back) newer
    versions are not written past: the records are sent as they are.

    The planner plans for all the records at once: it raises
    ``PlanDiverged`` when a new member table no longer gives them one plan,
    and the records still unfinished fail with it (the caller writes them
    again one by one).
    """

    def __init__(
        self,
        records: Sequence[Record],
        level: Consistency,
        planner: WritePlanner,
        *,
        node_id: str,
        restamper: Restamper | None,
        ids: Iterator[int] | None = None,
    ) -> None:
        super().__init__(ids)
        self.records = list(records)
        """Each record as last sent."""
        self._level = level
        self._planner = planner
        self._node_id = node_id
        self._restamper = restamper
        self._outcomes: list[WriteOutcome | None] = [None] * len(records)
        self._rounds: list[dict[int, Record]] = []
        """The records each round sent, by their index, by round."""
        self._met: set[int] = set()
        self._fanout: Fanout[Sequence[ReplicaAck]] | None = None
        self._replans = 0

    def start(self) -> Ready:
        return self._round(self._planner([r.key for r in self.records]))

    def result(self) -> list[WriteOutcome]:
        if not self.finished:
            raise InternalError("the request has not finished")
        return [outcome for outcome in self._outcomes if outcome is not None]

    def answered(self, call_id: int, answer: object) -> Ready:
        assert isinstance(answer, Sequence)
        round_, target = self._sent[call_id]
        if len(answer) != len(self._rounds[round_]):
            return self.failed(call_id, InternalError(f"{target.node_id} answered oddly"))
        del self._sent[call_id]
        if round_ != self._current or self.finished or self._fanout is None:
            return Ready()
        calls = self._calls_to(self._fanout.answered(target, answer))
        return self._round_met() if self._fanout.met else Ready(calls)

    def failed(self, call_id: int, error: BaseException) -> Ready:
        round_, target = self._sent.pop(call_id)
        if round_ in self._met:
            # Still running when its round met the level, and failed since.
            return Ready(hints=self._hints(round_, [target.stands_in_for or target.node_id]))
        if round_ != self._current or self.finished or self._fanout is None:
            return Ready()
        if isinstance(error, StaleMemberTable):
            return self._replan(error)
        calls = self._calls_to(self._fanout.failed(target, error))
        if self._fanout.exhausted:
            self._fail_round(self._fanout.failure("write"))
        return Ready(calls)

    def expired(self) -> Ready:
        if not self.finished and self._fanout is not None:
            self._fail_round(self._fanout.failure("write"))
        return Ready()

    @property
    def _current(self) -> int:
        return len(self._rounds) - 1

    def _unfinished(self) -> dict[int, Record]:
        return {i: r for i, r in enumerate(self.records) if self._outcomes[i] is None}

    def _round(self, plan: Plan) -> Ready:
        self._rounds.append(self._unfinished())
        self._fanout = Fanout(plan, self._level, launch=len(plan.targets))
        return Ready(self._calls_to(self._fanout.start()))

    def _calls_to(self, targets: list[Target]) -> list[Call]:
        assert self._fanout is not None
        records = tuple(self._rounds[self._current].values())
        return self._calls(self._fanout.plan, self._current, b"", records, targets)

    def _round_met(self) -> Ready:
        fanout = self._fanout
        assert fanout is not None
        self._met.add(self._current)
        reached = covered((*fanout.answers, *fanout.in_flight))
        ready = Ready(
            hints=self._hints(
                self._current, [n for n in fanout.plan.sets.all() if n not in reached]
            )
        )
        answers = list(fanout.answers.values())
        beaten: dict[int, int] = {}
        for position, (index, record) in enumerate(self._rounds[self._current].items()):
            acks = [answer[position] for answer in answers]
            newer = max(ack.newer for ack in acks)
            if newer and self._restamper is not None:
                beaten[index] = newer
            else:
                self._outcomes[index] = Written(record, any(a.replaced_live for a in acks))
        for index, newer in beaten.items():
            self._restamp(index, newer)
        return ready.extend(self._planned_round()) if not self._done() else ready

    def _restamp(self, index: int, newer: int) -> None:
        assert self._restamper is not None
        if len(self._rounds) >= MAX_STAMPS:
            self._outcomes[index] = _uncertain(
                f"the write met a newer version in each of {MAX_STAMPS} rounds "
                "(the key is being written by many at once)"
            )
            return
        restamped = self._restamper.past(self.records[index], newer)
        if restamped is None:
            self._outcomes[index] = DeadlineExceeded(
                "the write met a newer version and this node may no longer stamp a "
                "later one; it may or may not become visible",
                reason="WRITE_UNCERTAIN",
            )
            return
        self.records[index] = restamped

    def _done(self) -> bool:
        self.finished = all(outcome is not None for outcome in self._outcomes)
        return self.finished

    def _replan(self, error: StaleMemberTable) -> Ready:
        self._replans += 1
        if self._replans > MAX_REPLANS:
            self._fail_unfinished(_uncertain(error.message))
            return Ready()
        # Calls still running on the older plan may store the records too;
        # their answers no longer count toward the level.
        return self._planned_round()

    def _planned_round(self) -> Ready:
        try:
            plan = self._planner([r.key for r in self._unfinished().values()])
        except PlanDiverged as diverged:
            self._fail_unfinished(diverged)
            return Ready()
        except Unavailable as error:
            self._fail_unfinished(_uncertain(error.message))
            return Ready()
        return self._round(plan)

    def _fail_round(self, failure: QuorumFailed) -> None:
        if (
            not failure.answered
            and failure.errors
            and all(isinstance(error, ResourceExhausted) for error in failure.errors)
        ):
            # Every replica refused it (full disks): it is stored nowhere.
            error = failure.errors[0]
            assert isinstance(error, ResourceExhausted)
            self._fail_unfinished(error)
            return
        self._fail_unfinished(_uncertain(failure.message, failure.metadata))

    def _fail_unfinished(self, error: RingkvError) -> None:
        for index in self._unfinished():
            self._outcomes[index] = error
        self._done()

    def _hints(self, round_: int, nodes: list[str]) -> list[Hint]:
        records = self._rounds[round_].values()
        return [Hint(node, r) for node in nodes if node != self._node_id for r in records]


def _uncertain(message: str, metadata: dict[str, str] | None = None) -> DeadlineExceeded:
    return DeadlineExceeded(
        f"{message}; the write may or may not become visible",
        reason="WRITE_UNCERTAIN",
        metadata=metadata,
    )


class ReadRequest(Request[Record | None]):
    """The newest version (tombstones included) a quorum at ``level`` holds.

    Asks just enough replicas; during a membership change, every replica of
    both rings (the level must be met in each). Answers that arrive after
    the level was met are checked too: a stale one is repaired.
    """

    def __init__(
        self,
        key: bytes,
        level: Consistency,
        planner: Planner,
        *,
        node_id: str,
        ids: Iterator[int] | None = None,
    ) -> None:
        super().__init__(ids)
        self.key = key
        self._level = level
        self._planner = planner
        self._node_id = node_id
        self._round = 0
        self._fanout: Fanout[Record | None] | None = None
        self._winner: Record | None = None
        self._write_back: WriteRequest | None = None
        self._replans = 0

    def start(self) -> Ready:
        return self._begin(self._planner())

    def answered(self, call_id: int, answer: object) -> Ready:
        if self._write_back is not None and call_id not in self._sent:
            return self._written_back(self._write_back.answered(call_id, answer))
        round_, target = self._sent.pop(call_id)
        assert answer is None or isinstance(answer, Record)
        if round_ != self._round or self._fanout is None:
            return Ready()
        if self._fanout.met:
            return self._repair_late(target, answer)
        calls = self._calls_to(self._fanout.answered(target, answer))
        return self._resolve() if self._fanout.met else Ready(calls)

    def failed(self, call_id: int, error: BaseException) -> Ready:
        if self._write_back is not None and call_id not in self._sent:
            return self._written_back(self._write_back.failed(call_id, error))
        round_, target = self._sent.pop(call_id)
        if round_ != self._round or self._fanout is None or self._fanout.met:
            return Ready()
        if isinstance(error, StaleMemberTable):
            self._replans += 1
            if self._replans > MAX_REPLANS:
                self._fail(error)
                return Ready()
            try:
                return self._begin(self._planner())
            except Unavailable as unavailable:
                self._fail(unavailable)
                return Ready()
        calls = self._calls_to(self._fanout.failed(target, error))
        if self._fanout.exhausted:
            self._fail(self._fanout.failure("read"))
        return Ready(calls)

    def expired(self) -> Ready:
        if self._write_back is not None:
            return self._written_back(self._write_back.expired())
        if not self.finished and self._fanout is not None:
            self._fail(self._fanout.failure("read"))
        return Ready()

    def _begin(self, plan: Plan) -> Ready:
        self._round += 1
        launch = (
            quorum.required_replies(self._level, len(plan.sets.current))
            if plan.sets.upcoming is None
            else len(plan.targets)
        )
        self._fanout = Fanout(plan, self._level, launch)
        return Ready(self._calls_to(self._fanout.start()))

    def _calls_to(self, targets: list[Target]) -> list[Call]:
        assert self._fanout is not None
        return self._calls(self._fanout.plan, self._round, self.key, (), targets)

    def _resolve(self) -> Ready:
        assert self._fanout is not None
        answers = self._fanout.answers
        winner = quorum.newest(answers.values())
        self._winner = winner
        replicas = {t.node_id: r for t, r in answers.items() if t.stands_in_for is None}
        stale = quorum.stale_replicas(replicas, winner)
        if winner is None or not stale:
            self._succeed(winner)
            return Ready()
        if self._level is Consistency.LINEARIZABLE:
            # ABD: make the winner durable at a quorum before anyone sees it.
            self._write_back = WriteRequest(
                (winner,),
                self._level,
                key_planner(self._planner),
                node_id=self._node_id,
                restamper=None,
                ids=self._ids,
            )
            try:
                return self._written_back(self._write_back.start())
            except Unavailable as error:
                self._fail(_uncertain(error.message))
                return Ready()
        self._succeed(winner)
        return Ready(repairs=[Repair(node, winner) for node in stale])

    def _written_back(self, ready: Ready) -> Ready:
        write_back = self._write_back
        assert write_back is not None
        if write_back.finished and not self.finished:
            (outcome,) = write_back.result()
            if isinstance(outcome, RingkvError):
                self._fail(outcome)
            else:
                self._succeed(self._winner)
        return ready

    def _repair_late(self, target: Target, answer: Record | None) -> Ready:
        winner = self._winner
        if target.stands_in_for is not None or winner is None:
            return Ready()
        if answer is None or answer.version < winner.version:
            return Ready(repairs=[Repair(target.node_id, winner)])
        return Ready()
