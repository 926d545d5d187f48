"""Fault schedules are a pure function of their seed, and keep to their bounds."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.support.nemesis import FAULT_KINDS, SKEWED_FAULTS, make_schedule


@given(st.integers(0, 2**32), st.floats(5, 300))
def test_the_same_seed_gives_the_same_schedule_within_the_run(seed: int, duration: float) -> None:
    schedule = make_schedule(seed, duration)
    assert schedule == make_schedule(seed, duration)
    for fault in schedule:
        assert fault.kind in FAULT_KINDS
        assert 1.0 <= fault.at < duration
        assert fault.hold > 0
        assert fault.at + fault.hold <= duration - 1.0 + 1e-9
        assert (fault.clock_offset_ms != 0) == (fault.kind in SKEWED_FAULTS)
    starts = [fault.at for fault in schedule]
    assert starts == sorted(starts)


def test_faults_overlap_and_every_kind_occurs_over_a_few_seeds() -> None:
    schedules = [make_schedule(seed, 30.0) for seed in range(20)]
    kinds = {fault.kind for schedule in schedules for fault in schedule}
    assert kinds == set(FAULT_KINDS)
    overlapping = sum(
        1 for schedule in schedules for a, b in itertools.pairwise(schedule) if b.at < a.at + a.hold
    )
    assert overlapping > 0
    assert make_schedule(1, 30.0) != make_schedule(2, 30.0)


def test_a_schedule_of_chosen_kinds_has_only_those() -> None:
    schedule = make_schedule(3, 60.0, ["pause", "clock-skew"])
    assert {fault.kind for fault in schedule} <= {"pause", "clock-skew"}
    with pytest.raises(ValueError, match="unknown fault kinds"):
        make_schedule(3, 60.0, ["meteor"])
