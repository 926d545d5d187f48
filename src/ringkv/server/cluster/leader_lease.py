"""Whether this node may coordinate requests: it leads, or it heard its leader lately.

A node cut off from the leader keeps the member table it last had, while the
leader goes on through membership changes without it (to the leader it is
just not live). Two coordinators two changes apart can each find a quorum
the other's does not meet, and fencing does not stop them when the replicas
they reach are as far behind as they are. So a node coordinates only while
it holds a lease: the leader holds one while a majority acknowledges its
heartbeats (``ringkv.core.election``), a follower for an election timeout
after it accepted a heartbeat, which carried the leader's table and was
adopted first. The leader, for its part, moves past a membership change only
once every member is known to have the change, or every lease granted
before it has run out (``ringkv.core.membership.leader_decision``).

A lease is only the absence of a reason to doubt the table; it is counted
on this node's monotonic clock from the moment the heartbeat arrived. The
leader's bound assumes a heartbeat arrives within its deadline of being sent;
one held in the network longer (a TCP retransmission after a partition heals)
renews nothing: heartbeats carry their sender's wall clock, judged against
the measured offset of the two clocks (``arrived_in_time``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from ringkv.core.clock_offset import OffsetSample
from ringkv.core.errors import Unavailable

NO_LEADER_LEASE = "NO_LEADER_LEASE"
"""The reason of the UNAVAILABLE a node answers while it holds no lease."""


def arrived_in_time(
    sent_wall_ms: int, now_wall_ms: int, deadline_ms: int, sender_clock: OffsetSample | None
) -> bool:
    """Whether a heartbeat sent at ``sent_wall_ms`` on its sender's wall clock
    is surely within ``deadline_ms`` of being sent, now.

    ``sender_clock`` is the latest fresh measurement of the sender's clock
    against this node's (the clock prober's, every heartbeat interval): the
    send time is moved onto this node's clock, and the age must fit the
    deadline with the measurement's uncertainty added. Unjudged, and taken as
    on time as before, are a heartbeat from an older node (no time: 0), one
    whose sender's clock has no fresh measurement (``--max-clock-offset 0``,
    or just started), and one whose measurement is too rough to judge by (a
    probe slowed by load, uncertain by more than a quarter of the deadline:
    a busy node must not lose its lease to a poor measurement).
    """
    if not sent_wall_ms or sender_clock is None:
        return True
    if sender_clock.uncertainty_ms > deadline_ms / 4:
        return True
    sent_here_ms = sent_wall_ms - sender_clock.offset_ms
    return now_wall_ms - sent_here_ms + sender_clock.uncertainty_ms <= deadline_ms


class LeaderLease:
    """This node's lease to coordinate, renewed by the leader's heartbeats."""

    def __init__(self, duration_ms: int, monotonic_ms: Callable[[], int]) -> None:
        self._duration_ms = duration_ms
        self._monotonic_ms = monotonic_ms
        self._expires_ms = 0
        self._leads_until_ms = 0
        self._exempt = False
        self._renewed = asyncio.Event()

    @property
    def held(self) -> bool:
        now = self._monotonic_ms()
        return self._exempt or now < self._leads_until_ms or now < self._expires_ms

    def renew(self) -> None:
        """This node, a follower, accepted a heartbeat of its leader just now."""
        was_held = self.held
        self._expires_ms = self._monotonic_ms() + self._duration_ms
        self._wake_if_gained(was_held)

    def lapse(self) -> None:
        """The table the leader's heartbeats vouched for is no longer the one in
        effect here: the lease waits for a heartbeat that carries the new one."""
        self._expires_ms = 0

    def lead(self, until_ms: int) -> None:
        """This node leads until ``until_ms`` (its election's lease), or not at all (0).

        Held to the time, not to the role: a leader whose process was paused
        past its lease does not coordinate before its election notices.
        """
        was_held = self.held
        if self._leads_until_ms and not until_ms:
            self._expires_ms = 0  # a deposed leader does not fall back on an old heartbeat
        self._leads_until_ms = until_ms
        self._wake_if_gained(was_held)

    def exempt(self, exempt: bool) -> None:
        """Whether this node coordinates with no leader at all: while it is the
        only member, and while no leader has published a table yet (epoch 0,
        the table from its flags: there is no change to have missed, and a
        cluster being born is writable)."""
        was_held = self.held
        self._exempt = exempt
        self._wake_if_gained(was_held)

    def _wake_if_gained(self, was_held: bool) -> None:
        """Wake the requests waiting for a lease, if this node has just gained one."""
        if not was_held and self.held:
            self._renewed.set()
            self._renewed = asyncio.Event()

    async def require(self, wait_s: float) -> None:
        """Return once the lease is held, waiting up to ``wait_s`` for a heartbeat.

        Raises Unavailable (nothing was done; safe to retry on another node).
        """
        if self.held:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while not self.held:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise Unavailable(
                    "this node has not heard from a leader within the election timeout, "
                    "so its member table may be out of date; retry on another node",
                    reason=NO_LEADER_LEASE,
                )
            try:
                await asyncio.wait_for(self._renewed.wait(), remaining)
            except TimeoutError:
                continue
