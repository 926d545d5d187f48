"""Bully leader election for one node, as a sans-I/O state machine.

Priority is id order, numbers in ids compared as numbers (:func:`priority`):
of the members that can reach a majority, the one with the highest id leads.
The node does no I/O: :meth:`ElectionNode.start`,
:meth:`~ElectionNode.receive` and :meth:`~ElectionNode.tick` return an
:class:`Output` with the messages to send and the time ``tick`` must next be
called; the caller owns the sockets and the clock.

The protocol
------------
* The leader sends :class:`Heartbeat` to every member each
  ``heartbeat_interval_ms``; members reply :class:`HeartbeatAck`.
* A follower that hears no acceptable heartbeat for ``election_timeout_ms``
  (plus a little random jitter, so followers do not all move at once) starts
  an election: it sends :class:`Election` to every member with a higher id.
* A member that gets an :class:`Election` from a lower id replies
  :class:`Answer` and starts its own election (a leader instead reasserts
  itself with a heartbeat). A candidate that gets an answer waits
  ``election_timeout_ms`` for someone higher to take over, then tries again.
* A candidate that gets no answer within ``answer_timeout_ms`` announces
  :class:`Coordinator` with a new term (one past the largest term it has
  seen) to every member. It becomes leader only once a majority, itself
  included, has accepted that term with a :class:`CoordinatorAck`.

Why at most one leader per term
-------------------------------
A member accepts a leader for a term only if the term is at least its
current term, and it remembers the one leader it accepted for its current
term (a candidate accepts itself for the term it announces). Terms a member
has moved past are rejected outright, so a member accepts at most one leader
per term. Two leaders of one term would need two majorities that each
accepted a different leader; majorities intersect, so that cannot happen.

Why the highest reachable id wins
---------------------------------
A member never accepts a leader with a lower id than its own: it rejects the
claim and starts its own election, which it wins if it reaches a majority
(the "bully" take-over when a higher node comes back). A leader keeps its
role only while a majority acknowledged a heartbeat within the last
``election_timeout_ms``; a leader cut off from the majority steps down.

A node that restarts must resume the term and the leader it accepted
(:attr:`ElectionNode.vote`, passed back to the constructor); the node
persists both before it answers for a new term. Having forgotten when it
last acknowledged its leader, it then follows no other leader, and claims
nothing, for an election timeout (:meth:`ElectionNode.start`).
"""

from __future__ import annotations

import enum
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

_NEVER = 1 << 62
"""A time no timer reaches: the wake-up time when nothing is due."""

# ---------------------------------------------------------------------------
# Messages


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """The leader's periodic "I am still leading"."""

    leader: str
    """The node that leads."""
    term: int
    """The term it leads."""
    sent_ms: int | None = field(default=None, compare=False)
    """When the sender sent it, on its own clock (None when not known here); the
    reply echoes it, so the leader's lease counts from sending, not from a late reply."""


@dataclass(frozen=True, slots=True)
class HeartbeatAck:
    """A member's reply to a :class:`Heartbeat`."""

    sender: str
    """The member that replies."""
    term: int
    """The heartbeat's term if accepted, else the member's own current term."""
    accepted: bool
    """Whether the member follows the heartbeat's leader in that term."""
    sent_ms: int | None = field(default=None, compare=False)
    """The ``sent_ms`` of the message it answers: the leader's lease counts from then."""


@dataclass(frozen=True, slots=True)
class Election:
    """A candidate asking every higher-id member whether it is alive."""

    candidate: str
    """The node that starts the election."""
    term: int
    """The candidate's current term."""


@dataclass(frozen=True, slots=True)
class Answer:
    """A higher-id member's "I am alive, I take over" reply to an :class:`Election`."""

    responder: str
    """The member that replies."""
    term: int
    """The responder's current term."""


@dataclass(frozen=True, slots=True)
class Coordinator:
    """A candidate's claim to lead a new term; it leads once a majority accepts."""

    leader: str
    """The candidate that claims the term."""
    term: int
    """The term it claims: one past the largest term it has seen."""
    sent_ms: int | None = field(default=None, compare=False)
    """When the sender sent it, on its own clock (None when not known here); the
    reply echoes it, so the leader's lease counts from sending, not from a late reply."""


@dataclass(frozen=True, slots=True)
class CoordinatorAck:
    """A member's reply to a :class:`Coordinator`."""

    sender: str
    """The member that replies."""
    term: int
    """The claimed term if accepted, else the member's own current term."""
    accepted: bool
    """Whether the member accepted the claimant as the leader of that term."""
    sent_ms: int | None = field(default=None, compare=False)
    """The ``sent_ms`` of the message it answers: the leader's lease counts from then."""


Message = Heartbeat | HeartbeatAck | Election | Answer | Coordinator | CoordinatorAck
"""Every message the election protocol sends."""


@dataclass(frozen=True, slots=True)
class Envelope:
    """A message and the member it goes to."""

    to: str
    """The member to deliver the message to."""
    message: Message
    """The message."""


@dataclass(frozen=True, slots=True)
class Output:
    """What the caller must do after feeding the node an event."""

    messages: tuple[Envelope, ...]
    """Messages to send, in order. Losing, delaying or duplicating them is safe."""
    wake_at_ms: int
    """When to call :meth:`ElectionNode.tick` next (it may be called earlier too)."""


# ---------------------------------------------------------------------------
# Configuration and state


@dataclass(frozen=True, slots=True)
class ElectionConfig:
    """Timings of the election protocol. Every member should use the same."""

    heartbeat_interval_ms: int = 1000
    """How often the leader sends heartbeats."""
    election_timeout_ms: int = 3000
    """How long a follower waits without heartbeats before it starts an election,
    and how long a leader keeps leading without acks from a majority."""
    answer_timeout_ms: int = 1500
    """How long a candidate waits for an :class:`Answer` (and for acks of its
    :class:`Coordinator`) before it moves on."""
    jitter_ms: int = 300
    """Up to this much random delay is added to each follower's election timeout."""

    def __post_init__(self) -> None:
        if self.heartbeat_interval_ms <= 0 or self.answer_timeout_ms <= 0 or self.jitter_ms < 0:
            raise ValueError(f"timings must be positive: {self!r}")
        if self.election_timeout_ms <= self.heartbeat_interval_ms:
            # Otherwise followers time out between two healthy heartbeats.
            raise ValueError(
                f"election_timeout_ms ({self.election_timeout_ms}) must exceed "
                f"heartbeat_interval_ms ({self.heartbeat_interval_ms})"
            )


class Role(enum.Enum):
    """What a node currently does in the election."""

    FOLLOWER = "follower"
    """Follows a leader, or waits for one to appear."""
    CANDIDATE = "candidate"
    """Runs an election."""
    LEADER = "leader"
    """Leads its term, acknowledged by a majority."""


class _Phase(enum.Enum):
    """Where a candidate is in its election."""

    ELECTING = "electing"
    """Sent :class:`Election` to higher ids; waits for an :class:`Answer`."""
    AWAITING_COORDINATOR = "awaiting_coordinator"
    """A higher id answered; waits for it to announce itself."""
    COORDINATING = "coordinating"
    """Announced :class:`Coordinator`; waits for a majority of acks."""


def _sender(message: Message) -> str:
    """The member that sent a message (every message names it)."""
    match message:
        case Heartbeat(leader, _) | Coordinator(leader, _):
            return leader
        case HeartbeatAck(sender, _, _) | CoordinatorAck(sender, _, _):
            return sender
        case Election(candidate, _):
            return candidate
        case Answer(responder, _):
            return responder


def priority(node_id: str) -> tuple[tuple[tuple[int, int | str], ...], str]:
    """A node's rank in the bully order: ids compare with their numbers as numbers.

    So ``"n10"`` outranks ``"n9"`` and ``"ringkv-10"`` outranks ``"ringkv-9"``
    (a StatefulSet's pod names), where plain string order would not. The id
    itself breaks ties ("n01" and "n1"), so distinct ids never rank equal.
    """
    parts = tuple(
        (1, int(part)) if part.isascii() and part.isdigit() else (0, part)
        for part in re.split(r"([0-9]+)", node_id)
        if part
    )
    return parts, node_id


def majority(members: int) -> int:
    """The smallest number of members that is more than half of ``members``."""
    return members // 2 + 1


class ElectionNode:
    """The election state machine of one member. Not thread-safe.

    ``members`` lists every member, this node included; the highest
    :func:`priority` (numbers in ids compare as numbers) leads. ``rng`` only adds jitter to the
    election timeout; seed it for reproducible runs.
    """

    def __init__(
        self,
        node_id: str,
        members: Sequence[str],
        config: ElectionConfig,
        rng: random.Random,
        *,
        term: int = 0,
        term_leader: str | None = None,
    ) -> None:
        self.node_id = node_id
        self.config = config
        self._rng = rng
        # LEADER: when each member last acknowledged this term.
        self._acked_at: dict[str, int] = {}
        self.set_members(members)

        self._role = Role.FOLLOWER
        self._phase = _Phase.ELECTING
        # A restarted node resumes the term and leader it persisted (see
        # :attr:`vote`), so it cannot accept a second leader for that term.
        self._term = term
        # The one leader accepted for ``_term`` (this node itself while it
        # claims the term). Lower terms are rejected outright, so this is all
        # that is needed to never accept two leaders in one term.
        self._term_leader: str | None = term_leader
        # The largest term seen in any message: a new claim must exceed it.
        self._max_term_seen = term
        self._leader: str | None = None
        # FOLLOWER: when it last accepted its leader's heartbeat or claim.
        self._leader_heard_ms = 0
        # FOLLOWER: when it starts an election; CANDIDATE: when the phase times out.
        self._deadline_ms = 0
        # COORDINATING: the members that accepted the claimed term, self included.
        self._acks: set[str] = set()
        # LEADER: when the next heartbeat is due.
        self._next_heartbeat_ms = 0
        self._started = False
        # Until then, a node that resumed a vote elects no one (itself
        # included) but the leader of its term: see :meth:`start`.
        self._quiet_until_ms = 0

    def set_members(self, members: Sequence[str]) -> None:
        """Change who takes part (a join or a removal); the term is kept."""
        if self.node_id not in members:
            raise ValueError(f"{self.node_id!r} is not one of the members {list(members)!r}")
        self.members = tuple(sorted(set(members)))
        self._member_set = frozenset(self.members)
        self._others = tuple(m for m in self.members if m != self.node_id)
        self._higher = tuple(m for m in self.members if priority(m) > priority(self.node_id))
        self._majority = majority(len(self.members))
        for gone in set(self._acked_at) - self._member_set:
            del self._acked_at[gone]

    # -- observed state ------------------------------------------------------

    @property
    def vote(self) -> tuple[int, str | None]:
        """The term and the leader accepted for it: what must survive a restart."""
        return self._term, self._term_leader

    @property
    def role(self) -> Role:
        """What this node currently does."""
        return self._role

    @property
    def leader(self) -> str | None:
        """The leader this node follows (itself when leading); None while it has none."""
        return self._leader

    @property
    def term(self) -> int:
        """The current term: the latest this node accepted a leader for, or claimed."""
        return self._term

    # -- events --------------------------------------------------------------

    def start(self, now_ms: int, *, campaign: bool = True) -> Output:
        """Join the group: like a bully process that comes up, start an election
        (after an election timeout, for a node that resumed a vote).

        Without ``campaign`` the node first follows whoever leads, and runs
        for leader only after an election timeout without one (or when a
        lower id claims to lead it). A node just admitted to the cluster
        starts so: until the leader's heartbeats have spread the member table
        that lists it, the others would refuse its claims.
        """
        self._started = True
        out: list[Envelope] = []
        if self._term > 0 and self._others and self._term_leader != self.node_id:
            # Resumed a vote: before it stopped, it may have acknowledged a
            # leader within the last election timeout, and that ack may still
            # count toward the leader's lease. It forgot when, so it keeps
            # the promise sticky followers keep for a whole timeout from now
            # (cluster sim seed 10609: restarted half a second after it acked
            # n3, n1 made n5's majority while n3 still led). Not a lone node,
            # nor one that claimed its term: it acked no one since.
            self._quiet_until_ms = now_ms + self.config.election_timeout_ms
        if campaign:
            self._start_election(now_ms, out)
        else:
            self._deadline_ms = now_ms + self._election_timeout()
        return self._output(out)

    def tick(self, now_ms: int) -> Output:
        """Act on whatever timer has expired by ``now_ms``; a no-op when none has."""
        out: list[Envelope] = []
        if not self._started:
            return self._output(out)
        if self._role is Role.LEADER:
            if self._lease_expiry_ms() <= now_ms:
                # Cut off from the majority: someone else may be elected by now.
                self._step_down(now_ms)
            elif self._next_heartbeat_ms <= now_ms:
                self._send_heartbeats(now_ms, out)
        elif self._deadline_ms <= now_ms:
            if self._role is Role.FOLLOWER or self._phase is not _Phase.ELECTING:
                # No heartbeat in time, no one took over after answering, or
                # no majority accepted the claim: (re)start the election.
                self._start_election(now_ms, out)
            else:
                # No higher id answered: claim leadership.
                self._claim(now_ms, out)
        return self._output(out)

    def receive(self, message: Message, now_ms: int) -> Output:
        """Handle one message from another member; messages from non-members are ignored."""
        out: list[Envelope] = []
        if self._started and _sender(message) in self._member_set:
            self._max_term_seen = max(self._max_term_seen, message.term)
            match message:
                case Heartbeat(leader, term) | Coordinator(leader, term):
                    if leader == self.node_id:
                        return self._output(out)  # Our own claim echoed back.
                    accepted = self._on_claim(leader, term, now_ms, out)
                    ack_type = HeartbeatAck if isinstance(message, Heartbeat) else CoordinatorAck
                    ack_term = term if accepted else self._term
                    ack = ack_type(self.node_id, ack_term, accepted, message.sent_ms)
                    out.insert(0, Envelope(leader, ack))
                case HeartbeatAck() | CoordinatorAck():
                    self._on_ack(message, now_ms, out)
                case Election(candidate, _):
                    self._on_election(candidate, now_ms, out)
                case Answer(responder, _):
                    if (
                        self._role is Role.CANDIDATE
                        and self._phase is _Phase.ELECTING
                        and priority(responder) > priority(self.node_id)
                    ):
                        self._phase = _Phase.AWAITING_COORDINATOR
                        self._deadline_ms = now_ms + self._election_timeout()
        return self._output(out)

    # -- handlers ------------------------------------------------------------

    def _on_claim(self, leader: str, term: int, now_ms: int, out: list[Envelope]) -> bool:
        """A Heartbeat or Coordinator from ``leader`` for ``term``: follow it or not."""
        if now_ms < self._quiet_until_ms and leader != self._term_leader:
            return False
        if leader != self._leader and self._hears_leader(now_ms):
            # Sticky, as Raft's check-quorum: the leader this node follows was
            # heard within an election timeout and may still hold its lease; a
            # second leader now would overlap it. A bridge node that switched
            # would also make the two sides' leaders take turns for good.
            return False
        if priority(leader) < priority(self.node_id):
            # Bully: a lower id never leads us. We are alive, so we take over.
            if self._role is not Role.CANDIDATE:
                self._start_election(now_ms, out)
            return False
        if term < self._term or (term == self._term and self._term_leader not in (None, leader)):
            return False  # A term we moved past, or one we gave to someone else.
        self._term = term
        self._term_leader = leader
        self._role = Role.FOLLOWER
        self._leader = leader
        # Its ack counts toward the claimant's lease as a heartbeat's does, so it
        # holds this node as long (a claimant that never gets its majority
        # delays another by up to an election timeout).
        self._leader_heard_ms = now_ms
        self._acked_at.clear()
        self._deadline_ms = now_ms + self._election_timeout()
        return True

    def _hears_leader(self, now_ms: int) -> bool:
        """Whether this node follows a leader it heard within an election timeout.

        While it does, its last acknowledgement may still count toward that
        leader's lease, so it follows no other.
        """
        return (
            self._role is Role.FOLLOWER
            and self._leader is not None
            and now_ms < self._leader_heard_ms + self.config.election_timeout_ms
        )

    def _on_ack(self, ack: HeartbeatAck | CoordinatorAck, now_ms: int, out: list[Envelope]) -> None:
        """A member's reply to our Heartbeat or Coordinator."""
        sender, term, accepted = ack.sender, ack.term, ack.accepted
        # A reply vouches for the moment its message was sent (at most now).
        sent_ms = now_ms if ack.sent_ms is None else min(ack.sent_ms, now_ms)
        if accepted:
            if term != self._term or self._term_leader != self.node_id:
                return  # A reply to an older claim.
            acked = max(sent_ms, self._acked_at.get(sender, sent_ms))
            if self._role is Role.LEADER:
                self._acked_at[sender] = acked
            elif self._role is Role.CANDIDATE and self._phase is _Phase.COORDINATING:
                self._acks.add(sender)
                self._acked_at[sender] = acked
                if len(self._acks) >= self._majority:
                    self._become_leader(now_ms, out)
            return
        if self._role is Role.FOLLOWER or term < self._term:
            return  # Not claiming anything, or a stale rejection.
        if self._role is Role.CANDIDATE and self._phase is not _Phase.COORDINATING:
            return
        if priority(sender) > priority(self.node_id):
            # A higher id is alive and will take over (bully); wait for it.
            self._role = Role.CANDIDATE
            self._phase = _Phase.AWAITING_COORDINATOR
            self._leader = None
            self._deadline_ms = now_ms + self._election_timeout()
        elif term >= self._term:
            # A lower id follows another leader in this term or a later one:
            # claim a term past it so that it can follow us.
            self._claim(now_ms, out)

    def _on_election(self, candidate: str, now_ms: int, out: list[Envelope]) -> None:
        """A lower id asks whether anyone higher is alive."""
        if priority(candidate) >= priority(self.node_id):
            return  # Elections only go to higher ids; ignore a misdirected one.
        out.append(Envelope(candidate, Answer(self.node_id, self._term)))
        if self._role is Role.LEADER:
            # Reassert ourselves to the candidate rather than start over.
            out.append(Envelope(candidate, Heartbeat(self.node_id, self._term, now_ms)))
        elif self._role is Role.FOLLOWER and not self._hears_leader(now_ms):
            # With a leader heard lately, the answer is all: the leader lives.
            self._start_election(now_ms, out)

    # -- transitions ---------------------------------------------------------

    def _start_election(self, now_ms: int, out: list[Envelope]) -> None:
        """Ask every higher id whether it is alive; with none, claim at once."""
        if now_ms < self._quiet_until_ms:
            self._role = Role.FOLLOWER
            # Jittered, as every election timeout: nodes restarted together
            # would otherwise all run at once.
            jitter = self._election_timeout() - self.config.election_timeout_ms
            self._deadline_ms = self._quiet_until_ms + jitter
            return
        self._role = Role.CANDIDATE
        self._leader = None
        self._acked_at.clear()
        if not self._higher:
            self._claim(now_ms, out)
            return
        self._phase = _Phase.ELECTING
        self._deadline_ms = now_ms + self.config.answer_timeout_ms
        out.extend(Envelope(m, Election(self.node_id, self._term)) for m in self._higher)

    def _claim(self, now_ms: int, out: list[Envelope]) -> None:
        """Announce a new term with ourselves as leader; lead once a majority accepts."""
        self._role = Role.CANDIDATE
        self._phase = _Phase.COORDINATING
        self._leader = None
        self._term = self._max_term_seen = self._max_term_seen + 1
        self._term_leader = self.node_id
        self._acks = {self.node_id}
        self._acked_at.clear()
        self._deadline_ms = now_ms + self.config.answer_timeout_ms
        if len(self._acks) >= self._majority:
            self._become_leader(now_ms, out)
            return
        out.extend(Envelope(m, Coordinator(self.node_id, self._term, now_ms)) for m in self._others)

    def _become_leader(self, now_ms: int, out: list[Envelope]) -> None:
        self._role = Role.LEADER
        self._leader = self.node_id
        self._acks = set()
        self._send_heartbeats(now_ms, out)

    def _step_down(self, now_ms: int) -> None:
        """Stop leading; start an election if no leader shows up in time."""
        self._role = Role.FOLLOWER
        self._leader = None
        self._acked_at.clear()
        self._deadline_ms = now_ms + self._election_timeout()

    def _send_heartbeats(self, now_ms: int, out: list[Envelope]) -> None:
        self._next_heartbeat_ms = now_ms + self.config.heartbeat_interval_ms
        out.extend(Envelope(m, Heartbeat(self.node_id, self._term, now_ms)) for m in self._others)

    # -- helpers -------------------------------------------------------------

    def _election_timeout(self) -> int:
        return self.config.election_timeout_ms + self._rng.randint(0, self.config.jitter_ms)

    @property
    def lease_expiry_ms(self) -> int:
        """LEADER: when its lease runs out unless more acks arrive; 0 otherwise."""
        return self._lease_expiry_ms() if self._role is Role.LEADER else 0

    def _lease_expiry_ms(self) -> int:
        """When the leader has gone ``election_timeout_ms`` without a majority of acks.

        The lease runs from the oldest of the ``majority - 1`` most recent
        acks from other members (this node counts for itself), each counted
        from when the message it answers was sent: a reply that arrives late
        vouches only for the moment the member accepted, which was no later,
        so a deposed leader's lease never outlives its followers' patience.
        """
        needed = self._majority - 1
        if needed == 0:
            return _NEVER  # A single member is always its own majority.
        recent = sorted(self._acked_at.values(), reverse=True)
        if len(recent) < needed:
            return 0  # Cannot happen after a majority acked; step down to be safe.
        return recent[needed - 1] + self.config.election_timeout_ms

    def _output(self, out: list[Envelope]) -> Output:
        """The messages to send and the next wake-up, whatever the role."""
        if not self._started:
            wake = _NEVER
        elif self._role is Role.LEADER:
            wake = min(self._next_heartbeat_ms, self._lease_expiry_ms())
        else:
            wake = self._deadline_ms
        return Output(tuple(out), wake)
