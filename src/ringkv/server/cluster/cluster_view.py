"""What this node knows of the cluster: members, their rings, who is reachable."""

from __future__ import annotations

import asyncio
import logging
from bisect import bisect_right
from collections.abc import Callable

from ringkv.core.membership import Liveness, Membership, RingMaker, replica_count
from ringkv.core.quorum import ReplicaSets
from ringkv.core.ring import Ring, TokenRange
from ringkv.core.tokens import token_of
from ringkv.server.transport.peers import Peer

log = logging.getLogger(__name__)

PeerFactory = Callable[[str, str], Peer]
"""Opens a channel to a member, given its id and address."""


class ClusterView:
    """The member table in effect on this node, the rings it implies, and peers.

    ``ring`` is the ring reads use (the members that are not joining);
    during a membership change ``next_ring`` is the ring after it, whose
    extra replicas also receive every write. ``peers`` has one entry per
    other member and is updated in place, so the parts that hold it (hint
    replay, probing) see joins and removals.
    """

    def __init__(
        self,
        node_id: str,
        membership: Membership,
        replication_factor: int,
        rings: RingMaker,
        open_peer: PeerFactory,
    ) -> None:
        self.node_id = node_id
        self.peers: dict[str, Peer] = {}
        self.liveness: dict[str, Liveness] = {}
        """Member states as the leader last published them."""
        self.leader_id = ""
        self.term = 0
        self._replication_factor = replication_factor
        self._rings = rings
        self._open_peer = open_peer
        self._closing: set[asyncio.Task[None]] = set()
        self.membership = membership
        self.ring: Ring = rings(())
        self.next_ring: Ring | None = None
        self.ranges: list[TokenRange] = []
        """The read ring's token ranges with their ``replicas`` replicas, in
        token order (built once per member table)."""
        self._range_starts: list[int] = []
        self.adopt(membership)

    @property
    def epoch(self) -> int:
        return self.membership.epoch

    @property
    def replicas(self) -> int:
        """Copies of each key: the replication factor, capped at the ring's size."""
        return replica_count(self._replication_factor, self.ring)

    @property
    def replication_factor(self) -> int:
        return self._replication_factor

    def adopt(self, membership: Membership) -> None:
        """Switch to a member table: rebuild the rings, open and close peers."""
        self.membership = membership
        self.ring = self._rings(membership.current_nodes())
        self.next_ring = self._rings(membership.next_nodes()) if membership.changing else None
        self.ranges = self.ring.ranges(self.replicas)
        self._range_starts = [token_range.start for token_range in self.ranges]
        addresses = membership.addresses
        for node_id, peer in list(self.peers.items()):
            if addresses.get(node_id) != peer.address:
                del self.peers[node_id]
                self._close_later(peer)
        for node_id, address in addresses.items():
            if node_id != self.node_id and node_id not in self.peers:
                self.peers[node_id] = self._open_peer(node_id, address)

    def _close_later(self, peer: Peer) -> None:
        task = asyncio.get_running_loop().create_task(peer.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def range_at(self, token: int) -> TokenRange:
        """The read ring's range holding ``token``."""
        return self.ranges[bisect_right(self._range_starts, token) - 1]

    def clockwise(self, key: bytes) -> tuple[str, ...]:
        """Every member of the read ring in the key's clockwise order; the first
        ``replicas`` hold it."""
        nodes: tuple[str, ...] = self.ring.preference_list(token_of(key), len(self.ring.nodes))
        return nodes

    def replica_sets(self, key: bytes) -> ReplicaSets:
        """The key's replicas now and, during a membership change, after it:
        requests must meet their level in both (``ringkv.core.quorum``)."""
        token = token_of(key)
        now: tuple[str, ...] = self.ring.preference_list(token, self.replicas)
        if self.next_ring is None:
            return ReplicaSets(now)
        upcoming: tuple[str, ...] = self.next_ring.preference_list(
            token, replica_count(self._replication_factor, self.next_ring)
        )
        return ReplicaSets(now, upcoming)

    def holds(self, token: int) -> bool:
        """Whether this node replicates a token now or after the change in flight."""
        if self.node_id in self.ring.preference_list(token, self.replicas):
            return True
        if self.next_ring is None:
            return False
        n_next = replica_count(self._replication_factor, self.next_ring)
        return self.node_id in self.next_ring.preference_list(token, n_next)

    def is_live(self, node_id: str) -> bool:
        """Whether requests should go to a node.

        Not if a call to it just failed (noticed at once, by this node), nor
        while the leader this node follows counts it dead (noticed by the
        leader's heartbeats, even when this node has not called it lately: a
        partitioned owner would otherwise cost each forwarded write its
        whole deadline). Without a leader only this node's own calls count.
        """
        if node_id == self.node_id:
            return True
        peer = self.peers.get(node_id)
        if peer is None or not peer.alive:
            return False
        return not self.leader_id or self.liveness.get(node_id) is not Liveness.DEAD

    def owner(self, key: bytes) -> str | None:
        """The first live replica of a key: the node that coordinates its writes."""
        for node in self.clockwise(key)[: self.replicas]:
            if self.is_live(node):
                return node
        return None

    def first_live_other(self, key: bytes) -> str | None:
        """The first live node other than this one in the key's clockwise order."""
        for node in self.clockwise(key):
            if node != self.node_id and self.is_live(node):
                return node
        return None

    async def close(self) -> None:
        for peer in self.peers.values():
            await peer.close()
        if self._closing:
            await asyncio.wait(set(self._closing), timeout=5.0)
