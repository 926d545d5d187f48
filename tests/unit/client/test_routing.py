"""Token-aware routing: replicas first, endpoints as fallbacks, refresh on a newer epoch."""

from __future__ import annotations

from ringkv.api import kv_pb2
from ringkv.api.headers import RING_EPOCH
from ringkv.client.routing import DOWN_FOR_S, REFRESH_EVERY_S, Router, topology_from
from ringkv.core.ring import Ring

ADDRESSES = {"a": "127.0.0.1:1", "b": "127.0.0.2:1", "c": "127.0.0.3:1"}


def state(epoch: int = 3, replicas: int = 2) -> kv_pb2.GetClusterStateResponse:
    return kv_pb2.GetClusterStateResponse(
        node_ids=list(ADDRESSES),
        addresses=list(ADDRESSES.values()),
        epoch=epoch,
        replicas=replicas,
        vnodes=64,
    )


def router_with_topology(now: float = 0.0) -> Router:
    router = Router(["seed:1"])
    router.refreshed(topology_from(state()), now)
    return router


def test_a_state_without_ring_fields_gives_no_topology() -> None:
    seed_style = kv_pb2.GetClusterStateResponse(node_ids=["a"], addresses=["x:1"], leader_id="a")
    assert topology_from(seed_style) is None


def test_the_topology_rebuilds_the_servers_ring() -> None:
    topology = topology_from(state())
    assert topology is not None
    assert topology.ring == Ring(tuple(ADDRESSES), epoch=3, vnodes_per_node=64)
    assert topology.addresses == ADDRESSES


def test_replicas_come_first_in_preference_order_then_the_endpoints() -> None:
    router = router_with_topology()
    ring = Ring(tuple(ADDRESSES), epoch=3, vnodes_per_node=64)
    replicas = [ADDRESSES[node] for node in ring.replicas(b"k", 2)]
    assert router.candidates(b"k", 0.0) == [*replicas, "seed:1"]


def test_without_a_key_or_a_ring_only_the_endpoints_are_tried() -> None:
    assert router_with_topology().candidates(None, 0.0) == ["seed:1"]
    assert Router(["e1:1", "e2:1"]).candidates(b"k", 0.0) == ["e1:1", "e2:1"]


def test_the_endpoints_are_taken_in_turn() -> None:
    router = Router(["e1:1", "e2:1", "e3:1"])
    firsts = [router.candidates(None, 0.0)[0] for _ in range(6)]
    assert firsts == ["e1:1", "e2:1", "e3:1", "e1:1", "e2:1", "e3:1"]
    assert router.candidates(None, 0.0) == ["e1:1", "e2:1", "e3:1"]
    assert router.candidates(b"k", 0.0) == ["e2:1", "e3:1", "e1:1"]


def test_a_failed_address_goes_last_for_a_while() -> None:
    router = Router(["e1:1", "e2:1", "e3:1"])
    router.failed("e1:1", now=10.0)
    assert router.candidates(None, 10.0) == ["e2:1", "e3:1", "e1:1"]
    assert router.candidates(None, 10.0 + DOWN_FOR_S) == ["e2:1", "e3:1", "e1:1"]
    assert router.candidates(None, 10.0 + DOWN_FOR_S) == ["e3:1", "e1:1", "e2:1"]


def test_refreshes_are_periodic() -> None:
    router = Router(["e:1"])
    assert router.needs_refresh(0.0)
    router.refreshed(None, 0.0)
    assert not router.needs_refresh(REFRESH_EVERY_S - 1)
    assert router.needs_refresh(REFRESH_EVERY_S)


def test_a_newer_epoch_in_an_answer_asks_for_a_refresh_at_once() -> None:
    router = router_with_topology(now=0.0)
    router.observe([(RING_EPOCH, "3")], now=1.0)
    assert not router.needs_refresh(1.0)
    router.observe([(RING_EPOCH, "not-a-number")], now=1.0)
    assert not router.needs_refresh(1.0)
    router.observe([("other", "9"), (RING_EPOCH, "4")], now=1.0)
    assert router.needs_refresh(1.0)
