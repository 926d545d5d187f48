"""Token-aware routing: send each request straight to a replica of its key.

The client learns the ring from ``GetClusterState`` (members, vnodes and
epoch are enough to rebuild it exactly) and tries a key's replicas first, in
preference order, so a write reaches its owner without a forwarding hop.
Every node it is given stays a fallback, taken in turn from one call to the
next, so calls without a key (MultiGet, MultiSet) and calls before the ring is
known spread over the endpoints rather than all landing on the first one.
Nodes that just failed go last for a moment. Each answer carries the
server's ring epoch; a newer one than the client's makes it refresh.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ringkv.api import kv_pb2
from ringkv.api.headers import RING_EPOCH
from ringkv.core.ring import Ring

DOWN_FOR_S = 1.0
REFRESH_EVERY_S = 30.0


@dataclass(frozen=True, slots=True)
class Topology:
    """The cluster as one node described it."""

    ring: Ring
    replicas: int
    addresses: dict[str, str]
    """Node id to host:port."""


def topology_from(state: kv_pb2.GetClusterStateResponse) -> Topology | None:
    """The topology in a cluster state, or None if the server does not describe its ring."""
    if state.vnodes <= 0 or not state.node_ids:
        return None
    ring = Ring(tuple(state.node_ids), epoch=state.epoch, vnodes_per_node=state.vnodes)
    return Topology(ring, state.replicas, dict(zip(state.node_ids, state.addresses, strict=True)))


class Router:
    """Which addresses a request should try, in order."""

    def __init__(self, endpoints: Sequence[str]) -> None:
        self.endpoints = list(endpoints)
        self.topology: Topology | None = None
        self._down_until: dict[str, float] = {}
        self._refresh_at = 0.0
        self._turn = 0

    def candidates(self, key: bytes | None, now: float) -> list[str]:
        """Replicas of the key first (if the ring is known), then the endpoints,
        starting one further along the list than the call before.

        Addresses that failed within the last ``DOWN_FOR_S`` go last.
        """
        ordered: dict[str, None] = {}
        if key is not None and self.topology is not None:
            replicas = self.topology.ring.replicas(key, self.topology.replicas)
            ordered.update((self.topology.addresses[node], None) for node in replicas)
        first = self._turn % len(self.endpoints)
        self._turn += 1
        ordered.update((endpoint, None) for endpoint in self.endpoints[first:])
        ordered.update((endpoint, None) for endpoint in self.endpoints[:first])
        up = [a for a in ordered if self._down_until.get(a, 0.0) <= now]
        return up + [a for a in ordered if a not in up]

    def failed(self, address: str, now: float) -> None:
        self._down_until[address] = now + DOWN_FOR_S

    def needs_refresh(self, now: float) -> bool:
        return now >= self._refresh_at

    def refreshed(self, topology: Topology | None, now: float) -> None:
        """Adopt a topology (or note that none could be had) until the next refresh."""
        if topology is not None:
            self.topology = topology
        self._refresh_at = now + REFRESH_EVERY_S

    def observe(self, trailing_metadata: Iterable[Any] | None, now: float) -> None:
        """Schedule a refresh at once if the server's ring is newer than ours."""
        known = self.topology
        for key, value in trailing_metadata or ():
            if key != RING_EPOCH or known is None:
                continue
            epoch = str(value)
            if epoch.isdigit() and int(epoch) > known.ring.epoch:
                self._refresh_at = now


def token_key(key: str) -> bytes:
    """The bytes a key is placed by (the server hashes the same UTF-8 bytes)."""
    return key.encode("utf-8", errors="surrogatepass")
