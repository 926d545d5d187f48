"""What this node knows of the cluster: members, the ring, who is reachable."""

from __future__ import annotations

from collections.abc import Mapping

from ringkv.core.ring import Ring
from ringkv.core.tokens import token_of
from ringkv.server.peers import Peer


class ClusterView:
    """The members (this node and its peers), their ring and their liveness.

    Membership is static for now (``-peers``); the membership layer will
    replace the ring as the leader publishes new epochs.
    """

    def __init__(
        self, node_id: str, peers: Mapping[str, Peer], ring: Ring, replication_factor: int
    ) -> None:
        self.node_id = node_id
        self.peers = dict(peers)
        self.ring = ring
        self._replication_factor = replication_factor

    @property
    def replicas(self) -> int:
        """Copies of each key: the replication factor, capped at the cluster size."""
        return min(self._replication_factor, len(self.ring.nodes))

    def clockwise(self, key: bytes) -> tuple[str, ...]:
        """Every member in the key's clockwise order; the first ``replicas`` hold it."""
        nodes: tuple[str, ...] = self.ring.preference_list(token_of(key), len(self.ring.nodes))
        return nodes

    def is_live(self, node_id: str) -> bool:
        return node_id == self.node_id or self.peers[node_id].alive

    def owner(self, key: bytes) -> str | None:
        """The first live replica of a key: the node that coordinates its writes."""
        for node in self.clockwise(key)[: self.replicas]:
            if self.is_live(node):
                return node
        return None
