"""Quorum arithmetic: who a request goes to and when it has enough answers.

Pure functions over a key's clockwise node order and a liveness predicate,
so the rules (when stand-ins count, what counts toward which level, who needs
read repair) are tested without a network.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

from ringkv.core.consistency import Consistency
from ringkv.core.errors import Unavailable
from ringkv.core.records import Record

STRICT_QUORUM_FROM = 3
"""The replica count from which QUORUM counts only the key's own replicas."""


def sloppy(level: Consistency, replicas: int) -> bool:
    """Whether stand-ins holding hints for down replicas count toward ``level``.

    ONE: always (Dynamo's sloppy quorum; ONE promises no order). QUORUM: only
    below three replicas, where a strict quorum is every replica and one node
    down would refuse every write (the seed's default of RF 2). From three
    replicas up QUORUM is strict, as in Cassandra: a write acknowledged by
    one side of a partition with stand-ins and a read served by the other
    side's replicas would not meet, and a QUORUM read must see every QUORUM
    write that completed before it. ALL and LINEARIZABLE: never.
    """
    if level is Consistency.ONE:
        return True
    return level is Consistency.QUORUM and replicas < STRICT_QUORUM_FROM


def required_replies(level: Consistency, replicas: int) -> int:
    """How many replicas must answer a request at ``level``."""
    if level is Consistency.ONE:
        return 1
    if level is Consistency.ALL:
        return replicas
    if level in (Consistency.QUORUM, Consistency.LINEARIZABLE):
        return replicas // 2 + 1
    raise ValueError(f"no quorum for {level!r}: resolve DEFAULT to a level first")


@dataclass(frozen=True, slots=True)
class Target:
    """A node a request is sent to."""

    node_id: str
    stands_in_for: str | None = None
    """The down replica this node holds a hint for; None for a real replica."""


def targets(
    clockwise: Sequence[str],
    replicas: int,
    is_live: Callable[[str], bool],
    level: Consistency,
) -> list[Target]:
    """The live nodes a request for a key goes to.

    ``clockwise`` is every member in the key's clockwise order; the first
    ``replicas`` are its preference list. Where stand-ins count (``sloppy``)
    each down replica is replaced by the next live node past the preference list.
    """
    preference = clockwise[:replicas]
    chosen = [Target(node) for node in preference if is_live(node)]
    if sloppy(level, replicas):
        stand_ins = (node for node in clockwise[replicas:] if is_live(node))
        for node in preference:
            if not is_live(node):
                stand_in = next(stand_ins, None)
                if stand_in is None:
                    break
                chosen.append(Target(stand_in, stands_in_for=node))
    return chosen


@dataclass(frozen=True, slots=True)
class ReplicaSets:
    """A key's replicas now and, while a membership change is in flight, after it.

    During a change a request must reach the level in both sets (joint
    quorums, as Raft's joint consensus): then every request made during the
    change meets every request made before it (a quorum of ``current``) and
    every one made after it settles (a quorum of ``upcoming``), whichever
    of those rings its coordinator was on.
    """

    current: tuple[str, ...]
    upcoming: tuple[str, ...] | None = None
    """None when no change is in flight."""

    def all(self) -> tuple[str, ...]:
        """Every replica of either set, current ones first."""
        if self.upcoming is None:
            return self.current
        return self.current + tuple(n for n in self.upcoming if n not in self.current)

    def pending(self) -> tuple[str, ...]:
        """The replicas after the change that are not replicas now."""
        if self.upcoming is None:
            return ()
        return tuple(n for n in self.upcoming if n not in self.current)


def met(level: Consistency, sets: ReplicaSets, covered: Collection[str]) -> bool:
    """Whether answers covering these replicas meet ``level`` in every set.

    A stand-in's answer covers the replica it stands in for.
    """
    return all(
        sum(1 for node in replicas if node in covered) >= required_replies(level, len(replicas))
        for replicas in _sets(sets)
    )


def _sets(sets: ReplicaSets) -> tuple[tuple[str, ...], ...]:
    return (sets.current,) if sets.upcoming is None else (sets.current, sets.upcoming)


def check_reachable(level: Consistency, sets: ReplicaSets, reachable: Collection[str]) -> None:
    """Fail fast, before sending anything, when the level cannot be met.

    ``reachable``: the replicas a live target answers for.
    """
    for replicas in _sets(sets):
        needed = required_replies(level, len(replicas))
        count = sum(1 for node in replicas if node in reachable)
        if count < needed:
            raise Unavailable(
                f"{level.name} needs {needed} of {len(replicas)} replicas, only {count} reachable",
                reason="NOT_ENOUGH_REPLICAS",
                metadata={"needed": str(needed), "reachable": str(count)},
            )


def newest(records: Iterable[Record | None]) -> Record | None:
    """The record with the largest version (last writer wins)."""
    best: Record | None = None
    for record in records:
        if record is not None and (best is None or record.version > best.version):
            best = record
    return best


def stale_replicas(replies: Mapping[str, Record | None], winner: Record | None) -> list[str]:
    """The nodes whose reply is older than the winner: read repair sends it to them."""
    if winner is None:
        return []
    return [
        node
        for node, record in replies.items()
        if record is None or record.version < winner.version
    ]
