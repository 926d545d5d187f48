"""Is this node's wall clock close enough to its peers' to stamp versions?

Versions are hybrid logical clock timestamps, so a coordinator whose wall
clock runs behind stamps a write below one that another node acknowledged
earlier; when the two writes' quorums share no replica (a restarted replica
that has not caught up, stand-ins), the earlier write wins everywhere and
the later, acknowledged one is lost. That is the lost write of issue 10. As
CockroachDB does, a node measures its clock against its peers and stops
stamping when it is further than ``max_offset_ms`` from a majority of the
cluster (its writes are coordinated by another node instead).

A sample comes from one round trip to a peer, timed on the monotonic clock
and answered with the peer's wall clock. The peer read its clock inside the
round trip, so its offset is ``peer_wall - (local wall at the answer - half
the round trip)``, within plus or minus half the round trip (as NTP's,
Cristian's algorithm). A slow round trip (a loaded node) makes a sample
uncertain, and an uncertain sample counts as "possibly within": only a
clock proven far off stops stamping, never a busy one.

Each sample also keeps this node's wall clock minus its monotonic clock when
it was taken (its anchor). When the wall clock steps (an operator, NTP), the
anchor moves, and samples taken before the step no longer describe the
clock: they are dropped, so a step shows up at the next probe rather than
when old samples go stale.

The bound this buys is pairwise in practice: each stamping node is within
the maximum offset (plus half a round trip) of a majority, and two
majorities share a member, so two stamping nodes are within about twice
that of each other.

The verdict counts the members the clock is possibly within reach of
(``|offset| - uncertainty <= max``), this node included:

* WITHIN when they are a majority of the members;
* BEYOND when they are not, and fresh samples cover a majority (so the
  clock is known to be out of reach of a majority);
* UNCHECKED otherwise: too few fresh samples to tell, as right after a
  restart or when cut off from most peers.

Two nodes whose clocks disagree with no third to break the tie both come
out BEYOND: there is no telling which is wrong, and neither should stamp.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass


class ClockVerdict(enum.Enum):
    WITHIN = "within"
    """Close enough to a majority of the members: may stamp versions."""
    BEYOND = "beyond"
    """Further than the maximum offset from a majority: must not stamp."""
    UNCHECKED = "unchecked"
    """Not enough fresh samples to tell: must not stamp yet."""


@dataclass(frozen=True, slots=True)
class OffsetSample:
    """One measurement of a peer's clock against this node's."""

    offset_ms: float
    """The peer's clock minus this node's."""
    uncertainty_ms: float
    """Half the round trip: the true offset is within this of ``offset_ms``."""
    taken_at: float
    """When it was taken, on the monotonic clock freshness is judged by (seconds)."""
    anchor_ms: float = 0.0
    """This node's wall clock minus its monotonic clock when it was taken."""


def measure(
    round_trip_ms: float, peer_wall_ms: int, answered_wall_ms: int, taken_at: float
) -> OffsetSample:
    """The sample of one round trip: its length (monotonic), the peer's wall clock,
    and this node's wall clock when the answer came (``taken_at``, monotonic seconds)."""
    if round_trip_ms < 0:
        raise ValueError(f"a round trip cannot take {round_trip_ms} ms")
    half = round_trip_ms / 2
    return OffsetSample(
        peer_wall_ms - (answered_wall_ms - half), half, taken_at, answered_wall_ms - taken_at * 1000
    )


@dataclass(frozen=True, slots=True)
class ClockCheck:
    """A verdict and what it rests on."""

    verdict: ClockVerdict
    offset_ms: float
    """The median offset of this clock from the fresh samples' peers (0: none),
    this node's clock minus theirs: positive when it runs ahead."""
    within: int
    """Members this clock is possibly within reach of, itself included."""
    sampled: int
    """Peers with a fresh, usable sample."""
    members: int

    @property
    def may_stamp(self) -> bool:
        return self.verdict is ClockVerdict.WITHIN

    def describe(self) -> str:
        return (
            f"clock {self.verdict.value}: {self.offset_ms:+.0f} ms from the median of "
            f"{self.sampled} peer(s); within reach of {self.within} of {self.members} members"
        )


def check_clock(
    samples: Mapping[str, OffsetSample],
    members: int,
    *,
    max_offset_ms: float,
    now: float,
    fresh_for: float,
    anchor_ms: float | None = None,
) -> ClockCheck:
    """The verdict on this clock from the latest sample of each peer.

    ``members`` counts every member of the cluster, this node included;
    samples older than ``fresh_for`` seconds (at ``now``, monotonic) are
    ignored, and so are samples whose anchor is more than a quarter of the
    maximum offset from ``anchor_ms`` (the wall clock stepped since).
    """
    if members < 1:
        raise ValueError(f"a cluster has at least one member, got {members}")
    usable = [
        s
        for s in samples.values()
        if now - s.taken_at <= fresh_for
        and (anchor_ms is None or abs(s.anchor_ms - anchor_ms) <= max_offset_ms / 4)
    ]
    within = 1 + sum(1 for s in usable if abs(s.offset_ms) - s.uncertainty_ms <= max_offset_ms)
    majority = members // 2 + 1
    offsets = sorted(-s.offset_ms for s in usable)
    median = offsets[len(offsets) // 2] if offsets else 0.0
    if within >= majority:
        verdict = ClockVerdict.WITHIN
    elif 1 + len(usable) >= majority:
        verdict = ClockVerdict.BEYOND
    else:
        verdict = ClockVerdict.UNCHECKED
    return ClockCheck(verdict, median, within, len(usable), members)
