"""The lost write of issue 10, replayed step by step: restart + clock skew + sloppy quorum.

Five nodes, RF 2 (the seed's default, where QUORUM counts stand-ins), a key
whose replicas are X (its owner) and A, and B, the first node past them:

1. X is down; W1 is acknowledged at QUORUM by A and by B standing in for X
   (X's copy waits in B's hint).
2. X restarts with its clock 10 s behind; A and B are killed.
3. W2, invoked after W1 completed, is sent to X. Had X coordinated it, X's
   own stale copy and a stand-in would form the quorum, neither knowing W1,
   and W2 would be stamped below W1 by X's slow clock.
4. Everyone is back and repaired: the final value must be W2.

The history of the two writes is judged by the fault suite's checkers, so
this is the same verdict a nemesis run gives. Before the clock guard
(``--max-clock-offset``) W2 was stamped below W1 and lost; now X, whose
clock is unchecked and then beyond reach of its peers', hands W2 to a node
with a true clock, which stamps it past W1.
"""

from __future__ import annotations

import functools

import ringkv
from ringkv.client.admin import cluster_state, node_stats, repair
from ringkv.core.checkers import check_lost_writes, check_version_order
from ringkv.core.errors import Unavailable
from ringkv.core.history import FinalRead, HistoryOp, OpKind, Outcome
from ringkv.core.ring import Ring
from tests.support.nodes import ClusterFactory, NodeProcess, wait_for

SKEW_MS = -10_000
SLOW_HINTS = ("--hint-replay-interval", "5", "--anti-entropy-interval", "0")
"""Hints reach X well after W2 is sent; anti-entropy waits for the repair at the end."""


def key_owned_by(ring: Ring, owner: str) -> tuple[str, tuple[str, ...]]:
    for i in range(10_000):
        key = f"skew/{i}"
        clockwise = ring.replicas(key.encode(), 3)  # the 2 replicas, then the first stand-in
        if clockwise[0] == owner:
            return key, clockwise
    raise AssertionError(f"no key owned by {owner}")


def write(node: NodeProcess, key: str, value: str, index: int, started: float) -> HistoryOp:
    with ringkv.Client(node.address, token_aware=False, timeout=5.0) as client:
        version = client.set(key, value, consistency="quorum")
    return HistoryOp(
        index, node.node_id, OpKind.WRITE, key, value, "quorum", started, started + 1, Outcome.OK,
        version,
    )  # fmt: skip


def repaired(node: NodeProcess) -> bool:
    try:
        repair(node.address, timeout=60.0)
    except Unavailable:
        return False  # a restarted node that has not found its cluster yet
    return True


def read_at_all(node: NodeProcess, key: str, into: list[ringkv.Entry | None]) -> bool:
    with ringkv.Client(node.address, token_aware=False, timeout=5.0) as client:
        try:
            into.append(client.get(key, consistency="all"))
        except Unavailable:
            return False  # a restarted replica is not yet seen alive
    return True


def test_a_write_after_an_acknowledged_one_survives_restart_skew_and_stand_ins(
    cluster: ClusterFactory,
) -> None:
    nodes = cluster(5, *SLOW_HINTS, replicas=2)
    by_id = {node.node_id: node for node in nodes}
    state = cluster_state(nodes[0].address)
    ring = Ring(tuple(by_id), vnodes_per_node=state.vnodes)
    key, (x_id, a_id, b_id) = key_owned_by(ring, "node3")
    x, a, b = by_id[x_id], by_id[a_id], by_id[b_id]

    x.kill()
    w1 = write(a, key, "W1", 0, started=0.0)

    x.extra_args += ["--clock-offset-ms", str(SKEW_MS)]
    x.start()
    a.kill()
    b.kill()
    w2 = write(x, key, "W2", 1, started=2.0)  # invoked after W1 completed

    a.start()
    b.start()
    # Stand-ins may hold W2 as hints for the replicas that were down.
    wait_for(
        lambda: all(node_stats(node.address).hints_pending == 0 for node in nodes),
        timeout=60,
        what="every hint to be handed off",
    )
    for node in nodes:
        wait_for(functools.partial(repaired, node), timeout=30, what=f"a repair on {node.node_id}")
    read_all: list[ringkv.Entry | None] = []
    wait_for(
        lambda: read_at_all(x, key, read_all),
        timeout=30,
        what="every replica to answer a read at ALL",
    )
    entry = read_all[-1]
    assert entry is not None
    final = {key: FinalRead(key, entry.value.decode(), entry.version)}

    history = [w1, w2]
    order = check_version_order(history)
    lost = check_lost_writes(history, final)
    assert order.holds and lost.holds, [v.message for v in (*order.violations, *lost.violations)]
