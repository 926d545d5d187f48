"""A deterministic fake clock and network for election state machines.

Events (message deliveries and timer wake-ups) sit in one queue ordered by
simulated time, ties broken by insertion order. Every random choice (drops,
delays, duplicates, the nodes' election jitter) comes from one
``random.Random``, so a seed replays a run exactly.

Connectivity is decided when a message is *delivered*: a message in flight
when a partition starts is lost, and none crosses a partition once it is in
place. Drops and duplicates are decided when it is sent.

A subclass can send something along with each message (a member table, say)
by overriding :meth:`SimNetwork.attach`, use it on arrival by overriding
:meth:`SimNetwork.deliver`, and act after each step of a node, before its
messages leave, by overriding :meth:`SimNetwork.stepped`.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from ringkv.core.election import (
    Answer,
    Coordinator,
    CoordinatorAck,
    Election,
    ElectionConfig,
    ElectionNode,
    Envelope,
    Heartbeat,
    HeartbeatAck,
    Message,
    Output,
)


@dataclass(frozen=True, slots=True)
class Faults:
    """How the network treats messages between connected nodes."""

    drop: float = 0.0
    """Probability that a message is lost."""
    duplicate: float = 0.0
    """Probability that a message is delivered twice (each copy with its own delay)."""
    min_delay_ms: int = 1
    """The shortest delivery delay."""
    max_delay_ms: int = 1
    """The longest delivery delay."""


def sender_of(message: Message) -> str:
    """The node that sent a message (every message names it)."""
    match message:
        case Heartbeat(leader, _) | Coordinator(leader, _):
            return leader
        case HeartbeatAck(sender, _, _) | CoordinatorAck(sender, _, _):
            return sender
        case Election(candidate, _):
            return candidate
        case Answer(responder, _):
            return responder


_DELIVER = 0
_WAKE = 1


class SimNetwork:
    """Election nodes wired through a fake network, driven by a fake clock."""

    def __init__(
        self,
        node_ids: Sequence[str],
        config: ElectionConfig,
        rng: random.Random,
        faults: Faults = Faults(),
        spurious_ticks: float = 0.0,
    ) -> None:
        self.rng = rng
        self.config = config
        self.faults = faults
        self.spurious_ticks = spurious_ticks
        """Probability, per event, of an extra ``tick`` on a random node."""
        self.now_ms = 0
        self.nodes = {n: ElectionNode(n, node_ids, config, rng) for n in node_ids}
        self._group_of = dict.fromkeys(node_ids, 0)
        self._severed: set[frozenset[str]] = set()
        self._queue: list[tuple[int, int, int, str, Message | None, object]] = []
        self._seq = 0
        self._wake_at: dict[str, int] = {}
        self.observers: list[Callable[[], None]] = []
        """Called after every event, to check invariants continuously."""
        self.delivered = 0

    # -- connectivity -------------------------------------------------------

    def partition(self, *groups: Iterable[str]) -> None:
        """Only nodes in the same group talk; nodes not named are each cut off alone."""
        self._severed.clear()
        self._group_of = {n: -1 - i for i, n in enumerate(self.nodes)}
        for index, group in enumerate(groups):
            for node in group:
                self._group_of[node] = index

    def isolate(self, node: str) -> None:
        """Cut one node off from everyone else."""
        self._group_of[node] = -1 - list(self.nodes).index(node) - len(self.nodes)

    def heal(self) -> None:
        """Connect every node to every other."""
        self._severed.clear()
        self._group_of = dict.fromkeys(self.nodes, 0)

    def sever(self, a: str, b: str) -> None:
        """Cut the link between two nodes both ways, until the next partition or heal.

        A partial partition: ``a`` and ``b`` may still hear each other's news
        through a third node, which groups alone cannot model.
        """
        self._severed.add(frozenset((a, b)))

    def connected(self, a: str, b: str) -> bool:
        """Whether a message from ``a`` to ``b`` would be delivered now."""
        if self._group_of[a] != self._group_of[b]:
            return False
        return not self._severed or frozenset((a, b)) not in self._severed

    # -- running ------------------------------------------------------------

    def start(self) -> None:
        """Start every node at the current time."""
        for node_id, node in self.nodes.items():
            self._apply(node_id, node.start(self.now_ms))

    def run_until(self, end_ms: int) -> None:
        """Process every event up to and including ``end_ms``; the clock ends there."""
        while self._queue and self._queue[0][0] <= end_ms:
            at, _, kind, node_id, message, attachment = heapq.heappop(self._queue)
            self.now_ms = at
            if kind == _DELIVER:
                assert message is not None
                if not self.connected(sender_of(message), node_id):
                    continue
                self.delivered += 1
                self.deliver(node_id, message, attachment)
            elif self._wake_at.get(node_id) == at:
                self._apply(node_id, self.nodes[node_id].tick(at))
            else:
                continue  # Superseded by a later wake-up.
            if self.spurious_ticks and self.rng.random() < self.spurious_ticks:
                other = self.rng.choice(list(self.nodes))
                self._apply(other, self.nodes[other].tick(at))
            for observe in self.observers:
                observe()
        self.now_ms = max(self.now_ms, end_ms)

    def attach(self, envelope: Envelope) -> object:
        """What travels with a message, fixed when it is sent: nothing here.

        Subclasses override it to model data the real node piggybacks on the
        election's messages; every copy of a duplicated message carries the same.
        """
        return None

    def deliver(self, node_id: str, message: Message, attachment: object) -> None:
        """Hand a message that arrived (with what :meth:`attach` gave it) to its node.

        Subclasses override it to act on the attachment before or after the
        election sees the message, and call this to run the election.
        """
        self._apply(node_id, self.nodes[node_id].receive(message, self.now_ms))

    def stepped(self, node_id: str) -> None:
        """Called after every step of a node, before the messages it produced are sent.

        Nothing here; a subclass models what the node does between handling
        an event and putting its messages on the wire.
        """

    def _apply(self, node_id: str, output: Output) -> None:
        self.stepped(node_id)
        for envelope in output.messages:
            self._send(envelope)
        at = max(output.wake_at_ms, self.now_ms)
        if self._wake_at.get(node_id) != at:
            self._wake_at[node_id] = at
            self._push(at, _WAKE, node_id, None)

    def _send(self, envelope: Envelope) -> None:
        faults = self.faults
        if faults.drop and self.rng.random() < faults.drop:
            return
        copies = 2 if faults.duplicate and self.rng.random() < faults.duplicate else 1
        attachment = self.attach(envelope)
        for _ in range(copies):
            delay = self.rng.randint(faults.min_delay_ms, faults.max_delay_ms)
            self._push(self.now_ms + delay, _DELIVER, envelope.to, envelope.message, attachment)

    def _push(
        self, at: int, kind: int, node_id: str, message: Message | None, attachment: object = None
    ) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (at, self._seq, kind, node_id, message, attachment))
