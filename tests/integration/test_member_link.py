"""The member link between real node processes: forwarded writes travel on
it, a restarted peer (on a new link port) is found again, and with
``--link-port off`` the same traffic goes over gRPC.

``Forward/Write`` is the link's method for a forwarded write; over gRPC
forwarded writes are ``Forward/Writes`` calls. The owner's metrics tell them
apart."""

from __future__ import annotations

import ringkv
from ringkv.core.errors import DeadlineExceeded, Unavailable
from tests.support.metrics import METRICS, scrape
from tests.support.nodes import ClusterFactory, NodeProcess, wait_for, wait_for_leader

FAST = ("--heartbeat-interval", "0.2", "--election-timeout", "1")


def forwarded(node: NodeProcess, method: str) -> float:
    """The forwarded writes ``node`` coordinated as their owner, arrived as ``method``."""
    labels = {"service": "ringkv.internal.Forward", "method": method, "level": "", "code": "OK"}
    return scrape(node).get("ringkv_requests_total", **labels)


def write_through(node: NodeProcess, prefix: str, count: int = 30) -> None:
    with ringkv.Client(node.address, token_aware=False, timeout=5) as client:
        for i in range(count):
            client.set(f"{prefix}-{i}", "v", consistency="all")


def wrote(node: NodeProcess, prefix: str, count: int) -> bool:
    """Whether ``count`` writes at ALL through ``node`` all succeeded."""
    try:
        write_through(node, prefix, count)
    except (Unavailable, DeadlineExceeded):
        return False
    return True


def test_a_restarted_peer_is_reached_on_its_new_link(cluster: ClusterFactory) -> None:
    members = cluster(3, *FAST, *METRICS)
    wait_for_leader(members, timeout=30)
    node1, node2, _ = members
    wait_for(lambda: wrote(node1, "warm", 3), timeout=20, what="writes at ALL to work")

    def forwarded_over_the_link(node: NodeProcess) -> float:
        wrote(node1, "before", 10)
        return forwarded(node, "Write")

    wait_for(lambda: forwarded_over_the_link(node2) > 0, timeout=20, what="a forward on the link")

    # node2 comes back on the same client port and another link port; node1
    # finds it there (until then, it reaches node2 over gRPC).
    node2.stop()
    node2.start()
    wait_for_leader(members, timeout=30)
    wait_for(
        lambda: forwarded_over_the_link(node2) > 0, timeout=30, what="a forward on the new link"
    )
    with ringkv.Client(node2.address, timeout=5) as client:
        entry = client.get("before-0", consistency="all")
        assert entry is not None and entry.value == b"v"


def test_with_the_link_off_members_talk_grpc(cluster: ClusterFactory) -> None:
    members = cluster(3, *FAST, *METRICS, "--link-port", "off")
    wait_for_leader(members, timeout=30)
    wait_for(lambda: wrote(members[0], "warm", 3), timeout=20, what="writes at ALL to work")
    write_through(members[0], "grpc")
    owners = members[1:]
    assert sum(forwarded(node, "Writes") for node in owners) > 0
    assert sum(forwarded(node, "Write") for node in owners) == 0
    with ringkv.Client(members[2].address, timeout=5) as client:
        entry = client.get("grpc-7", consistency="all")
        assert entry is not None and entry.value == b"v"
