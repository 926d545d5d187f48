"""Tests for ringkv.core.hlc: hybrid logical clocks and record versions."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ringkv.core.hlc import (
    LOGICAL_BITS,
    MARK_WINDOW_MS,
    HybridLogicalClock,
    Version,
    next_mark,
    physical_ms,
)

MINUTE_MS = 60_000
TEN_MINUTES_MS = 10 * MINUTE_MS
# Around 2023-11 in Unix milliseconds; tests move around it by years either way.
NOW_MS = 1_700_000_000_000
LOGICAL_SPAN = 1 << LOGICAL_BITS

PROPERTY = settings(max_examples=200, deadline=None)

wall_clocks = st.integers(min_value=0, max_value=1 << 45)
node_ids = st.text(min_size=1, max_size=8)


@st.composite
def erratic_wall_clock(draw: st.DrawFn) -> list[int]:
    """A wall clock that stalls, steps forwards and jumps back by up to an hour."""
    start = draw(st.integers(min_value=0, max_value=1 << 45))
    steps = draw(
        st.lists(
            st.one_of(
                st.just(0),
                st.integers(min_value=-60 * MINUTE_MS, max_value=60 * MINUTE_MS),
                st.integers(min_value=-3, max_value=3),
            ),
            min_size=1,
            max_size=60,
        )
    )
    return list(itertools.accumulate(steps, initial=start))


# --- physical_ms and the timestamp layout ----------------------------------


def test_logical_bits_is_sixteen() -> None:
    # The layout is on disk and on the wire: changing it breaks old data.
    assert LOGICAL_BITS == 16


@given(ms=st.integers(min_value=0, max_value=1 << 47), logical=st.integers(0, LOGICAL_SPAN - 1))
@PROPERTY
def test_physical_ms_drops_the_logical_counter(ms: int, logical: int) -> None:
    assert physical_ms((ms << LOGICAL_BITS) + logical) == ms


def test_new_clock_starts_at_zero() -> None:
    clock = HybridLogicalClock("n1")
    assert clock.node_id == "n1"
    assert clock.last == 0


def test_first_tick_is_the_wall_clock_shifted() -> None:
    clock = HybridLogicalClock("n1")
    version = clock.tick(NOW_MS)
    assert version == Version(NOW_MS << LOGICAL_BITS, "n1")
    assert physical_ms(version.timestamp) == NOW_MS
    assert clock.last == version.timestamp


def test_tick_in_the_same_millisecond_bumps_the_logical_counter() -> None:
    clock = HybridLogicalClock("n1")
    first = clock.tick(NOW_MS)
    second = clock.tick(NOW_MS)
    third = clock.tick(NOW_MS)
    assert second.timestamp == first.timestamp + 1
    assert third.timestamp == first.timestamp + 2
    assert {physical_ms(v.timestamp) for v in (first, second, third)} == {NOW_MS}


def test_tick_when_the_wall_clock_goes_back_keeps_counting_up() -> None:
    clock = HybridLogicalClock("n1")
    first = clock.tick(NOW_MS)
    behind = clock.tick(NOW_MS - 5 * MINUTE_MS)
    assert behind.timestamp == first.timestamp + 1
    assert physical_ms(behind.timestamp) == NOW_MS


def test_tick_at_time_zero_on_a_fresh_clock_is_positive() -> None:
    clock = HybridLogicalClock("n1")
    assert clock.tick(0).timestamp == 1


def test_observe_moves_the_clock_forward_only() -> None:
    clock = HybridLogicalClock("n1")
    clock.tick(NOW_MS)
    ahead = (NOW_MS + MINUTE_MS) << LOGICAL_BITS
    clock.observe(ahead)
    assert clock.last == ahead
    clock.observe(ahead - 12345)
    assert clock.last == ahead
    assert clock.tick(NOW_MS).timestamp == ahead + 1


def test_tick_carries_the_clocks_node_id() -> None:
    clock = HybridLogicalClock("node-7")
    assert clock.tick(NOW_MS).node_id == "node-7"
    clock.observe((NOW_MS + 1) << LOGICAL_BITS)
    assert clock.tick(NOW_MS).node_id == "node-7"


# --- (a) one node's timestamps strictly increase ----------------------------


@given(wall=erratic_wall_clock())
@PROPERTY
def test_ticks_strictly_increase_whatever_the_wall_clock_does(wall: list[int]) -> None:
    clock = HybridLogicalClock("n1")
    versions = [clock.tick(now) for now in wall]
    timestamps = [v.timestamp for v in versions]
    assert all(a < b for a, b in itertools.pairwise(timestamps))
    assert all(a < b for a, b in itertools.pairwise(versions))
    assert clock.last == timestamps[-1]


@given(wall=st.lists(st.integers(min_value=-(1 << 50), max_value=1 << 50), min_size=1))
@PROPERTY
def test_ticks_strictly_increase_for_arbitrary_integers(wall: list[int]) -> None:
    clock = HybridLogicalClock("n1")
    timestamps = [clock.tick(now).timestamp for now in wall]
    assert all(a < b for a, b in itertools.pairwise(timestamps))


@given(
    events=st.lists(
        st.tuples(st.booleans(), st.integers(min_value=0, max_value=1 << 45)),
        min_size=1,
        max_size=60,
    )
)
@PROPERTY
def test_ticks_exceed_everything_issued_or_observed_before(
    events: list[tuple[bool, int]],
) -> None:
    """Interleaving observes with ticks: every tick beats every earlier timestamp."""
    clock = HybridLogicalClock("n1")
    highest = 0
    for is_tick, value in events:
        if is_tick:
            timestamp = clock.tick(value).timestamp
            assert timestamp > highest
            highest = timestamp
        else:
            observed = value << LOGICAL_BITS
            clock.observe(observed)
            highest = max(highest, observed)
        assert clock.last == highest


# --- (b) causality across nodes -------------------------------------------


@given(
    a_history=st.lists(wall_clocks, max_size=10),
    b_history=st.lists(wall_clocks, max_size=10),
    a_now=st.integers(min_value=TEN_MINUTES_MS, max_value=1 << 45),
    b_behind=st.integers(min_value=0, max_value=TEN_MINUTES_MS),
)
@PROPERTY
def test_receiver_with_slow_clock_still_orders_after_sender(
    a_history: list[int], b_history: list[int], a_now: int, b_behind: int
) -> None:
    a = HybridLogicalClock("a")
    b = HybridLogicalClock("b")
    for now in a_history:
        a.tick(now)
    for now in b_history:
        b.tick(now)
    sent = a.tick(a_now)
    b.observe(sent.timestamp)
    received = b.tick(a_now - b_behind)
    assert received.timestamp > sent.timestamp
    assert received > sent


def test_receiver_ten_minutes_behind_orders_after_sender() -> None:
    a = HybridLogicalClock("z")
    b = HybridLogicalClock("a")  # sorts first by node id: the timestamp must decide
    sent = a.tick(NOW_MS)
    b.observe(sent.timestamp)
    received = b.tick(NOW_MS - TEN_MINUTES_MS)
    assert received.timestamp == sent.timestamp + 1
    assert received > sent


def test_without_observing_a_slow_receiver_orders_before_sender() -> None:
    """The negative control: it is the observe that carries causality."""
    a = HybridLogicalClock("a")
    b = HybridLogicalClock("b")
    sent = a.tick(NOW_MS)
    unrelated = b.tick(NOW_MS - TEN_MINUTES_MS)
    assert unrelated < sent


@st.composite
def message_chains(draw: st.DrawFn) -> tuple[list[int], list[int], list[int]]:
    """Node skews, the hops of one message chain (node index per hop), and the
    real time that passes before each hop."""
    node_count = draw(st.integers(min_value=2, max_value=6))
    skews = draw(
        st.lists(
            st.integers(min_value=-TEN_MINUTES_MS, max_value=TEN_MINUTES_MS),
            min_size=node_count,
            max_size=node_count,
        )
    )
    first = draw(st.integers(0, node_count - 1))
    # Each hop is a message to a different node than the one that sent it.
    moves = draw(st.lists(st.integers(1, node_count - 1), min_size=1, max_size=25))
    hops = list(
        itertools.accumulate(moves, lambda node, move: (node + move) % node_count, initial=first)
    )
    elapsed = draw(
        st.lists(st.integers(0, 5), min_size=len(hops), max_size=len(hops)),
    )
    return skews, hops, elapsed


@given(
    chain=message_chains(),
    start=st.integers(min_value=TEN_MINUTES_MS, max_value=1 << 45),
    background=st.lists(st.tuples(st.integers(0, 5), st.integers(0, 1000)), max_size=20),
)
@PROPERTY
def test_message_chain_across_skewed_nodes_is_ordered(
    chain: tuple[list[int], list[int], list[int]],
    start: int,
    background: list[tuple[int, int]],
) -> None:
    skews, hops, elapsed = chain
    clocks = [HybridLogicalClock(f"node{i}") for i in range(len(skews))]
    # Unrelated local writes before the chain starts.
    for node, offset in background:
        if node < len(clocks):
            clocks[node].tick(start + skews[node] - offset)
    real_time = start
    previous: Version | None = None
    for node, step in zip(hops, elapsed, strict=True):
        real_time += step
        clock = clocks[node]
        if previous is not None:
            clock.observe(previous.timestamp)
        version = clock.tick(real_time + skews[node])
        if previous is not None:
            assert version > previous
            assert version.timestamp > previous.timestamp
        previous = version


# --- (c) timestamps stay close to real time --------------------------------


@given(
    start=st.integers(min_value=0, max_value=1 << 45),
    steps=st.lists(
        st.tuples(st.integers(min_value=0, max_value=MINUTE_MS), st.integers(1, 50)),
        min_size=1,
        max_size=40,
    ),
)
@PROPERTY
def test_physical_part_tracks_a_monotonic_wall_clock(
    start: int, steps: list[tuple[int, int]]
) -> None:
    clock = HybridLogicalClock("n1")
    now = start
    for advance, ticks in steps:
        now += advance
        for _ in range(ticks):
            assert physical_ms(clock.tick(now).timestamp) == now


@given(wall=erratic_wall_clock())
@PROPERTY
def test_physical_part_is_the_largest_wall_clock_seen(wall: list[int]) -> None:
    """With few ticks per millisecond a clock that steps back does not drag the
    timestamps back, nor push them ahead of the largest reading."""
    clock = HybridLogicalClock("n1")
    highest = 0
    for now in wall:
        highest = max(highest, now)
        assert physical_ms(clock.tick(now).timestamp) == highest


def test_a_full_millisecond_of_ticks_stays_in_that_millisecond() -> None:
    clock = HybridLogicalClock("n1")
    timestamps = [clock.tick(NOW_MS).timestamp for _ in range(LOGICAL_SPAN)]
    assert {physical_ms(t) for t in timestamps} == {NOW_MS}
    assert timestamps[-1] - timestamps[0] == LOGICAL_SPAN - 1
    # One more overflows into the next millisecond: the clock runs ahead ...
    overflow = clock.tick(NOW_MS)
    assert physical_ms(overflow.timestamp) == NOW_MS + 1
    # ... and the wall clock catches it up as soon as it gets there.
    caught_up = clock.tick(NOW_MS + 1)
    assert physical_ms(caught_up.timestamp) == NOW_MS + 1
    assert caught_up.timestamp == overflow.timestamp + 1
    assert physical_ms(clock.tick(NOW_MS + 2).timestamp) == NOW_MS + 2


# --- (d) version ordering ----------------------------------------------------


versions = st.builds(
    Version, timestamp=st.integers(min_value=0, max_value=1 << 62), node_id=node_ids
)
close_versions = st.builds(Version, timestamp=st.integers(0, 3), node_id=st.sampled_from("abc"))


def test_larger_timestamp_wins_over_node_id() -> None:
    assert Version(2, "a") > Version(1, "z")
    assert max(Version(2, "a"), Version(1, "z")) == Version(2, "a")


def test_equal_timestamps_are_broken_by_node_id() -> None:
    assert Version(5, "node1") < Version(5, "node2")
    assert max(Version(5, "node2"), Version(5, "node1")) == Version(5, "node2")


def test_version_is_frozen_and_hashable() -> None:
    version = Version(1, "a")
    with pytest.raises(AttributeError):
        version.timestamp = 2  # type: ignore[misc]
    assert {version, Version(1, "a")} == {version}


@given(x=st.one_of(versions, close_versions), y=st.one_of(versions, close_versions))
@PROPERTY
def test_version_order_is_timestamp_then_node_id(x: Version, y: Version) -> None:
    expected_less = x.timestamp < y.timestamp or (
        x.timestamp == y.timestamp and x.node_id < y.node_id
    )
    assert (x < y) == expected_less
    assert (x == y) == (x.timestamp == y.timestamp and x.node_id == y.node_id)
    # Totality / trichotomy: exactly one of <, ==, > holds.
    assert [x < y, x == y, x > y].count(True) == 1
    assert (x <= y) == (x < y or x == y)
    assert (x >= y) == (x > y or x == y)


@given(x=close_versions, y=close_versions, z=close_versions)
@PROPERTY
def test_version_order_is_transitive(x: Version, y: Version, z: Version) -> None:
    if x <= y <= z:
        assert x <= z
    if x < y < z:
        assert x < z


@given(vs=st.lists(st.one_of(versions, close_versions), min_size=1, max_size=30))
@PROPERTY
def test_sorting_versions_matches_the_tuple_order(vs: list[Version]) -> None:
    ordered = sorted(vs)
    assert ordered == sorted(vs, key=lambda v: (v.timestamp, v.node_id))
    assert all(a <= b for a, b in itertools.pairwise(ordered))
    assert max(vs) == ordered[-1]


@given(
    clocks=st.lists(
        st.sampled_from(["a", "b", "c", "d", "e"]), min_size=2, max_size=5, unique=True
    ),
    wall=st.lists(st.tuples(st.integers(0, 4), st.integers(0, 20)), min_size=1, max_size=60),
)
@PROPERTY
def test_distinct_nodes_never_issue_equal_versions(
    clocks: list[str], wall: list[tuple[int, int]]
) -> None:
    """Two nodes may reach the same timestamp, but not the same version."""
    nodes = [HybridLogicalClock(node_id) for node_id in clocks]
    issued = [nodes[i % len(nodes)].tick(NOW_MS + now) for i, now in wall]
    assert len(set(issued)) == len(issued)


def test_a_peer_clock_far_ahead_does_not_drag_this_one_past_the_bound() -> None:
    now = [1_000_000]
    clock = HybridLogicalClock("n1", now_ms=lambda: now[0], max_peer_lead_ms=500)
    clock.observe_peer((now[0] + 30_000) << LOGICAL_BITS)  # a peer 30 s ahead
    assert physical_ms(clock.last) == now[0] + 500
    assert clock.peer_clocks_refused == 1  # counted, for the node to log
    clock.observe_peer((now[0] + 200) << LOGICAL_BITS)  # within the bound: adopted as is
    assert physical_ms(clock.last) == now[0] + 500
    assert clock.peer_clocks_refused == 1
    now[0] += 1_000
    clock.observe_peer((now[0] + 300) << LOGICAL_BITS)
    assert clock.last == (now[0] + 300) << LOGICAL_BITS


def test_a_record_version_is_observed_in_full_whatever_the_bound() -> None:
    clock = HybridLogicalClock("n1", now_ms=lambda: 1_000, max_peer_lead_ms=500)
    future = 90_000 << LOGICAL_BITS
    clock.observe(future)
    assert clock.tick(1_000).timestamp > future


def test_without_a_bound_a_peer_clock_is_adopted_in_full() -> None:
    clock = HybridLogicalClock("n1")
    clock.observe_peer(90_000 << LOGICAL_BITS)
    assert physical_ms(clock.last) == 90_000


def test_the_mark_moves_ahead_only_when_the_next_stamp_comes_near_it() -> None:
    window = MARK_WINDOW_MS << LOGICAL_BITS
    mark = next_mark(0, 1_000, 0)
    assert mark == (1_000 << LOGICAL_BITS) + window
    # Far enough ahead of the clock and of the wall clock: stays.
    assert next_mark(1_000 << LOGICAL_BITS, 1_000 + MARK_WINDOW_MS // 2 - 1, mark) is None
    # Half a window away, by the clock or by the wall clock: moves a window past it.
    near = (1_000 + MARK_WINDOW_MS // 2) << LOGICAL_BITS
    assert next_mark(near, 0, mark) == near + window
    assert next_mark(0, 1_000 + MARK_WINDOW_MS // 2, mark) == near + window


@given(st.integers(0, 1 << 60), st.integers(0, 1 << 40), st.integers(0, 1 << 60))
def test_a_stamp_after_the_mark_moved_stays_below_it(last: int, now_ms: int, mark: int) -> None:
    clock = HybridLogicalClock("a")
    clock.observe(last)
    mark = next_mark(last, now_ms, mark) or mark
    assert clock.tick(now_ms).timestamp < mark
