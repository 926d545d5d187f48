"""Who is in the cluster, what each member does in the ring, and how that changes.

The leader owns membership. It publishes a :class:`Membership` with every
heartbeat; every node adopts the newest it sees (:meth:`Membership.newer_than`)
and never goes back to an older one.

A change moves data, so it happens in two steps, as in Cassandra's pending
ranges:

1. The leader marks a member ``JOINING`` (a new node) or ``LEAVING`` (a
   decommission, or a node dead longer than ``--dead-after``) and publishes a
   new epoch. Reads still use the :meth:`~Membership.current_nodes` ring;
   writes go to the replicas of both rings; every node that gains ranges in
   the :meth:`~Membership.next_nodes` ring pulls them from the current
   replicas and then reports the epoch as synced.
2. When every member that must report has (:func:`ready_to_settle`), the
   leader publishes :meth:`Membership.settled`: joiners become ``NORMAL``,
   leavers are gone, and reads move to the new ring.

One change is in flight at a time; requests for another are refused until it
settles, which keeps every key's replica set to at most two rings.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from ringkv.core.errors import InvalidArgument, NotFound, Unavailable
from ringkv.core.ring import Ring, moved_ranges


class MemberStatus(enum.StrEnum):
    """A member's place in the ring."""

    JOINING = "joining"
    """Admitted; receives writes and pulls its ranges; serves no reads yet."""
    NORMAL = "normal"
    """Holds and serves its ranges."""
    LEAVING = "leaving"
    """Still serves its ranges while their new replicas pull them; then removed."""


class Liveness(enum.StrEnum):
    """What the failure detector makes of a member's silence."""

    ALIVE = "alive"
    SUSPECT = "suspect"
    """Missed heartbeats for longer than two intervals."""
    DEAD = "dead"
    """Silent for an election timeout or more."""


@dataclass(frozen=True, slots=True)
class Member:
    node_id: str
    address: str
    status: MemberStatus = MemberStatus.NORMAL


REMOVED_KEPT = 16
"""How many ids of joiners an operator removed a member table remembers."""


@dataclass(frozen=True, slots=True)
class Membership:
    """One epoch of the member table. Immutable: each change is a new epoch."""

    epoch: int
    members: tuple[Member, ...]
    """Sorted by node id."""
    term: int = 0
    """The election term of the leader that made this epoch. Two leaders of
    different terms could each make the same epoch number during a failover;
    the later term wins, so every node still converges on one table."""
    removed: tuple[str, ...] = ()
    """The ids an operator removed while they were joining, the latest
    ``REMOVED_KEPT``, oldest first. A joiner dropped because it died comes
    back as a new member when it returns; one an operator removed must stop
    instead, and it can only tell the two apart from the table."""

    @classmethod
    def bootstrap(cls, addresses: Mapping[str, str]) -> Membership:
        """Epoch 1 of a cluster whose members were all named on the command line."""
        return cls(1, tuple(Member(n, a) for n, a in sorted(addresses.items())))

    def newer_than(self, other: Membership) -> bool:
        return self.fence > other.fence

    @property
    def fence(self) -> tuple[int, int]:
        """(epoch, term): what replica messages carry, so a replica on a newer
        table refuses requests planned on an older one."""
        return (self.epoch, self.term)

    def get(self, node_id: str) -> Member | None:
        for member in self.members:
            if member.node_id == node_id:
                return member
        return None

    @property
    def node_ids(self) -> tuple[str, ...]:
        return tuple(member.node_id for member in self.members)

    @property
    def addresses(self) -> dict[str, str]:
        return {member.node_id: member.address for member in self.members}

    def current_nodes(self) -> tuple[str, ...]:
        """The members whose ring serves reads: every member but joiners."""
        return tuple(m.node_id for m in self.members if m.status is not MemberStatus.JOINING)

    def next_nodes(self) -> tuple[str, ...]:
        """The members of the ring after the change in flight: every member but leavers."""
        return tuple(m.node_id for m in self.members if m.status is not MemberStatus.LEAVING)

    @property
    def changing(self) -> bool:
        """Whether a join or a departure is in flight."""
        return any(m.status is not MemberStatus.NORMAL for m in self.members)

    def _check_idle(self) -> None:
        if self.changing:
            busy = ", ".join(
                f"{m.node_id} {m.status}" for m in self.members if m.status != "normal"
            )
            raise Unavailable(
                f"a membership change is in progress ({busy}); retry when it is done",
                reason="MEMBERSHIP_CHANGING",
            )

    def with_joining(self, node_id: str, address: str, term: int) -> Membership:
        """Admit a node. Joining again under an existing id only updates the address."""
        existing = self.get(node_id)
        if existing is not None:
            if existing.address == address:
                return self
            return self._next(
                (replace(m, address=address) if m.node_id == node_id else m for m in self.members),
                term,
            )
        self._check_idle()
        # Asked to join again, an id an operator removed is welcome again.
        removed = tuple(n for n in self.removed if n != node_id)
        return self._next(
            (*self.members, Member(node_id, address, MemberStatus.JOINING)), term, removed=removed
        )

    def with_leaving(self, node_id: str, term: int) -> Membership:
        """Start moving a member's ranges to the others, then remove it."""
        member = self.get(node_id)
        if member is None:
            raise NotFound(f"{node_id!r} is not a member", reason="NO_SUCH_MEMBER")
        if member.status is MemberStatus.LEAVING:
            return self
        if member.status is MemberStatus.JOINING:
            # Its join is the change in progress, and nothing is its alone
            # yet: the old owners keep every range until the join settles.
            removed = (*(n for n in self.removed if n != node_id), node_id)[-REMOVED_KEPT:]
            return self._next(
                (m for m in self.members if m.node_id != node_id), term, removed=removed
            )
        self._check_idle()
        if len(self.members) == 1:
            raise InvalidArgument(f"{node_id!r} is the only member; it cannot leave")
        return self._next(
            (
                replace(m, status=MemberStatus.LEAVING) if m.node_id == node_id else m
                for m in self.members
            ),
            term,
        )

    def without_joining(self, node_id: str, term: int) -> Membership:
        """Give up on a joiner that died before it finished pulling its ranges."""
        return self._next((m for m in self.members if m.node_id != node_id), term)

    def settled(self, term: int) -> Membership:
        """The change done: joiners are normal members and leavers are gone."""
        return self._next(
            (
                replace(m, status=MemberStatus.NORMAL)
                for m in self.members
                if m.status is not MemberStatus.LEAVING
            ),
            term,
        )

    def made_after(self, term: int) -> bool:
        """Whether a leader of a later term than ``term`` made this table.

        A leader whose lease outlived a failover can adopt its successor's
        table; it must not change it, or it would stamp a change with a term
        that is not its own and two tables could share one (epoch, term).
        """
        return self.term > term

    def _next(
        self, members: Iterable[Member], term: int, *, removed: tuple[str, ...] | None = None
    ) -> Membership:
        if self.made_after(term):
            raise Unavailable(
                f"the member table was made in term {self.term}, after this leader's "
                f"term {term}: a newer leader exists",
                reason="STALE_LEADER",
            )
        return Membership(
            self.epoch + 1,
            tuple(sorted(members, key=lambda m: m.node_id)),
            term,
            self.removed if removed is None else removed,
        )


def caught_up(membership: Membership, adopted: Mapping[str, int]) -> bool:
    """Whether every member is known to have adopted this table (or a later one)."""
    return all(adopted.get(node, 0) >= membership.epoch for node in membership.node_ids)


def gainers(membership: Membership, ring_of: RingMaker, replicas: int) -> frozenset[str]:
    """The members that replicate some range in the next ring but not in the current one."""
    if not membership.changing:
        return frozenset()
    current, upcoming = ring_of(membership.current_nodes()), ring_of(membership.next_nodes())
    gained: set[str] = set()
    n_now, n_next = replica_count(replicas, current), replica_count(replicas, upcoming)
    for move in moved_ranges(current, upcoming, max(n_now, n_next)):
        new = move.new_replicas[:n_next]
        old = move.old_replicas[:n_now]
        gained.update(node for node in new if node not in old)
    return frozenset(gained)


def replica_count(replication_factor: int, ring: Ring) -> int:
    """Copies of each key in a ring: the replication factor, capped at its size."""
    return max(1, min(replication_factor, len(ring.nodes)))


class RingMaker:
    """Builds (and remembers) the ring of a set of members at one vnode count.

    Rings carry epoch 0 here: the membership's epoch is the cluster's version.
    """

    def __init__(self, vnodes_per_node: int) -> None:
        self.vnodes_per_node = vnodes_per_node
        self._rings: dict[tuple[str, ...], Ring] = {}

    def __call__(self, nodes: Iterable[str]) -> Ring:
        members = tuple(sorted(nodes))
        ring = self._rings.get(members)
        if ring is None:
            if len(self._rings) > 16:
                self._rings.clear()
            ring = self._rings[members] = Ring(members, 0, self.vnodes_per_node)
        return ring


def ready_to_settle(
    membership: Membership,
    gaining: frozenset[str],
    synced: Mapping[str, int],
    liveness: Mapping[str, Liveness],
) -> bool:
    """Whether the change in flight may settle.

    Every member that gains ranges must have pulled them for this epoch. A
    dead gainer is not waited for (anti-entropy and hints catch it up when it
    returns), except a joiner: it has nothing until it has pulled.
    """
    if not membership.changing:
        return False
    for node in gaining:
        member = membership.get(node)
        if synced.get(node, 0) >= membership.epoch:
            continue
        joining = member is not None and member.status is MemberStatus.JOINING
        if joining or liveness.get(node, Liveness.ALIVE) is not Liveness.DEAD:
            return False
    return True


class FailureDetector:
    """Alive, suspect or dead, from when each member was last heard from.

    ``suspect_after_ms`` is two heartbeat intervals (one lost heartbeat is
    noise); ``dead_after_ms`` is the election timeout, the silence after which
    followers also give up on a leader.
    """

    def __init__(self, suspect_after_ms: int, dead_after_ms: int) -> None:
        self._suspect_after_ms = suspect_after_ms
        self._dead_after_ms = dead_after_ms
        self._heard: dict[str, int] = {}

    def heard(self, node_id: str, now_ms: int) -> None:
        self._heard[node_id] = max(now_ms, self._heard.get(node_id, now_ms))

    def watch(self, node_ids: Iterable[str], now_ms: int) -> None:
        """Start the clock for members never heard from (a node just elected)."""
        for node in node_ids:
            self._heard.setdefault(node, now_ms)

    def forget(self, node_ids: Iterable[str]) -> None:
        for node in node_ids:
            self._heard.pop(node, None)

    def silent_for(self, node_id: str, now_ms: int) -> int:
        return max(0, now_ms - self._heard.get(node_id, now_ms))

    def state(self, node_id: str, now_ms: int) -> Liveness:
        silence = self.silent_for(node_id, now_ms)
        if silence >= self._dead_after_ms:
            return Liveness.DEAD
        if silence >= self._suspect_after_ms:
            return Liveness.SUSPECT
        return Liveness.ALIVE


def leader_decision(
    membership: Membership,
    *,
    term: int,
    gaining: frozenset[str],
    synced: Mapping[str, int],
    liveness: Mapping[str, Liveness],
    dead_for_ms: Mapping[str, int],
    remove_dead_after_ms: int,
    adopted: Mapping[str, int],
    leases_expired: bool,
) -> Membership | None:
    """The leader's next membership change, if any is due.

    A change in flight settles once its gainers have synced; a joiner dead
    past the limit is dropped. Otherwise the member dead longest past
    ``remove_dead_after_ms`` starts leaving, so its ranges are re-replicated.

    Leaving a change (settling it or dropping its joiner) also waits until no
    member can still coordinate on a table older than the change: each has
    ``adopted`` it, or ``leases_expired`` (no lease granted before the change
    is still running). Then every coordinator is on this table or the next,
    and the requests of two neighbouring tables meet (joint quorums): a node
    that missed the change cannot serve on the ring before it while the
    others serve on the ring after it.
    """
    if membership.changing:
        if not leases_expired and not caught_up(membership, adopted):
            return None
        for member in membership.members:
            if (
                member.status is MemberStatus.JOINING
                and dead_for_ms.get(member.node_id, 0) >= remove_dead_after_ms
            ):
                return membership.without_joining(member.node_id, term)
        if ready_to_settle(membership, gaining, synced, liveness):
            return membership.settled(term)
        return None
    overdue = [
        (dead_for_ms.get(node, 0), node)
        for node in membership.node_ids
        if liveness.get(node) is Liveness.DEAD and dead_for_ms.get(node, 0) >= remove_dead_after_ms
    ]
    if overdue and len(membership.members) > 1:
        return membership.with_leaving(max(overdue)[1], term)
    return None
