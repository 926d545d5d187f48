"""The clock verdict: within reach of a majority, beyond it, or not yet known."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ringkv.core.clock_offset import ClockVerdict, OffsetSample, check_clock, measure

MAX_MS = 500.0


def sample(offset_ms: float, *, rtt_ms: float = 2.0, at: float = 100.0) -> OffsetSample:
    return OffsetSample(offset_ms, rtt_ms / 2, at)


def verdict(samples: dict[str, OffsetSample], members: int, now: float = 100.0) -> ClockVerdict:
    return check_clock(samples, members, max_offset_ms=MAX_MS, now=now, fresh_for=5.0).verdict


def test_a_round_trip_gives_the_offset_from_its_midpoint() -> None:
    s = measure(round_trip_ms=10, peer_wall_ms=11_005, answered_wall_ms=1_010, taken_at=3.0)
    assert s.offset_ms == 10_000
    assert s.uncertainty_ms == 5
    assert s.taken_at == 3.0
    assert s.anchor_ms == 1_010 - 3_000
    with pytest.raises(ValueError, match="cannot take"):
        measure(round_trip_ms=-1, peer_wall_ms=0, answered_wall_ms=9, taken_at=0.0)


def test_samples_from_before_a_wall_clock_step_are_dropped() -> None:
    # Taken when wall - monotonic was 5,000 ms; the clock then stepped 10 s back.
    before = {"b": OffsetSample(0, 1, 100.0, 5_000), "c": OffsetSample(0, 1, 100.0, 5_000)}
    kept = check_clock(before, 3, max_offset_ms=MAX_MS, now=100.0, fresh_for=5.0, anchor_ms=5_050)
    assert kept.verdict is ClockVerdict.WITHIN
    stepped = check_clock(
        before, 3, max_offset_ms=MAX_MS, now=100.0, fresh_for=5.0, anchor_ms=-5_000
    )
    assert stepped.verdict is ClockVerdict.UNCHECKED


def test_a_lone_node_is_within_reach_of_itself() -> None:
    assert verdict({}, 1) is ClockVerdict.WITHIN


def test_agreeing_peers_make_it_within_and_one_far_peer_does_not_matter() -> None:
    samples = {"b": sample(30), "c": sample(-40), "d": sample(20_000), "e": sample(5)}
    check = check_clock(samples, 5, max_offset_ms=MAX_MS, now=100.0, fresh_for=5.0)
    assert check.verdict is ClockVerdict.WITHIN
    assert check.within == 4
    assert check.sampled == 4


def test_a_clock_far_from_a_majority_is_beyond_and_its_offset_is_the_median() -> None:
    samples = {"b": sample(-20_000), "c": sample(-20_100), "d": sample(-19_900)}
    check = check_clock(samples, 5, max_offset_ms=MAX_MS, now=100.0, fresh_for=5.0)
    assert check.verdict is ClockVerdict.BEYOND
    assert check.offset_ms == 20_000
    assert not check.may_stamp
    assert "beyond" in check.describe()


def test_too_few_fresh_samples_leave_it_unchecked() -> None:
    assert verdict({}, 3) is ClockVerdict.UNCHECKED
    stale = {"b": sample(0, at=90.0), "c": sample(0, at=90.0)}
    assert verdict(stale, 3) is ClockVerdict.UNCHECKED


def test_slow_round_trips_never_stop_a_busy_node_but_a_far_clock_still_shows() -> None:
    busy = {"b": sample(900, rtt_ms=3_000), "c": sample(-700, rtt_ms=2_000)}
    assert verdict(busy, 3) is ClockVerdict.WITHIN
    far = {"b": sample(-20_000, rtt_ms=3_000), "c": sample(-20_000, rtt_ms=3_000)}
    assert verdict(far, 3) is ClockVerdict.BEYOND


def test_two_clocks_that_disagree_with_no_third_both_stop() -> None:
    assert verdict({"b": sample(20_000)}, 3) is ClockVerdict.BEYOND
    assert verdict({"a": sample(-20_000)}, 3) is ClockVerdict.BEYOND


def test_an_uncertain_sample_counts_as_possibly_within() -> None:
    # 700 ms off, but the round trip leaves 300 ms of doubt: maybe 400 ms.
    assert verdict({"b": sample(700, rtt_ms=600)}, 2) is ClockVerdict.WITHIN


@given(st.lists(st.floats(-2_000, 2_000), min_size=0, max_size=8), st.integers(0, 4))
def test_the_verdict_counts_a_majority_of_the_members(offsets: list[float], down: int) -> None:
    """Exact samples of the live peers; ``down`` more members gave none."""
    members = len(offsets) + 1 + down
    samples = {f"n{i}": OffsetSample(offset, 0.0, 100.0) for i, offset in enumerate(offsets)}
    within = 1 + sum(1 for offset in offsets if abs(offset) <= MAX_MS)
    majority = members // 2 + 1
    if within >= majority:
        expected = ClockVerdict.WITHIN
    elif len(offsets) + 1 >= majority:
        expected = ClockVerdict.BEYOND
    else:
        expected = ClockVerdict.UNCHECKED
    assert verdict(samples, members) is expected


@given(st.lists(st.floats(-400, 400), min_size=2, max_size=8))
def test_clocks_within_the_bound_of_each_other_are_always_within(offsets: list[float]) -> None:
    samples = {f"n{i}": sample(offset) for i, offset in enumerate(offsets)}
    assert verdict(samples, len(offsets) + 1) is ClockVerdict.WITHIN
