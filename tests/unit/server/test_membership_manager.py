"""MembershipManager on its own: a real manager, view and saved file, its clock
in the test's hands, heartbeats fed to it as the Cluster service would.

Its peers are addresses nobody listens on, so nothing it sends is answered:
what it does follows from the calls made to it here.
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from ringkv.core.clock_offset import OffsetSample
from ringkv.core.election import ElectionConfig
from ringkv.core.errors import StorageFull
from ringkv.core.hlc import HybridLogicalClock
from ringkv.core.membership import Member, Membership, RingMaker
from ringkv.server.cluster.cluster_view import ClusterView
from ringkv.server.cluster.election_calls import HeartbeatAnswer, ReceivedHeartbeat
from ringkv.server.cluster.leader_lease import LeaderLease
from ringkv.server.cluster.membership import MembershipManager
from ringkv.server.cluster.membership_file import MembershipFile, SavedState
from ringkv.server.transport.peers import Peer
from tests.support.nodes import free_ports

ELECTION = ElectionConfig(
    heartbeat_interval_ms=100, election_timeout_ms=1_000, answer_timeout_ms=50, jitter_ms=0
)
LEADER_CLOCK_OFFSET_MS = -10_000
"""Node c's clock, measured against a's: 10 s behind."""


class FillableFile(MembershipFile):
    """``cluster.json`` on a disk the test can fill."""

    full = False

    def save(self, state: SavedState) -> None:
        if self.full:
            raise OSError(errno.ENOSPC, "No space left on device")
        super().save(state)


class Clock:
    def __init__(self) -> None:
        self.now_ms = 1_000_000

    def __call__(self) -> int:
        return self.now_ms


@asynccontextmanager
async def manager(
    tmp_path: Path, lease: LeaderLease | None = None, wall: Clock | None = None
) -> AsyncIterator[tuple[MembershipManager, FillableFile, ClusterView]]:
    ports = free_ports(3)
    table = Membership(
        1, tuple(Member(n, f"127.0.0.1:{p}") for n, p in zip("abc", ports, strict=True))
    )
    clock = HybridLogicalClock("a")
    view = ClusterView(
        "a", table, 3, RingMaker(8), lambda node, address: Peer(node, address, clock, 0.2)
    )
    saved = FillableFile(tmp_path)
    saved.save(SavedState(table, 0, None))
    now = Clock()
    membership = MembershipManager(
        view,
        address=table.addresses["a"],
        seeds={},
        saved=saved,
        election=ELECTION,
        remove_dead_after_ms=60_000,
        rings=RingMaker(8),
        on_removed=lambda: None,
        lease=lease or LeaderLease(ELECTION.election_timeout_ms, now),
        now_ms=now,
        wall_ms=wall or Clock(),
        clock_of=lambda node: (
            OffsetSample(LEADER_CLOCK_OFFSET_MS, 5.0, 0.0) if node == "c" else None
        ),
    )
    membership.start()
    try:
        yield membership, saved, view
    finally:
        await membership.close()


def received(
    leader: str, term: int, table: Membership, *, claim: bool = False, sent_wall_ms: int = 0
) -> ReceivedHeartbeat:
    return ReceivedHeartbeat(leader, term, claim, table, {}, sent_wall_ms)


def claim(membership: MembershipManager, leader: str, term: int) -> HeartbeatAnswer:
    return membership.heartbeat(received(leader, term, membership.membership, claim=True))


def test_a_node_that_cannot_save_a_new_vote_names_no_leader(tmp_path: Path) -> None:
    """Matrix seed 28: on a full disk, a node went on answering with the leader
    it knew while another led a newer term."""

    async def scenario() -> None:
        async with manager(tmp_path) as (membership, saved, view):
            assert claim(membership, "c", 5).accepted
            assert (view.leader_id, view.term) == ("c", 5)

            saved.full = True
            with pytest.raises(StorageFull):
                claim(membership, "c", 6)
            assert view.leader_id == ""

            saved.full = False
            assert claim(membership, "c", 7).accepted
            assert (view.leader_id, view.term) == ("c", 7)

    asyncio.run(scenario())


def heartbeat(
    membership: MembershipManager, leader: str, term: int, sent_wall_ms: int
) -> HeartbeatAnswer:
    return membership.heartbeat(
        received(leader, term, membership.membership, sent_wall_ms=sent_wall_ms)
    )


def test_a_heartbeat_held_in_the_network_past_its_deadline_renews_no_lease(
    tmp_path: Path,
) -> None:
    """Issue 12: a follower's lease counted from a late heartbeat's arrival
    outlived the bound the leader waits out before it settles a change."""

    async def scenario() -> None:
        now, wall = Clock(), Clock()
        wall.now_ms = 1_700_000_000_000
        lease = LeaderLease(ELECTION.election_timeout_ms, now)
        async with manager(tmp_path, lease, wall) as (membership, _, view):
            assert claim(membership, "c", 5).accepted
            assert not lease.held  # a claim is not a heartbeat

            # c's clock reads 10 s behind a's: sent a deadline ago, by c's clock.
            sent_a_deadline_ago = (
                wall.now_ms + LEADER_CLOCK_OFFSET_MS - ELECTION.election_timeout_ms
            )
            assert heartbeat(membership, "c", 5, sent_a_deadline_ago).accepted  # still followed...
            assert view.leader_id == "c"
            assert not lease.held  # ...but it renews nothing

            # Sent just now by c's clock, though 10 s ago by a's.
            just_sent = wall.now_ms + LEADER_CLOCK_OFFSET_MS
            assert heartbeat(membership, "c", 5, just_sent).accepted
            assert lease.held

    asyncio.run(scenario())


def test_a_node_removed_while_away_saves_the_table_without_it(
    tmp_path: Path,
) -> None:
    """Cluster sim seed 187: a joiner dropped before it came up, then restarted,
    resumed the saved table that still named it instead of joining again."""

    async def scenario() -> None:
        async with manager(tmp_path) as (membership, saved, view):
            table = view.membership
            without_a = Membership(table.epoch + 1, table.members[1:], 1)
            membership.heartbeat(received("c", 1, without_a))
            assert view.membership == without_a
            state = saved.load()
            assert state is not None and state.membership == without_a
            assert not state.decommissioned

    asyncio.run(scenario())


def test_a_joiner_the_operator_removed_saves_itself_decommissioned(tmp_path: Path) -> None:
    """Issue 13: the table that drops it names it removed, so it stops for
    good rather than join again as a joiner dropped for being dead would."""

    async def scenario() -> None:
        async with manager(tmp_path) as (membership, saved, view):
            table = view.membership
            without_a = Membership(table.epoch + 1, table.members[1:], 1, removed=("a",))
            membership.heartbeat(received("c", 1, without_a))
            assert view.membership == without_a
            state = saved.load()
            assert state is not None and state.membership == without_a
            assert state.decommissioned

    asyncio.run(scenario())


def test_a_table_that_came_by_another_way_than_the_leaders_heartbeat_holds_no_lease(
    tmp_path: Path,
) -> None:
    """Cluster sim seed 42543: a follower adopted a deposed leader's newer table
    from its claim and kept the lease its own leader had given on the older
    one, so it held a lease on a table no leader vouched for."""

    async def scenario() -> None:
        now, wall = Clock(), Clock()
        wall.now_ms = 1_700_000_000_000
        lease = LeaderLease(ELECTION.election_timeout_ms, now)
        async with manager(tmp_path, lease, wall) as (membership, _, view):
            leaders_table = view.membership
            just_sent = wall.now_ms + LEADER_CLOCK_OFFSET_MS
            assert heartbeat(membership, "c", 5, just_sent).accepted
            assert lease.held
            # b, deposed in term 4, claims with a table it made then.
            newer = Membership(leaders_table.epoch + 1, leaders_table.members, 4)
            membership.heartbeat(received("b", 4, newer, claim=True))
            assert view.membership == newer
            assert not lease.held
            # c's heartbeat with that table vouches for it, and renews the lease.
            membership.heartbeat(received("c", 5, newer, sent_wall_ms=just_sent))
            assert lease.held

    asyncio.run(scenario())
