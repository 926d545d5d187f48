"""Which watch events are news: repeats dropped, each key's versions in order."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ringkv.core import watch
from ringkv.core.hlc import LOGICAL_BITS
from ringkv.core.watch import RESUME_MARGIN, Delivered

events = st.lists(
    st.tuples(st.sampled_from([b"a", b"b", b"c"]), st.integers(1, 30), st.sampled_from("xy")),
    max_size=60,
)


@given(events)
def test_each_keys_events_pass_in_version_order_and_the_newest_always_passes(
    stream: list[tuple[bytes, int, str]],
) -> None:
    delivered = Delivered()
    passed: dict[bytes, list[tuple[int, str]]] = {}
    for key, timestamp, node in stream:
        if delivered.admit(key, (timestamp, node)):
            passed.setdefault(key, []).append((timestamp, node))
    for key, versions in passed.items():
        assert versions == sorted(set(versions))
        assert versions[-1] == max((t, n) for k, t, n in stream if k == key)


def test_the_heap_of_versions_stays_near_one_entry_per_key() -> None:
    delivered = Delivered()
    for timestamp in range(1, 10_000):
        assert delivered.admit(b"hot", (timestamp, "n1"))
    assert len(delivered) == 1
    assert len(delivered._by_age) <= 2 + 1024


def test_a_repeat_is_dropped_and_forgetting_keeps_what_a_resume_could_repeat(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(watch, "REMEMBERED_KEYS", 1)
    delivered = Delivered()
    recent = 100 * RESUME_MARGIN
    old = recent - 2 * RESUME_MARGIN
    assert delivered.admit(b"old", (old, "n1"))
    assert delivered.admit(b"recent", (recent, "n1"))
    assert not delivered.admit(b"recent", (recent, "n1"))
    assert not delivered.admit(b"recent", (recent - 1, "n2"))
    delivered.forget_below(recent)
    assert len(delivered) == 1
    # Still remembered: a replay from ``recent`` may send it again.
    assert not delivered.admit(b"recent", (recent, "n1"))
    # Forgotten (past the cap, well below the resume version): a late copy
    # of it, or anything older than it, can no longer be put in order.
    assert not delivered.admit(b"old", (old, "n1"))
    assert not delivered.admit(b"other", (old - 1, "n1"))
    assert delivered.admit(b"old", (old + 1, "n1"))


def test_under_the_cap_nothing_is_forgotten() -> None:
    delivered = Delivered()
    assert delivered.admit(b"k", (1, "n1"))
    delivered.forget_below(100 * RESUME_MARGIN)
    assert not delivered.admit(b"k", (1, "n1"))
    assert RESUME_MARGIN == 5_000 << LOGICAL_BITS
