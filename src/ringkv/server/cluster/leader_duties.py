"""What the leader keeps track of to change the member table.

While a node leads it watches every member's heartbeat answers: the failure
detector's silence per member, the latest epoch whose ranges each member has
pulled, and the newest table each has adopted. Each step it publishes the
members' states and asks ``ringkv.core.membership.leader_decision`` whether
the table changes. No I/O: the membership manager feeds it answers and the
clock, and adopts what it decides.
"""

from __future__ import annotations

import logging

from ringkv.core.membership import (
    FailureDetector,
    Liveness,
    Membership,
    RingMaker,
    caught_up,
    gainers,
    leader_decision,
)

log = logging.getLogger("ringkv.membership")


class LeaderDuties:
    """The leader's view of its members, reset each time the node starts to lead."""

    def __init__(
        self,
        node_id: str,
        *,
        heartbeat_interval_ms: int,
        election_timeout_ms: int,
        remove_dead_after_ms: int,
        rings: RingMaker,
        replication_factor: int,
    ) -> None:
        self._node_id = node_id
        self._heartbeat_interval_ms = heartbeat_interval_ms
        self._election_timeout_ms = election_timeout_ms
        self._remove_dead_after_ms = remove_dead_after_ms
        self._rings = rings
        self._replication_factor = replication_factor
        self._detector = self._fresh_detector()
        self._synced: dict[str, int] = {}
        """The epoch whose gained ranges each member last said it holds."""
        self._adopted: dict[str, int] = {}
        """The epoch of the table each member had when it last answered."""
        self._table_since_ms = 0
        self._led_since_ms = 0
        self._members: frozenset[str] = frozenset()
        self._dropped_drained_at_ms = 0
        """Until when a node this one dropped from the table may still hold a
        lease from this node's heartbeats."""
        self.leading = False
        self._gainers_of: tuple[Membership, frozenset[str]] | None = None

    def _fresh_detector(self) -> FailureDetector:
        return FailureDetector(
            suspect_after_ms=2 * self._heartbeat_interval_ms,
            dead_after_ms=self._election_timeout_ms,
        )

    def heard(self, node_id: str, now_ms: int) -> None:
        """A member answered an election message."""
        self._detector.heard(node_id, now_ms)

    def answered(self, node_id: str, *, synced: int, adopted: int, now_ms: int) -> None:
        """A member answered a heartbeat: what it has pulled and adopted."""
        self._detector.heard(node_id, now_ms)
        self._synced[node_id] = synced
        self._adopted[node_id] = adopted

    def all_adopted(self, table: Membership) -> bool:
        """Whether every member of ``table`` answered a heartbeat with it (or a later one)."""
        return caught_up(table, self._adopted)

    def adopted_table(self, table: Membership, now_ms: int) -> None:
        """This node adopted ``table``: forget members no longer in it, and watch
        new ones from now (one never heard from would otherwise never go
        silent: a joiner that never came up would hold the change open for good)."""
        self._table_since_ms = now_ms
        members = frozenset(table.node_ids)
        if self._members - members:
            # A node dropped from the table gets no more heartbeats, so it
            # never answers with a newer table: no member's answer proves its
            # lease is over, only time (cluster sim seed 140: a removed node,
            # cut off, kept a lease on the table before its removal while a
            # leader two ring changes on settled a join). This node
            # heartbeats it no more from now: one timeout for a heartbeat on
            # its way to arrive, one for the lease it renews.
            self._dropped_drained_at_ms = now_ms + 2 * self._election_timeout_ms
        self._members = members if table.epoch else frozenset()
        self._detector.forget(set(self._synced) - set(table.node_ids))
        self._detector.watch(table.node_ids, now_ms)

    def step(
        self,
        leading: bool,
        table: Membership,
        *,
        term: int,
        synced_epoch: int,
        published: dict[str, Liveness],
        now_ms: int,
    ) -> tuple[dict[str, Liveness], Membership | None] | None:
        """One step: None unless this node leads; otherwise the members'
        states to publish and the table to change to (None: no change)."""
        if leading and not self.leading:
            # Count silence from now: this node did not watch the others before.
            self._detector = self._fresh_detector()
            self._detector.watch(table.node_ids, now_ms)
            self._synced.clear()
            self._adopted.clear()
            self._led_since_ms = now_ms
            log.info("leading", extra={"term": term, "epoch": table.epoch})
        self.leading = leading
        if not leading:
            return None
        members = table.node_ids
        self._detector.heard(self._node_id, now_ms)
        liveness = {node: self._detector.state(node, now_ms) for node in members}
        changed = {
            node: state.value
            for node, state in liveness.items()
            if published.get(node, Liveness.ALIVE) is not state
        }
        if changed:
            log.info("member states", extra=changed)
        self._synced[self._node_id] = synced_epoch
        self._adopted[self._node_id] = table.epoch
        change = leader_decision(
            table,
            term=term,
            gaining=self._gainers(table),
            synced=self._synced,
            liveness=liveness,
            dead_for_ms={node: self._detector.silent_for(node, now_ms) for node in members},
            remove_dead_after_ms=self._remove_dead_after_ms,
            adopted=self._adopted if self._answers_prove_leases(now_ms) else {},
            leases_expired=now_ms >= self.leases_drained_at_ms(),
        )
        return liveness, change

    def _answers_prove_leases(self, now_ms: int) -> bool:
        """Whether "every member answered with the change" proves that no lease
        on an older table still runs. Not while a node dropped from the
        table may hold one: it never answers. Nor for three election
        timeouts after this node began to lead: a leader before it may have
        heartbeated such a node up to then (cluster sim seed 10364: a joiner,
        elected just after it was admitted, settled its join while a node
        dropped one change before held a lease), the bound of
        :meth:`leases_drained_at_ms`.
        """
        since_led = self._led_since_ms + 3 * self._election_timeout_ms
        return now_ms >= max(self._dropped_drained_at_ms, since_led)

    def leases_drained_at_ms(self) -> int:
        """When no lease granted on a table older than the one in effect can still run.

        A follower's lease lasts an election timeout from a heartbeat, which
        arrives within its deadline (another election timeout) of being sent;
        every heartbeat sent since this table was adopted carried it. A leader
        deposed before this one was elected leads for at most an election
        timeout more (its lease counts from when its heartbeats were sent,
        ``ringkv.core.election``), and its heartbeats' leases run two timeouts
        past that.
        """
        timeout = self._election_timeout_ms
        return max(self._table_since_ms + 2 * timeout, self._led_since_ms + 3 * timeout)

    def _gainers(self, table: Membership) -> frozenset[str]:
        """The gainers of ``table``, worked out once per table (a ring diff)."""
        if self._gainers_of is None or self._gainers_of[0] is not table:
            self._gainers_of = (table, gainers(table, self._rings, self._replication_factor))
        return self._gainers_of[1]
