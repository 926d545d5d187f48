"""The node's side of the cluster: bully election, heartbeats, and the member table.

This is the I/O shell around two pure parts: :class:`ringkv.core.election.ElectionNode`
decides who leads, and :mod:`ringkv.core.membership` decides how the member table
changes. Around the manager, each concern has a class of its own:

* finding the cluster (seeds, joining, joining again after a removal):
  :class:`~ringkv.server.cluster.discovery.Discovery`;
* the election's messages as ``Heartbeat`` and ``RequestVote`` calls:
  :class:`~ringkv.server.cluster.election_calls.ElectionCalls`, and the
  Cluster service (``ringkv.server.services.cluster_service``) for the calls
  this node answers;
* the leader's failure detection and bookkeeping:
  :class:`~ringkv.server.cluster.leader_duties.LeaderDuties`;
* the saved vote and table:
  :class:`~ringkv.server.cluster.membership_file.MembershipFile`.

The manager itself adopts tables, steps the election (saving a changed vote
before anything it decided leaves the node), and keeps the leader lease.

How a node starts:

* with a saved table (``cluster.json`` in the data dir) that names it, it
  resumes the table, its election term and its vote; for an election timeout
  it follows no new leader (it may have acknowledged one just before it
  stopped: ``ElectionNode.start``);
* with a saved table that removed it (it was removed while away), it asks the
  ``-peers`` to admit it again, keeping its vote;
* otherwise it finds the cluster through its seeds (``Discovery``), or,
  with none, bootstraps.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import random
import time
from collections.abc import Callable, Coroutine, Mapping, Sized
from typing import Any, Protocol

from ringkv.core.clock_offset import OffsetSample
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
    Output,
    Role,
)
from ringkv.core.errors import PreconditionFailed, RingkvError, StorageFull
from ringkv.core.membership import (
    Liveness,
    Membership,
    MemberStatus,
    RingMaker,
)
from ringkv.server.cluster.cluster_view import ClusterView
from ringkv.server.cluster.discovery import Discovery
from ringkv.server.cluster.election_calls import (
    ElectionCalls,
    HeartbeatAnswer,
    ReceivedHeartbeat,
    VoteAnswer,
)
from ringkv.server.cluster.leader_duties import LeaderDuties
from ringkv.server.cluster.leader_lease import LeaderLease, arrived_in_time
from ringkv.server.cluster.membership_file import FILE_NAME as MEMBERSHIP_FILE
from ringkv.server.cluster.membership_file import MembershipFile, SavedState
from ringkv.server.cluster.seeds import Seeds
from ringkv.server.transport.auth import NodeSecurity
from ringkv.server.transport.peers import ChannelOpener
from ringkv.server.transport.wire import membership_to_wire

log = logging.getLogger("ringkv.membership")

_MAX_SLEEP_S = 0.1
"""The loop looks at timers and leader duties at least this often."""
_REPLIES = (HeartbeatAck, CoordinatorAck, Answer)
_HAND_OFF_TIMEOUT_S = 120.0
"""The longest a decommissioned node spends giving its records away before it stops."""


class RangeMover(Protocol):
    """What moves data when the table changes (``ringkv.server.data.rebalance``):
    the data path sits above the cluster layer, so it is known by this shape."""

    @property
    def synced_epoch(self) -> int:
        """The latest epoch whose gained ranges this node holds."""

    def adopted(self, membership: Membership) -> None:
        """React to a newly adopted member table."""

    async def hand_off(self) -> Sized:
        """Send the records this node no longer replicates to their replicas."""


def monotonic_ms() -> int:
    return time.monotonic_ns() // 1_000_000


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class MembershipManager:
    """Runs the election and the member table of one node."""

    def __init__(
        self,
        view: ClusterView,
        *,
        address: str,
        seeds: Mapping[str, str],
        saved: MembershipFile,
        election: ElectionConfig,
        remove_dead_after_ms: int,
        rings: RingMaker,
        on_removed: Callable[[], None],
        lease: LeaderLease,
        joins_existing: bool = False,
        now_ms: Callable[[], int] = monotonic_ms,
        wall_ms: Callable[[], int] = wall_clock_ms,
        clock_of: Callable[[str], OffsetSample | None] = lambda _: None,
        rng: random.Random | None = None,
        open_channel: ChannelOpener | None = None,
    ) -> None:
        self._view = view
        self._address = address
        self._file = saved
        self._config = election
        self._on_removed = on_removed
        self._now_ms = now_ms
        self._wall_ms = wall_ms
        self._clock_of = clock_of
        self._rng = rng or random.Random()
        self._election: ElectionNode | None = None
        self._saved_vote: tuple[int, str | None] = (0, None)
        self._discovery = Discovery(
            # Dials a seed with the node's credentials (the same as its peers' channels).
            Seeds(view.node_id, address, seeds, open_channel or NodeSecurity().open_channel),
            self,
            node_id=view.node_id,
            address=address,
            window_ms=2 * election.heartbeat_interval_ms,
            ask_timeout_s=election.election_timeout_ms / 1000,
            joins_existing=joins_existing,
            now_ms=now_ms,
        )
        self._calls = ElectionCalls(
            view.node_id,
            address,
            self,
            timeout_s=election.election_timeout_ms / 1000,
            table=lambda: membership_to_wire(self.membership, self._view.liveness),
            wall_ms=wall_ms,
        )
        self._duties = LeaderDuties(
            view.node_id,
            heartbeat_interval_ms=election.heartbeat_interval_ms,
            election_timeout_ms=election.election_timeout_ms,
            remove_dead_after_ms=remove_dead_after_ms,
            rings=rings,
            replication_factor=view.replication_factor,
        )
        self._duties.adopted_table(view.membership, now_ms())
        self._lease = lease
        self._leaving = False
        self.rebalancer: RangeMover | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._main: asyncio.Task[None] | None = None

    @property
    def node_id(self) -> str:
        return self._view.node_id

    @property
    def membership(self) -> Membership:
        return self._view.membership

    @property
    def synced_epoch(self) -> int:
        return 0 if self.rebalancer is None else self.rebalancer.synced_epoch

    @property
    def member(self) -> bool:
        """Whether this node runs its election: it was admitted, by any path."""
        return self._election is not None

    def start(self) -> None:
        """Resume or bootstrap at once when no peer needs asking, then run in the background.

        A lone new node leads, and one with a saved table runs its election,
        before the node reports itself serving (one that resumed a vote
        follows no new leader for an election timeout: ``ElectionNode.start``).
        """
        self._update_lease()
        saved = self._file.load()
        if saved is not None and saved.decommissioned:
            # A restart policy must not bring a removed node back into the ring.
            raise PreconditionFailed(
                "this node was decommissioned; to let it join again, delete "
                f"{MEMBERSHIP_FILE} from its data dir",
                reason="DECOMMISSIONED",
            )
        if saved is not None:
            # Whatever the table says, the vote must not go back to term 0.
            self._saved_vote = (saved.term, saved.term_leader)
        if saved is not None and self.node_id in saved.membership.addresses:
            log.info("resuming", extra={"epoch": saved.membership.epoch, "term": saved.term})
            self._adopt(saved.membership)
            self._start_election(saved.term, saved.term_leader)
        elif saved is not None:
            # Removed while it was away, and saved so: join again, from a
            # table no seed's older one can replace.
            self._adopt(saved.membership)
        elif not self._discovery.seeds:
            self.bootstrap()
        else:
            # Beside the timers, not before them: a node admitted meanwhile by
            # another path (a member's heartbeat, then a rejoin) must run its
            # election while a seed still refuses it (cluster sim seed 10043:
            # the highest id, stuck asking a seed that had no leader to relay
            # to, never timed out its own claim, and no one led again).
            self._discovery.find()
        self._main = asyncio.get_running_loop().create_task(self._run(), name="membership")

    async def _run(self) -> None:
        while True:
            try:
                self._step(self._tick())
            except Exception:  # one bad step must not end membership for good
                log.exception("membership step failed")
            await asyncio.sleep(_MAX_SLEEP_S)

    def bootstrap(self) -> None:
        """Start a new cluster of this node and its seeds."""
        table = Membership.bootstrap(
            {self.node_id: self._address, **self._discovery.seeds.addresses}
        )
        log.info("bootstrapping", extra={"members": ",".join(table.node_ids)})
        self._adopt(table)
        self._start_election(0, None)

    def admitted(self, table: Membership, *, campaign: bool) -> bool:
        """Take the table a seed admitted this node with (or named it in), and
        start its election, unless another path got there first: the table
        only if it is newer than the one a heartbeat brought meanwhile, the
        election only if none runs yet (a second would forget its vote).

        False if this node is not a member after all: the table is older
        than one that removed it.
        """
        if table.newer_than(self.membership):
            self._adopt(table)
        if self.node_id not in self.membership.addresses:
            return False
        if self._election is None:
            self._start_election(*self._saved_vote, campaign=campaign)
        return True

    def _start_election(self, term: int, term_leader: str | None, *, campaign: bool = True) -> None:
        self._discovery.stop_seeking()
        self._election = ElectionNode(
            self.node_id,
            self.membership.node_ids,
            self._config,
            self._rng,
            term=term,
            term_leader=term_leader,
        )
        self._saved_vote = (term, term_leader)
        self._step(self._election.start(self._now_ms(), campaign=campaign))

    # -- the member table ------------------------------------------------------

    def offer(self, table: Membership | None) -> None:
        """Adopt a member table if it is newer than the one in effect.

        A node still being admitted that finds itself in it (a member's
        heartbeat can bring it before a seed answers the join) starts to
        follow: it is a member, whose seeds may never answer again (cluster
        sim seed 658: a joiner whose only seed left was made a member, and
        never took part).
        """
        if table is not None and table.newer_than(self.membership):
            self._adopt(table)
            if self._election is None and self.node_id in table.addresses:
                self._start_election(*self._saved_vote, campaign=False)

    def _adopt(self, table: Membership) -> None:
        before = self.membership.get(self.node_id)
        self._leaving = before is not None and before.status is MemberStatus.LEAVING
        # A lease vouches for the table its leader's heartbeats carried. One
        # that came another way (a claim, a vote's answer, a member's reply)
        # was vouched for by no one: cluster sim seed 42543, a follower
        # adopted a deposed leader's table from its claim, kept the lease its
        # real leader had given on the older one, and so held a lease on a
        # table whose ring shared nothing with the one its leader then made.
        # The leader's heartbeat with the new table renews it at once.
        self._lease.lapse()
        self._view.adopt(table)
        self._duties.adopted_table(table, self._now_ms())
        log.info(
            "member table adopted",
            extra={
                "epoch": table.epoch,
                "members": ",".join(f"{m.node_id}:{m.status}" for m in table.members),
            },
        )
        if self.node_id not in table.addresses:
            if before is not None:  # once: a later table without it changes nothing
                self._removed(was_leaving=self._leaving or self.node_id in table.removed)
            # No longer a member, it coordinates nothing (cluster sim seed 204:
            # a leader that settled its own departure kept its lease).
            self._update_lease()
            return
        if self._election is not None:
            self._election.set_members(table.node_ids)
        try:
            self._save()
        except StorageFull as error:
            # The table is in effect all the same: a node that did not pull the
            # ranges it gains would hold the change up for good (the leader
            # waits for every live gainer). Restarted, the node resumes an older
            # table and learns this one again from the leader.
            log.warning("member table not saved", extra={"epoch": table.epoch, "error": str(error)})
        if self.rebalancer is not None:
            self.rebalancer.adopted(table)
        self._update_lease()

    def _update_lease(self) -> None:
        table = self.membership
        self._lease.exempt(table.epoch == 0 or table.node_ids == (self.node_id,))
        election = self._election
        self._lease.lead(election.lease_expiry_ms if election and self.leads else 0)

    def catch_up(self) -> None:
        """Act on election timers due by now, before answering from this node's state
        (a node resumed from a pause would otherwise say it leads a moment past
        its lease)."""
        self._step(self._tick())

    def _removed(self, *, was_leaving: bool) -> None:
        vote = self._vote()
        election = self._election
        # A leader that made the table removing itself is the only node that
        # has it, and heartbeats no more: it tells the others before it stops
        # (cluster sim seed 40206: a joiner elected leader, asked to remove
        # itself, stopped at once, and the others kept the table naming it).
        made_it = (
            election is not None
            and election.role is Role.LEADER
            and election.term == self.membership.term
        )
        self._election = None
        self._view.leader_id = ""  # no longer a member: it follows no one, nor leads
        # Saved, so a restart does not resume a table that still names it
        # (cluster sim seed 187: a joiner dropped before it came up, then
        # restarted, went back to the table that had admitted it).
        try:
            self._file.save(SavedState(self.membership, *vote, decommissioned=was_leaving))
        except OSError as error:
            # Restarted, it resumes the older table and hears of this one again.
            log.warning("removal not saved", extra={"error": str(error)})
        if was_leaving:
            log.info("decommissioned: this node left the cluster")
            self._spawn(self._leave(announce_term=vote[0] if made_it else None))
            return
        # Removed while it was down: come back as a new member.
        log.info("removed while away; joining again")
        self._discovery.rejoin()

    async def _leave(self, *, announce_term: int | None) -> None:
        """Give every record to its replicas (writes that reached only this node
        included), and with ``announce_term`` the table that removed it to the
        members; then stop."""
        announced = () if announce_term is None else (self._announce(announce_term),)
        try:
            await asyncio.gather(self._hand_off(), *announced)
        finally:
            self._on_removed()

    async def _hand_off(self) -> None:
        try:
            if self.rebalancer is not None:
                sent = await asyncio.wait_for(self.rebalancer.hand_off(), _HAND_OFF_TIMEOUT_S)
                log.info("records handed off", extra={"records": len(sent)})
        except (TimeoutError, RingkvError) as error:
            log.warning("hand-off incomplete", extra={"error": str(error)})

    async def _announce(self, term: int) -> None:
        """Heartbeat the members with this node's table, as the leader of
        ``term``, until each has answered with it, for two election timeouts at
        most: by then they have elected another leader, whose table is newer
        or who will drop this node as a dead joiner."""
        table = self.membership
        deadline_ms = self._now_ms() + 2 * self._config.election_timeout_ms
        while not self._duties.all_adopted(table) and self._now_ms() < deadline_ms:
            heartbeat = Heartbeat(self.node_id, term, self._now_ms())
            for node_id in table.node_ids:
                self._send(Envelope(node_id, heartbeat))
            await asyncio.sleep(self._config.heartbeat_interval_ms / 1000)

    def _vote(self) -> tuple[int, str | None]:
        # Without an election running (resuming, rejoining), the vote is the
        # last one saved: saving (0, None) instead would forget the term.
        return self._saved_vote if self._election is None else self._election.vote

    def _save(self) -> None:
        vote = self._vote()
        try:
            self._file.save(SavedState(self.membership, *vote))
        except OSError as error:
            if error.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            # A full disk: nothing that needs this state may act on it.
            raise StorageFull(
                f"cannot save the member table and vote: {error.strerror or error}"
            ) from error
        self._saved_vote = vote

    # -- stepping the election ---------------------------------------------------

    def _tick(self) -> Output | None:
        if self._election is None:
            return None
        return self._election.tick(self._now_ms())

    def _step(self, output: Output | None) -> bool:
        """Persist a changed vote, then send what the election wants sent.

        False when the vote could not be saved (a full disk): then nothing is
        sent, as if the messages were lost, and the next tick tries again.
        """
        election = self._election
        if election is None or output is None:
            return True
        if election.vote != self._saved_vote:
            try:
                self._save()  # Before any reply or claim leaves this node.
            except StorageFull as error:
                log.warning("vote not saved; not acting on it", extra={"error": error.message})
                # The leader it knew may be deposed, and it cannot follow a new
                # one (nor lead) on a term the disk does not back: it names no
                # leader until it can (matrix seed 28: a node on a full disk
                # answered "I lead term 51" while another led term 63).
                self._view.leader_id = ""
                self._update_lease()
                return False
        self._view.leader_id = election.leader or ""
        self._view.term = election.term
        self._update_lease()
        for envelope in output.messages:
            if not isinstance(envelope.message, _REPLIES):
                self._send(envelope)
        self._leader_duties()
        return True

    def _send(self, envelope: Envelope) -> None:
        peer = self._view.peers.get(envelope.to)
        if peer is not None:
            self._spawn(self._calls.send(peer, envelope))

    def _handle(self, message: Heartbeat | Coordinator | Election) -> Envelope | None:
        """Feed a received message to the election; the reply to its sender, if any."""
        election = self._election
        if election is None:
            return None
        output = election.receive(message, self._now_ms())
        reply = next(
            (
                e
                for e in output.messages
                if isinstance(e.message, _REPLIES) and e.to == _sender(message)
            ),
            None,
        )
        if not self._step(output):
            # Answer nothing rather than something the disk does not back:
            # the sender treats the failed call as a lost message.
            raise StorageFull("this node cannot save its vote; it answers no election message")
        return reply

    # -- answers to this node's messages (ElectionCalls) ---------------------------

    def heard(self, node_id: str) -> None:
        self._duties.heard(node_id, self._now_ms())

    def answered(self, node_id: str, *, synced: int, adopted: int) -> None:
        self._duties.answered(node_id, synced=synced, adopted=adopted, now_ms=self._now_ms())

    def receive(self, message: Answer | HeartbeatAck | CoordinatorAck) -> None:
        if self._election is not None:
            self._step(self._election.receive(message, self._now_ms()))

    # -- messages to this node (the Cluster service) -------------------------------

    def heartbeat(self, heartbeat: ReceivedHeartbeat) -> HeartbeatAnswer:
        sent = heartbeat.table
        if heartbeat.sender in self.membership.addresses:
            self.offer(sent)  # Tables come from members only, never from strangers.
        elif sent is not None and sent.newer_than(self.membership):
            # A node this one has not heard of claims a newer table: perhaps
            # just admitted, its claim ahead of the leader's heartbeat here.
            # Ask the members, never the stranger.
            self._discovery.ask_members(self._view.peers.values())
        reply = self._handle(heartbeat.message)
        ack = reply.message if reply is not None else None
        accepted = isinstance(ack, HeartbeatAck | CoordinatorAck) and ack.accepted
        term = ack.term if isinstance(ack, HeartbeatAck | CoordinatorAck) else self._view.term
        if accepted:
            self._view.liveness = heartbeat.liveness
            # A lease vouches for the leader's table. A node holding another
            # (a newer one a deposed leader made, which this leader has not
            # seen: cluster sim seed 24927) answers with it below, and renews
            # once the leader has adopted it and sent it back.
            same_table = sent is not None and sent.fence == self.membership.fence
            if not heartbeat.claim and same_table:
                self._renew_lease(heartbeat.sender, heartbeat.sent_wall_ms)
        mine = self.membership
        return HeartbeatAnswer(
            node_id=self.node_id,
            term=term,
            accepted=accepted,
            synced_epoch=self.synced_epoch,
            epoch=mine.epoch,
            table=mine if sent is None or mine.newer_than(sent) else None,
            liveness=self._view.liveness,
        )

    def _renew_lease(self, leader: str, sent_wall_ms: int) -> None:
        """The leader's table, offered with its heartbeat, is in effect here now:
        renew the lease, unless the heartbeat spent its deadline on the way."""
        deadline_ms = self._config.election_timeout_ms
        sender_clock = self._clock_of(leader)
        if arrived_in_time(sent_wall_ms, self._wall_ms(), deadline_ms, sender_clock):
            self._lease.renew()
            return
        log.warning(
            "a heartbeat arrived past its deadline; it renews no lease",
            extra={"leader": leader, "sent_wall_ms": sent_wall_ms, "deadline_ms": deadline_ms},
        )

    def request_vote(self, candidate: str, term: int) -> VoteAnswer:
        reply = self._handle(Election(candidate, term))
        answered = reply is not None and isinstance(reply.message, Answer)
        member = candidate in self.membership.addresses
        # A refusal stands for the bully's Answer ("I am alive and will take
        # over"): a node that runs no election yet (still being admitted)
        # must not give one, or the candidate waits for it to take over, for
        # good (cluster sim seed 10904: a joiner of the highest id, admitted
        # while its answer was lost, kept every member waiting on it).
        return VoteAnswer(
            node_id=self.node_id,
            term=self._view.term,
            granted=(member or not self.member) and not answered,
            table=None if member else self.membership,
            liveness=self._view.liveness,
        )

    def admit(self, node_id: str, address: str) -> Membership | None:
        """The table with ``node_id`` joining (made now if need be); None if
        this node does not lead, and the request must go to the leader."""
        if not self.leads:
            return None
        table = self.membership.with_joining(node_id, address, self._view.term)
        if table is not self.membership:
            log.info("admitting", extra={"joiner": node_id, "address": address})
            self._adopt(table)
        return table

    def decommission(self, node_id: str) -> Membership | None:
        """The table with ``node_id`` leaving (made now if need be); None if
        this node does not lead, and the request must go to the leader."""
        if not self.leads:
            return None
        table = self.membership.with_leaving(node_id, self._view.term)
        if table is not self.membership:
            log.info("decommissioning", extra={"leaver": node_id})
            self._adopt(table)
        return table

    @property
    def leads(self) -> bool:
        """Whether this node leads, and no leader of a later term changed the table.

        Its election's lease must be running now, not only at its last tick: a
        leader whose process was paused past its lease mints no table (another
        may have been elected meanwhile) before its election notices.
        """
        return (
            self._election is not None
            and self._election.role is Role.LEADER
            and self._election.lease_expiry_ms > self._now_ms()
            and self._election.vote == self._saved_vote  # a term the disk does not back
            and not self.membership.made_after(self._election.term)
        )

    # -- the leader's duties ---------------------------------------------------

    def _leader_duties(self) -> None:
        now = self._now_ms()
        step = self._duties.step(
            self.leads,
            self.membership,
            term=self._view.term,
            synced_epoch=self.synced_epoch,
            published=self._view.liveness,
            now_ms=now,
        )
        if step is None:
            return
        self._view.liveness, change = step
        if change is not None:
            self._adopt(change)

    def _spawn(self, work: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        if not task.cancelled() and task.exception() is not None:
            error = task.exception()
            if not isinstance(error, RingkvError):
                log.error("membership task failed", exc_info=error)

    def liveness_of(self, node_id: str) -> Liveness:
        return self._view.liveness.get(node_id, Liveness.ALIVE)

    async def close(self) -> None:
        # The timers first: nothing may be sent or saved once shutdown began.
        tasks = [t for t in (self._main, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await self._discovery.close()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def _sender(message: Heartbeat | Coordinator | Election) -> str:
    return message.candidate if isinstance(message, Election) else message.leader
