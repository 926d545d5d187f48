"""Tests for ringkv.core.merkle: trees that agree exactly when the records do."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ringkv.core.hlc import LOGICAL_BITS, Version
from ringkv.core.merkle import (
    DEFAULT_DEPTH,
    MAX_DEPTH,
    MerkleTree,
    build,
    differing_leaves,
    leaf_index,
    leaf_range,
    purgeable,
    record_hash,
)
from ringkv.core.records import NO_EXPIRY, Record
from ringkv.core.ring import TOKEN_SPACE
from ringkv.core.tokens import MAX_TOKEN, token_of

PROPERTY = settings(max_examples=200, deadline=None)

NOW_MS = 1_700_000_000_000
HORIZON = NOW_MS - 60_000


def ms(physical: int) -> int:
    """A timestamp at ``physical`` milliseconds."""
    return physical << LOGICAL_BITS


depths = st.integers(min_value=0, max_value=12)
# About half of the tombstones are older than HORIZON.
versions = st.builds(
    Version, st.integers(min_value=0, max_value=ms(2 * NOW_MS)), st.sampled_from(["a", "b", "ab"])
)
expiries = st.sampled_from([NO_EXPIRY, HORIZON - 5, HORIZON + 5])


@st.composite
def record_sets(draw: st.DrawFn, min_size: int = 0) -> list[Record]:
    """Records of distinct keys, as one replica holds them."""
    by_key = draw(st.dictionaries(st.binary(max_size=12), versions, min_size=min_size, max_size=40))
    records = []
    for key, version in by_key.items():
        tombstone = draw(st.booleans())
        expiry = NO_EXPIRY if tombstone else draw(expiries)
        records.append(Record(key, b"", version, tombstone=tombstone, expires_at_ms=expiry))
    return records


@PROPERTY
@given(records=record_sets(), depth=depths, seed=st.integers())
def test_the_same_records_in_any_order_give_the_same_tree(
    records: list[Record], depth: int, seed: int
) -> None:
    shuffled = list(records)
    random.Random(seed).shuffle(shuffled)

    tree = build(records, depth)
    again = build(shuffled, depth)

    assert again == tree
    assert again.root == tree.root
    assert differing_leaves(tree, again) == []


@PROPERTY
@given(records=record_sets(min_size=1), depth=depths, data=st.data())
def test_one_changed_record_changes_its_leaf_and_no_other(
    records: list[Record], depth: int, data: st.DataObject
) -> None:
    index = data.draw(st.integers(0, len(records) - 1))
    old = records[index]
    new = data.draw(
        st.one_of(
            versions.filter(lambda v: v != old.version).map(
                lambda v: Record(old.key, b"", v, old.tombstone, old.expires_at_ms)
            ),
            st.just(Record(old.key, b"", old.version, tombstone=not old.tombstone)),
        )
    )
    changed = [*records[:index], new, *records[index + 1 :]]

    before, after = build(records, depth), build(changed, depth)

    assert differing_leaves(before, after) == [leaf_index(token_of(old.key), depth)]
    assert before.root != after.root


@PROPERTY
@given(records=record_sets(min_size=1), depth=depths, data=st.data())
def test_a_missing_record_changes_its_leaf_and_no_other(
    records: list[Record], depth: int, data: st.DataObject
) -> None:
    index = data.draw(st.integers(0, len(records) - 1))
    fewer = records[:index] + records[index + 1 :]

    diff = differing_leaves(build(records, depth), build(fewer, depth))

    assert diff == [leaf_index(token_of(records[index].key), depth)]


def test_the_value_is_not_hashed() -> None:
    """Equal versions of a key carry equal values: only the version is compared."""
    version = Version(ms(5), "a")
    assert record_hash(Record(b"k", b"one", version)) == record_hash(Record(b"k", b"two", version))


def test_record_hashes_keep_key_and_node_id_apart() -> None:
    """The same bytes split differently between key and node id are different records."""
    first = Record(b"a", b"", Version(1, "bc"))
    second = Record(b"ab", b"", Version(1, "c"))
    assert record_hash(first) != record_hash(second)


def test_an_empty_tree_has_zero_leaves() -> None:
    tree = build([], 3)
    assert tree.leaves == (0,) * 8
    assert tree == MerkleTree(3, (0,) * 8)
    assert build([]).depth == DEFAULT_DEPTH


@PROPERTY
@given(depth=depths, token=st.integers(0, MAX_TOKEN))
def test_a_token_lies_in_the_range_of_its_leaf(depth: int, token: int) -> None:
    start, end = leaf_range(leaf_index(token, depth), depth)
    assert start <= token < end


@pytest.mark.parametrize("depth", [0, 1, 2, 5, 10])
def test_leaf_ranges_cover_the_token_space_exactly_once(depth: int) -> None:
    ranges = [leaf_range(index, depth) for index in range(1 << depth)]

    assert ranges[0][0] == 0
    assert ranges[-1][1] == TOKEN_SPACE
    for (_, end), (start, _) in itertools.pairwise(ranges):
        assert end == start
    assert all(start < end for start, end in ranges)


@PROPERTY
@given(depth=st.integers(1, MAX_DEPTH), data=st.data())
def test_leaf_range_ends_are_the_next_leaf_starts(depth: int, data: st.DataObject) -> None:
    index = data.draw(st.integers(0, (1 << depth) - 2))
    start, end = leaf_range(index, depth)
    assert leaf_index(start, depth) == index
    assert leaf_index(end - 1, depth) == index
    assert leaf_index(end, depth) == index + 1


def test_depths_out_of_range_are_refused() -> None:
    with pytest.raises(ValueError, match="depth"):
        build([], MAX_DEPTH + 1)
    with pytest.raises(ValueError, match="depth"):
        leaf_range(0, -1)
    with pytest.raises(ValueError, match="leaf 4"):
        leaf_range(4, 2)
    with pytest.raises(ValueError, match="has 4 leaves"):
        MerkleTree(2, (0, 0, 0))
    with pytest.raises(ValueError, match="depths 1 and 2"):
        differing_leaves(build([], 1), build([], 2))


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        pytest.param(Record(b"k", b"", Version(ms(HORIZON - 1), "a"), True), True, id="old-tomb"),
        pytest.param(Record(b"k", b"", Version(ms(HORIZON), "a"), True), False, id="tomb-at"),
        pytest.param(Record(b"k", b"", Version(ms(NOW_MS), "a"), True), False, id="new-tomb"),
        pytest.param(Record(b"k", b"v", Version(ms(1), "a")), False, id="old-value"),
        pytest.param(
            Record(b"k", b"v", Version(ms(1), "a"), expires_at_ms=HORIZON - 1), True, id="expired"
        ),
        pytest.param(
            Record(b"k", b"v", Version(ms(1), "a"), expires_at_ms=HORIZON + 1),
            False,
            id="expired-recently",
        ),
        pytest.param(
            Record(b"k", b"v", Version(ms(1), "a"), expires_at_ms=NO_EXPIRY), False, id="forever"
        ),
    ],
)
def test_purgeable(record: Record, expected: bool) -> None:
    assert purgeable(record, HORIZON) is expected


@PROPERTY
@given(records=record_sets(), depth=depths)
def test_purgeable_records_are_left_out_with_a_horizon(records: list[Record], depth: int) -> None:
    kept = [r for r in records if not purgeable(r, HORIZON)]

    tree = build(records, depth, purge_horizon_ms=HORIZON)

    assert tree == build(kept, depth)
    if len(kept) < len(records):
        assert build(records, depth) != tree
