"""Acknowledged writes survive ``kill -9`` of the node, in every fsync mode.

A writer keeps many Set calls in flight against a real node process and
records a write only once its call has returned successfully. The node is then
killed with SIGKILL while calls are still in flight (those fail, and were never
acknowledged), restarted on the same data dir, and every acknowledged write
must be there with its exact value.

What this proves, per ``--fsync`` mode:

* ``always`` and ``batch`` sync the LMDB transaction to disk before a write is
  acknowledged, so an acknowledged write survives a process crash and also a
  power loss (the latter is not exercised here: it needs a machine to unplug).
* ``never`` commits the transaction to the OS page cache without syncing it.
  The kernel still owns those pages after the process dies, so an acknowledged
  write survives a process crash -- which this test proves -- but NOT a power
  loss or a kernel crash, where the unsynced pages are lost.

So all three modes are process-crash durable; only ``always``/``batch`` are
durable against losing the machine.

A second test kills the node while a large batch (many big values in one
group commit) is being written and checks that LMDB's copy-on-write commit
leaves a store that reopens and serves, with every acknowledged write intact.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

import ringkv
from tests.support.load import (
    MAX_WRITES,
    ConcurrentWriter,
    assert_all_present,
    large_value_for,
    read_back,
)
from tests.support.nodes import NodeFactory

MIN_ACKS = 300
"""Acknowledged writes to collect before the kill."""


def kill_under_load(node_kill: Callable[[], None], writer: ConcurrentWriter, acks: int) -> int:
    """Kill the node once ``acks`` writes were acknowledged; the calls in flight then."""
    with writer:
        writer.wait_for_acks(acks)
        in_flight = writer.in_flight
        node_kill()
    return in_flight


@pytest.mark.parametrize("fsync", ["always", "batch", "never"])
def test_acknowledged_writes_survive_kill_9(nodes: NodeFactory, fsync: str) -> None:
    node = nodes("node1", "--fsync", fsync)
    writer = ConcurrentWriter(node.address, prefix=f"durable-{fsync}")

    in_flight = kill_under_load(node.kill, writer, MIN_ACKS)

    assert in_flight > 0, "no write was in flight when the node was killed"
    assert writer.failures, "no write failed, so the kill hit no write in flight"
    assert MIN_ACKS <= len(writer.acked) <= MAX_WRITES
    node.start()
    assert_all_present(node.address, writer.acked)
    assert node.stop() == 0


def test_store_reopens_after_kill_9_during_large_batch(nodes: NodeFactory) -> None:
    """64 writers of 128 KiB values keep the commit thread inside one large
    transaction nearly all the time, so the kill lands in the middle of one."""
    node = nodes("node1", "--fsync", "batch")
    acked: dict[str, bytes] = {}
    for round_ in range(2):
        writer = ConcurrentWriter(
            node.address,
            prefix=f"large-{round_}",
            concurrency=64,
            value_of=large_value_for,
            max_writes=2_000,
        )
        in_flight = kill_under_load(node.kill, writer, 64)
        assert in_flight > 0, "no write was in flight when the node was killed"
        acked |= writer.acked

        node.start()  # LMDB reopens the environment the kill left behind
        assert_all_present(node.address, acked)
        # A write the kill interrupted is absent or whole, never torn.
        unacknowledged = [key for key in writer.attempted if key not in writer.acked]
        found = read_back(node.address, unacknowledged)
        torn = [k for k, v in found.items() if v is not None and v != large_value_for(k)]
        assert not torn, f"{len(torn)} interrupted writes stored a wrong value: {torn[:5]}"
        with ringkv.Client(node.address) as client:
            client.set(f"after-kill-{round_}", b"still serving")
            entry = client.get(f"after-kill-{round_}")
            assert entry is not None
            assert entry.value == b"still serving"
    assert node.stop() == 0
