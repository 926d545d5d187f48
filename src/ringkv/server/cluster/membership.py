"""The node's side of the cluster: bully election, heartbeats, and the member table.

This is the I/O shell around two pure parts: :class:`ringkv.core.election.ElectionNode`
decides who leads, and :mod:`ringkv.core.membership` decides how the member table
changes. The seeds' RPCs (tables, joins) are :class:`~ringkv.server.cluster.seeds.Seeds`;
the leader's failure detection and bookkeeping are
:class:`~ringkv.server.cluster.leader_duties.LeaderDuties`; the saved vote and
table are :class:`~ringkv.server.cluster.membership_file.MembershipFile`.

Election messages travel as the seed's ``Heartbeat`` and ``RequestVote``
calls (see kv.proto); every heartbeat carries the sender's member table and every
reply the responder's synced epoch, so the leader learns who has pulled its
ranges and followers learn each new epoch within a heartbeat.

How a node finds its cluster on start:

* with a saved table (``cluster.json`` in the data dir) that names it, it
  resumes the table, its election term and its vote; for an election timeout
  it follows no new leader (it may have acknowledged one just before it
  stopped: ``ElectionNode.start``);
* with a saved table that removed it (it was removed while away), it asks the
  ``-peers`` to admit it again, keeping its vote;
* otherwise it asks the ``-peers`` for their table; if one includes it, it adopts
  it; if one does not, it asks to join and adopts the table it is admitted with;
* if no peer answers within the discovery window, it bootstraps the table from
  its own flags (epoch 1), unless it was told ``--initial-cluster-state
  existing``: every node of a new cluster names the same members, so they all
  build the same table.

Finding the cluster runs beside the election's timers, and a member's
heartbeat can admit the node first: then it starts to follow at once and
stops asking.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import random
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sized
from typing import Any, Protocol, TypeVar

import grpc

from ringkv.api import kv_pb2
from ringkv.api.status import error_info
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
from ringkv.core.errors import PreconditionFailed, RingkvError, StorageFull, Unavailable
from ringkv.core.membership import (
    Liveness,
    Membership,
    MemberStatus,
    RingMaker,
)
from ringkv.server.cluster.cluster_view import ClusterView
from ringkv.server.cluster.leader_duties import LeaderDuties
from ringkv.server.cluster.leader_lease import LeaderLease, arrived_in_time
from ringkv.server.cluster.membership_file import FILE_NAME as MEMBERSHIP_FILE
from ringkv.server.cluster.membership_file import MembershipFile, SavedState
from ringkv.server.cluster.seeds import Seeds
from ringkv.server.transport.auth import NodeSecurity
from ringkv.server.transport.peers import ChannelOpener, Peer
from ringkv.server.transport.rpc import RelayedError
from ringkv.server.transport.wire import (
    liveness_from_wire,
    membership_from_wire,
    membership_to_wire,
)

log = logging.getLogger("ringkv.membership")

_MAX_SLEEP_S = 0.1
"""The loop looks at timers and leader duties at least this often."""
_REPLIES = (HeartbeatAck, CoordinatorAck, Answer)
_REJOIN_RETRY_S = 1.0
"""How long a removed node waits before it asks to be admitted again."""
_HAND_OFF_TIMEOUT_S = 120.0
"""The longest a decommissioned node spends giving its records away before it stops."""
T = TypeVar("T")


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
        # Dials a seed with the node's credentials (the same as its peers' channels).
        self._seeds = Seeds(
            view.node_id, address, seeds, open_channel or NodeSecurity().open_channel
        )
        self._file = saved
        self._config = election
        self._on_removed = on_removed
        self._now_ms = now_ms
        self._wall_ms = wall_ms
        self._clock_of = clock_of
        self._rng = rng or random.Random()
        self._election: ElectionNode | None = None
        self._saved_vote: tuple[int, str | None] = (0, None)
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
        self._joins_existing = joins_existing
        self._leaving = False
        self.rebalancer: RangeMover | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._main: asyncio.Task[None] | None = None
        self._refreshing: asyncio.Task[None] | None = None
        self._seeking: set[asyncio.Task[Any]] = set()
        """Finding the cluster or joining it again, until an election starts."""

    @property
    def node_id(self) -> str:
        return self._view.node_id

    @property
    def membership(self) -> Membership:
        return self._view.membership

    @property
    def synced_epoch(self) -> int:
        return 0 if self.rebalancer is None else self.rebalancer.synced_epoch

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
        established = False
        if saved is not None:
            # Whatever the table says, the vote must not go back to term 0.
            self._saved_vote = (saved.term, saved.term_leader)
        if saved is not None and self.node_id in saved.membership.addresses:
            log.info("resuming", extra={"epoch": saved.membership.epoch, "term": saved.term})
            self._adopt(saved.membership)
            self._start_election(saved.term, saved.term_leader)
            established = True
        elif saved is not None:
            # Removed while it was away, and saved so: join again, from a
            # table no seed's older one can replace.
            self._adopt(saved.membership)
            established = True
        elif not self._seeds:
            self._bootstrap()
            established = True
        self._main = asyncio.get_running_loop().create_task(
            self._run(find_cluster=not established, saved=saved), name="membership"
        )

    # -- finding the cluster ---------------------------------------------------

    async def _run(self, *, find_cluster: bool, saved: SavedState | None) -> None:
        if find_cluster:
            # Beside the timers, not before them: a node admitted meanwhile by
            # another path (a member's heartbeat, then a rejoin) must run its
            # election while a seed still refuses it (cluster sim seed 10043:
            # the highest id, stuck asking a seed that had no leader to relay
            # to, never timed out its own claim, and no one led again).
            self._spawn(self._find_cluster(saved), self._seeking)
        while True:
            try:
                self._step(self._tick())
            except Exception:  # one bad step must not end membership for good
                log.exception("membership step failed")
            await asyncio.sleep(_MAX_SLEEP_S)

    async def _find_cluster(self, saved: SavedState | None) -> None:
        """Adopt the table a seed has, joining it first if this node is not in it."""
        deadline = self._now_ms() + 2 * self._config.heartbeat_interval_ms
        waiting_logged = False
        while self._election is None:
            try:
                table = await self._seeds.newest_table()
                if table is not None:
                    joining = table.addresses.get(self.node_id) != self._address
                    if joining:
                        table = await self._seeds.join()
                    if self._admitted(table, *self._saved_vote, campaign=not joining):
                        return
            except Exception:  # a node that stops seeking is never admitted
                log.exception("finding the cluster failed; trying again")
            if saved is None and self._now_ms() >= deadline:
                if not self._joins_existing:
                    self._bootstrap()
                    return
                if not waiting_logged:
                    log.info(
                        "no seed answers; waiting for one (--initial-cluster-state existing)",
                        extra={"seeds": ",".join(self._seeds.addresses)},
                    )
                    waiting_logged = True
            await asyncio.sleep(0.2)

    def _bootstrap(self) -> None:
        table = Membership.bootstrap({self.node_id: self._address, **self._seeds.addresses})
        log.info("bootstrapping", extra={"members": ",".join(table.node_ids)})
        self._adopt(table)
        self._start_election(0, None)

    def _refresh_table(self) -> None:
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.get_running_loop().create_task(self._ask_members())

    async def _ask_members(self) -> None:
        """Adopt the newest table any member has."""

        async def table_of(peer: Peer) -> Membership | None:
            response = await peer.cluster.GetClusterState(
                kv_pb2.GetClusterStateRequest(), timeout=self._config.election_timeout_ms / 1000
            )
            return membership_from_wire(response.table)

        answers = await asyncio.gather(
            *(table_of(peer) for peer in list(self._view.peers.values())),
            return_exceptions=True,
        )
        for answer in answers:
            if isinstance(answer, Membership):
                self.offer(answer)

    def _start_election(self, term: int, term_leader: str | None, *, campaign: bool = True) -> None:
        # Admitted: stop asking seeds (one may never answer; a heartbeat's
        # table can admit this node first).
        for task in self._seeking:
            if task is not asyncio.current_task():
                task.cancel()
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
                self._removed(was_leaving=self._leaving)
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
            self._spawn(self._leave())
            return
        # Removed while it was down: come back as a new member.
        log.info("removed while away; joining again")
        self._spawn(self._rejoin(), self._seeking)

    async def _leave(self) -> None:
        """Give every record to its replicas (writes that reached only this node
        included), then stop."""
        try:
            if self.rebalancer is not None:
                sent = await asyncio.wait_for(self.rebalancer.hand_off(), _HAND_OFF_TIMEOUT_S)
                log.info("records handed off", extra={"records": len(sent)})
        except (TimeoutError, RingkvError) as error:
            log.warning("hand-off incomplete", extra={"error": str(error)})
        finally:
            self._on_removed()

    async def _rejoin(self) -> None:
        while True:
            try:
                table = await self._seeds.join()
                if self._admitted(table, *self._saved_vote, campaign=False):
                    return
                # An answer older than the table that removed this node: the
                # leader had not adopted the removal yet (cluster sim seed 18:
                # a joiner removed by an operator got its first admission back).
            except Exception:  # a node that stops asking is never admitted
                log.exception("joining again failed; trying again")
            await asyncio.sleep(_REJOIN_RETRY_S)

    def _admitted(
        self, table: Membership, term: int, term_leader: str | None, *, campaign: bool
    ) -> bool:
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
            self._start_election(term, term_leader, campaign=campaign)
        return True

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

    # -- election plumbing -------------------------------------------------------

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
                self._spawn(self._send(envelope))
        self._leader_duties()
        return True

    async def _send(self, envelope: Envelope) -> None:
        peer = self._view.peers.get(envelope.to)
        if peer is None:
            return
        message = envelope.message
        # Late replies are harmless (the election ignores stale ones), while a
        # deadline as short as the answer timeout loses every reply on a
        # loaded node and leaves the cluster without a leader.
        timeout = self._config.election_timeout_ms / 1000
        try:
            if isinstance(message, Election):
                vote = await peer.cluster.RequestVote(
                    kv_pb2.RequestVoteRequest(node_id=self.node_id, term=message.term),
                    timeout=timeout,
                )
                self._duties.heard(peer.node_id, self._now_ms())
                self.offer(membership_from_wire(vote.members))
                if not vote.vote_granted:
                    self._receive(Answer(vote.node_id or peer.node_id, vote.term))
                return
            if not isinstance(message, Heartbeat | Coordinator):
                return
            response = await peer.cluster.Heartbeat(
                kv_pb2.HeartbeatRequest(
                    node_id=self.node_id,
                    address=self._address,
                    term=message.term,
                    is_leader=True,
                    claim=isinstance(message, Coordinator),
                    members=membership_to_wire(self.membership, self._view.liveness),
                    sent_wall_ms=self._wall_ms(),
                ),
                timeout=timeout,
            )
        except grpc.aio.AioRpcError:
            return
        sender = response.node_id or peer.node_id
        self._duties.answered(
            sender, synced=response.synced_epoch, adopted=response.epoch, now_ms=self._now_ms()
        )
        self.offer(membership_from_wire(response.members))
        reply = HeartbeatAck if isinstance(message, Heartbeat) else CoordinatorAck
        self._receive(reply(sender, response.term, response.accepted, message.sent_ms))

    def _receive(self, message: Answer | HeartbeatAck | CoordinatorAck) -> None:
        if self._election is not None:
            self._step(self._election.receive(message, self._now_ms()))

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

    # -- handlers of kv.Cluster calls ------------------------------------------

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

    def on_heartbeat(self, request: kv_pb2.HeartbeatRequest) -> kv_pb2.HeartbeatResponse:
        sent = membership_from_wire(request.members)
        if request.node_id in self.membership.addresses:
            self.offer(sent)  # Tables come from members only, never from strangers.
        elif sent is not None and sent.newer_than(self.membership):
            # A node this one has not heard of claims a newer table: perhaps
            # just admitted, its claim ahead of the leader's heartbeat here.
            # Ask the members, never the stranger.
            self._refresh_table()
        message = (Coordinator if request.claim else Heartbeat)(request.node_id, request.term)
        reply = self._handle(message)
        accepted = reply is not None and isinstance(reply.message, HeartbeatAck | CoordinatorAck)
        if accepted and reply is not None:
            ack = reply.message
            assert isinstance(ack, HeartbeatAck | CoordinatorAck)
            accepted = ack.accepted
            term = ack.term
        else:
            term = self._view.term
        if accepted:
            self._view.liveness = liveness_from_wire(request.members)
            # A lease vouches for the leader's table. A node holding another
            # (a newer one a deposed leader made, which this leader has not
            # seen: cluster sim seed 24927) answers with it below, and renews
            # once the leader has adopted it and sent it back.
            same_table = sent is not None and sent.fence == self.membership.fence
            if not request.claim and same_table:
                self._renew_lease(request.node_id, request.sent_wall_ms)
        mine = self.membership
        return kv_pb2.HeartbeatResponse(
            term=term,
            accepted=accepted,
            node_id=self.node_id,
            synced_epoch=self.synced_epoch,
            epoch=mine.epoch,
            members=membership_to_wire(mine, self._view.liveness)
            if sent is None or mine.newer_than(sent)
            else None,
        )

    def on_request_vote(self, request: kv_pb2.RequestVoteRequest) -> kv_pb2.RequestVoteResponse:
        reply = self._handle(Election(request.node_id, request.term))
        answered = reply is not None and isinstance(reply.message, Answer)
        member = request.node_id in self.membership.addresses
        # A refusal stands for the bully's Answer ("I am alive and will take
        # over"): a node that runs no election yet (still being admitted)
        # must not give one, or the candidate waits for it to take over, for
        # good (cluster sim seed 10904: a joiner of the highest id, admitted
        # while its answer was lost, kept every member waiting on it).
        running = self._election is not None
        return kv_pb2.RequestVoteResponse(
            term=self._view.term,
            vote_granted=(member or not running) and not answered,
            node_id=self.node_id,
            members=None if member else membership_to_wire(self.membership, self._view.liveness),
        )

    async def on_join(self, request: kv_pb2.JoinRequest) -> kv_pb2.JoinResponse:
        if not self.leads:
            leader = await self._leader_peer()
            return await _relayed(leader.cluster.Join(request, timeout=5.0))
        table = self.membership.with_joining(request.node_id, request.address, self._view.term)
        if table is not self.membership:
            log.info("admitting", extra={"joiner": request.node_id, "address": request.address})
            self._adopt(table)
        return kv_pb2.JoinResponse(members=membership_to_wire(table, self._view.liveness))

    async def on_remove(self, request: kv_pb2.RemoveNodeRequest) -> kv_pb2.RemoveNodeResponse:
        if not self.leads:
            leader = await self._leader_peer()
            return await _relayed(leader.cluster.RemoveNode(request, timeout=5.0))
        table = self.membership.with_leaving(request.node_id, self._view.term)
        if table is not self.membership:
            log.info("decommissioning", extra={"leaver": request.node_id})
            self._adopt(table)
        return kv_pb2.RemoveNodeResponse(members=membership_to_wire(table, self._view.liveness))

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

    async def _leader_peer(self) -> Peer:
        leader = self._view.peers.get(self._view.leader_id)
        if leader is None:
            raise Unavailable("no leader is elected yet; retry", reason="NO_LEADER")
        return leader

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

    def _spawn(
        self, work: Coroutine[Any, Any, Any], tasks: set[asyncio.Task[Any]] | None = None
    ) -> None:
        """Run ``work`` in the background, kept in ``tasks`` (the node's by default)."""
        into = self._tasks if tasks is None else tasks
        task = asyncio.get_running_loop().create_task(work)
        into.add(task)
        task.add_done_callback(into.discard)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        if not task.cancelled() and task.exception() is not None:
            error = task.exception()
            if not isinstance(error, RingkvError):
                log.error("membership task failed", exc_info=error)

    def liveness_of(self, node_id: str) -> Liveness:
        return self._view.liveness.get(node_id, Liveness.ALIVE)

    async def close(self) -> None:
        tasks = [
            t for t in (self._main, self._refreshing, *self._tasks, *self._seeking) if t is not None
        ]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


async def _relayed(call: Awaitable[T]) -> T:
    """The leader's answer to a request passed on to it; its error, passed back unchanged.

    A leader that cannot be reached is UNAVAILABLE (retry, perhaps elsewhere),
    not an internal error of this node.
    """
    try:
        return await call
    except grpc.aio.AioRpcError as error:
        if error_info(error.trailing_metadata()) is None:
            raise Unavailable(
                f"the leader cannot be reached: {error.code().name}", reason="NO_LEADER"
            ) from None
        raise RelayedError(error) from None


def _sender(message: Heartbeat | Coordinator | Election) -> str:
    return message.candidate if isinstance(message, Election) else message.leader
