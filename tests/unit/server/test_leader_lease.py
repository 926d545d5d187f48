"""LeaderLease: a node coordinates while it leads or heard its leader within the lease."""

from __future__ import annotations

import asyncio

import pytest

from ringkv.core.clock_offset import OffsetSample
from ringkv.core.errors import Unavailable
from ringkv.server.cluster.leader_lease import NO_LEADER_LEASE, LeaderLease, arrived_in_time


class FakeClock:
    def __init__(self) -> None:
        self.now_ms = 10_000

    def __call__(self) -> int:
        return self.now_ms


def test_a_follower_holds_the_lease_for_its_duration_after_a_heartbeat() -> None:
    clock = FakeClock()
    lease = LeaderLease(1_500, clock)
    assert not lease.held  # no leader heard yet: a node just started
    lease.renew()
    clock.now_ms += 1_499
    assert lease.held
    clock.now_ms += 1
    assert not lease.held
    lease.renew()
    assert lease.held


def test_a_leader_holds_it_to_its_election_lease_and_then_not_on_an_old_heartbeat() -> None:
    clock = FakeClock()
    lease = LeaderLease(1_500, clock)
    lease.renew()  # a heartbeat followed just before it led
    lease.lead(clock.now_ms + 3_000)
    clock.now_ms += 2_999
    assert lease.held
    clock.now_ms += 1  # paused past its lease: not held, whatever the role says
    assert not lease.held
    lease.lead(clock.now_ms + 3_000)
    assert lease.held
    lease.lead(0)  # deposed
    assert not lease.held


def test_the_only_member_and_a_cluster_being_born_need_no_leader() -> None:
    clock = FakeClock()
    lease = LeaderLease(1_500, clock)
    lease.exempt(True)
    clock.now_ms += 60_000
    assert lease.held
    lease.exempt(False)
    assert not lease.held


def test_require_fails_fast_with_a_retryable_reason() -> None:
    lease = LeaderLease(1_500, FakeClock())
    with pytest.raises(Unavailable) as raised:
        asyncio.run(lease.require(0.0))
    assert raised.value.reason == NO_LEADER_LEASE


def test_require_returns_once_a_heartbeat_arrives() -> None:
    async def scenario() -> bool:
        lease = LeaderLease(1_500, FakeClock())
        waiting = asyncio.create_task(lease.require(30.0))
        await asyncio.sleep(0)
        assert not waiting.done()
        lease.renew()
        await asyncio.wait_for(waiting, 5.0)
        return lease.held

    assert asyncio.run(scenario())


def sender(offset_ms: float, uncertainty_ms: float = 5.0) -> OffsetSample:
    return OffsetSample(offset_ms, uncertainty_ms, taken_at=0.0)


@pytest.mark.parametrize(
    ("age_ms", "sender_clock", "in_time"),
    [
        (0, sender(0), True),
        (2_995, sender(0), True),
        (2_996, sender(0), False),  # within the deadline only without the uncertainty
        # A sender 20 s behind: its heartbeats look 20 s old, and are not.
        (20_100, sender(-20_000), True),
        (23_100, sender(-20_000), False),
        # A sender 20 s ahead: its heartbeats look from the future, and may be late.
        (-17_000, sender(20_000), False),
        (-18_000, sender(20_000), True),
        # No fresh measurement of the sender's clock, or one too rough: not judged.
        (60_000, None, True),
        (60_000, sender(0, uncertainty_ms=751), True),
        (60_000, sender(0, uncertainty_ms=750), False),
    ],
)
def test_a_heartbeat_renews_a_lease_only_if_surely_within_its_deadline(
    age_ms: int, sender_clock: OffsetSample | None, in_time: bool
) -> None:
    now = 1_700_000_000_000
    assert arrived_in_time(now - age_ms, now, 3_000, sender_clock) is in_time


def test_a_heartbeat_from_an_older_node_carries_no_time_and_is_taken_as_on_time() -> None:
    assert arrived_in_time(0, 1_700_000_000_000, 3_000, sender(0))
