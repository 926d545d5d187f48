"""Quorum arithmetic: who a request goes to and when it has enough answers.

Pure functions over a key's clockwise node order and a liveness predicate,
so the rules (sloppy quorum, what counts toward which level, who needs read
repair) are tested without a network.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from ringkv.core.consistency import Consistency
from ringkv.core.errors import Unavailable
from ringkv.core.records import Record

# Levels whose quorum may include stand-ins holding hints for a down replica
# (Dynamo's sloppy quorum). ALL and LINEARIZABLE need the real replicas.
SLOPPY_LEVELS = frozenset({Consistency.ONE, Consistency.QUORUM})


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
    ``replicas`` are its preference list. For sloppy levels each down replica
    is replaced by the next live node past the preference list.
    """
    preference = clockwise[:replicas]
    chosen = [Target(node) for node in preference if is_live(node)]
    if level in SLOPPY_LEVELS:
        stand_ins = (node for node in clockwise[replicas:] if is_live(node))
        for node in preference:
            if not is_live(node):
                stand_in = next(stand_ins, None)
                if stand_in is None:
                    break
                chosen.append(Target(stand_in, stands_in_for=node))
    return chosen


def check_reachable(level: Consistency, replicas: int, reachable: int) -> None:
    """Fail fast, before sending anything, when the level cannot be met."""
    needed = required_replies(level, replicas)
    if reachable < needed:
        raise Unavailable(
            f"{level.name} needs {needed} of {replicas} replicas, only {reachable} reachable",
            reason="NOT_ENOUGH_REPLICAS",
            metadata={"needed": str(needed), "reachable": str(reachable)},
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
