"""Tests for ringkv.core.ring: the consistent-hash ring.

The load and movement properties are measured on a fixed sample of random
keys, as a client's keys would land on the ring, and checked exactly on the
token space through ``ranges`` and ``ownership``.
"""

from __future__ import annotations

import random
from bisect import bisect_right
from collections import Counter
from collections.abc import Callable, Sequence
from itertools import pairwise

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ringkv.core import ring as ring_module
from ringkv.core.ring import (
    DEFAULT_VNODES_PER_NODE,
    TOKEN_SPACE,
    RangeMove,
    Ring,
    TokenRange,
    moved_ranges,
    vnode_token,
)
from ringkv.core.tokens import MAX_TOKEN, token_of

# Small rings (a few vnodes) are cheap and make walks wrap and skip repeated
# nodes often; the load tests need the default vnode count and real sizes.
STRUCTURE = settings(max_examples=150, deadline=None)
LOAD = settings(max_examples=10, deadline=None)

KEY_COUNT = 20_000
_KEYS_RNG = random.Random(0x5EED)
KEY_TOKENS: tuple[int, ...] = tuple(token_of(_KEYS_RNG.randbytes(16)) for _ in range(KEY_COUNT))
"""Tokens of 20,000 random 16-byte keys, the same in every run."""

BALANCE_LIMIT = 1.25
"""The busiest node may replicate at most this many times the mean number of keys."""

# The share of keys that changes when a node joins or leaves, relative to its
# expected value min(n, k) / k. The spread has two sources: that node's share
# of the token space (standard deviation ~1/sqrt(vnodes) = 4.4% with 512
# vnodes) and sampling (at most 1/sqrt(20,000 / 16) = 2.8%, for the smallest
# share measured). Together ~5.3%: the band is over 5.5 of those either side,
# so it fails only if the ring moves the wrong amount of data, never by chance.
MOVED_LOW = 0.7
MOVED_HIGH = 1.35

node_ids = st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=12)


def members(min_size: int, max_size: int) -> st.SearchStrategy[list[str]]:
    """Distinct node ids, with the count spread evenly over the range."""
    return st.integers(min_size, max_size).flatmap(
        lambda size: st.lists(node_ids, min_size=size, max_size=size, unique=True)
    )


tokens = st.integers(min_value=0, max_value=MAX_TOKEN)
replica_counts = st.integers(min_value=1, max_value=6)
small_vnode_counts = st.integers(min_value=1, max_value=8)


def sorted_vnodes(nodes: Sequence[str], vnodes_per_node: int) -> list[tuple[int, str]]:
    return sorted((vnode_token(node, i), node) for node in nodes for i in range(vnodes_per_node))


def reference_preference_list(
    nodes: Sequence[str], vnodes_per_node: int, token: int, n: int
) -> tuple[str, ...]:
    """The preference list as the definition says it, with no cleverness."""
    return walk_clockwise(sorted_vnodes(nodes, vnodes_per_node), token, n)


def walk_clockwise(vnodes: Sequence[tuple[int, str]], token: int, n: int) -> tuple[str, ...]:
    """The first n distinct nodes of sorted (token, node) vnodes, from ``token`` on."""
    if not vnodes:
        return ()
    first = next((i for i, (vnode, _) in enumerate(vnodes) if vnode >= token), 0)
    found: list[str] = []
    for step in range(len(vnodes)):
        node = vnodes[(first + step) % len(vnodes)][1]
        if node not in found:
            found.append(node)
            if len(found) == n:
                break
    return tuple(found)


def range_containing(ranges: Sequence[TokenRange], token: int) -> TokenRange:
    starts = [token_range.start for token_range in ranges]
    return ranges[bisect_right(starts, token) - 1]


def vnode_tokens_of(ring: Ring) -> list[int]:
    return [vnode_token(node, i) for node in ring.nodes for i in range(ring.vnodes_per_node)]


def probe_tokens(ring: Ring) -> list[int]:
    """Tokens where an off-by-one would show: the ends, every vnode token and its neighbours."""
    probes = {0, 1, MAX_TOKEN - 1, MAX_TOKEN}
    for vnode in vnode_tokens_of(ring):
        probes.update(t for t in (vnode - 1, vnode, vnode + 1) if 0 <= t <= MAX_TOKEN)
    return sorted(probes)


def key_lists(ring: Ring, n: int) -> list[tuple[str, ...]]:
    preference_list = ring.preference_list
    return [preference_list(token, n) for token in KEY_TOKENS]


def key_load(ring: Ring, n: int) -> Counter[str]:
    """How many of the sample keys each node replicates."""
    load: Counter[str] = Counter()
    for replicas in key_lists(ring, n):
        load.update(replicas)
    return load


def changed_share(before: list[tuple[str, ...]], after: list[tuple[str, ...]]) -> float:
    return sum(old != new for old, new in zip(before, after, strict=True)) / KEY_COUNT


# --- vnode tokens and constants ----------------------------------------------


def test_constants() -> None:
    assert TOKEN_SPACE == 2**64 == MAX_TOKEN + 1
    assert DEFAULT_VNODES_PER_NODE == 512
    assert Ring().vnodes_per_node == DEFAULT_VNODES_PER_NODE


def test_vnode_token_hashes_id_slash_index() -> None:
    assert vnode_token("node-a", 0) == token_of(b"node-a/0")
    assert vnode_token("n\u00e9", 17) == token_of("n\u00e9/17".encode())


# Every node must place vnodes identically, in every version: a change here
# moves data between nodes. Computed once with xxh3-64 of "node-a/0" etc.;
# do not update these to make the test pass.
PINNED_VNODE_TOKENS = [
    ("node-a", 0, 1822970395644863546),
    ("node-a", 1, 7198929747578728894),
    ("node-b", 1023, 14311531244626254463),
]


@pytest.mark.parametrize(("node", "index", "token"), PINNED_VNODE_TOKENS)
def test_pinned_vnode_tokens(node: str, index: int, token: int) -> None:
    assert vnode_token(node, index) == token


# --- construction ------------------------------------------------------------


def test_member_order_does_not_matter() -> None:
    forwards = Ring(("a", "b", "c"), vnodes_per_node=8)
    backwards = Ring(("c", "b", "a"), vnodes_per_node=8)
    assert forwards == backwards
    assert forwards.nodes == ("a", "b", "c")
    assert forwards.ranges(2) == backwards.ranges(2)


def test_rings_differ_by_epoch_and_vnodes() -> None:
    assert Ring(("a",), epoch=1) != Ring(("a",), epoch=2)
    assert Ring(("a",), vnodes_per_node=2) != Ring(("a",), vnodes_per_node=3)


def test_ring_is_hashable_and_frozen() -> None:
    ring = Ring(("a", "b"), vnodes_per_node=4)
    assert hash(ring) == hash(Ring(("b", "a"), vnodes_per_node=4))
    with pytest.raises(AttributeError):
        ring.epoch = 5  # type: ignore[misc]


@pytest.mark.parametrize(
    ("nodes", "epoch", "vnodes", "message"),
    [
        (("a", "b", "a"), 0, 4, "listed twice"),
        (("a", ""), 0, 4, "must not be empty"),
        (("a",), -1, 4, "epoch"),
        (("a",), 0, 0, "vnodes_per_node"),
        (("a",), 0, -3, "vnodes_per_node"),
    ],
)
def test_invalid_rings_are_rejected(
    nodes: tuple[str, ...], epoch: int, vnodes: int, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        Ring(nodes, epoch=epoch, vnodes_per_node=vnodes)


def test_empty_ring() -> None:
    ring = Ring()
    assert ring.nodes == ()
    assert ring.preference_list(0, 3) == ()
    assert ring.preference_list(MAX_TOKEN, 1) == ()
    assert ring.replicas(b"key", 2) == ()
    assert ring.ranges(3) == [TokenRange(0, TOKEN_SPACE, ())]
    assert ring.ownership(3) == {}


def test_single_node_owns_everything() -> None:
    ring = Ring(("solo",), vnodes_per_node=3)
    assert ring.preference_list(0, 3) == ("solo",)
    assert ring.preference_list(MAX_TOKEN, 1) == ("solo",)
    assert ring.ranges(2) == [TokenRange(0, TOKEN_SPACE, ("solo",))]
    assert ring.ownership(3) == {"solo": 1.0}


# --- preference lists --------------------------------------------------------


@given(nodes=members(1, 8), vnodes=small_vnode_counts, token=tokens, n=replica_counts)
@STRUCTURE
def test_preference_list_matches_the_definition(
    nodes: list[str], vnodes: int, token: int, n: int
) -> None:
    ring = Ring(tuple(nodes), vnodes_per_node=vnodes)
    replicas = ring.preference_list(token, n)
    assert replicas == reference_preference_list(nodes, vnodes, token, n)
    assert len(replicas) == min(n, len(nodes))
    assert len(set(replicas)) == len(replicas)
    assert set(replicas) <= set(nodes)


@given(nodes=members(1, 16), token=tokens, n=replica_counts, seed=st.randoms())
@settings(max_examples=30, deadline=None)
def test_preference_list_is_independent_of_member_order(
    nodes: list[str], token: int, n: int, seed: random.Random
) -> None:
    shuffled = list(nodes)
    seed.shuffle(shuffled)
    ring = Ring(tuple(nodes))
    same = Ring(tuple(shuffled))
    replicas = ring.preference_list(token, n)
    assert replicas == same.preference_list(token, n)
    assert replicas == ring.preference_list(token, n)  # and the same when asked again
    assert len(replicas) == min(n, len(nodes))
    assert len(set(replicas)) == len(replicas)


@given(nodes=members(1, 6), vnodes=small_vnode_counts, key=st.binary(max_size=64))
@STRUCTURE
def test_replicas_of_a_key_use_its_token(nodes: list[str], vnodes: int, key: bytes) -> None:
    ring = Ring(tuple(nodes), vnodes_per_node=vnodes)
    for n in (1, 2, 3, 5):
        assert ring.replicas(key, n) == ring.preference_list(token_of(key), n)


def test_preference_list_of_more_nodes_than_the_ring_has() -> None:
    ring = Ring(("a", "b", "c"), vnodes_per_node=4)
    for token in probe_tokens(ring):
        everyone = ring.preference_list(token, 3)
        assert sorted(everyone) == ["a", "b", "c"]
        assert ring.preference_list(token, 10) == everyone
        assert ring.preference_list(token, 2) == everyone[:2]


def test_lists_longer_than_the_cache() -> None:
    nodes = [f"node-{i}" for i in range(9)]
    ring = Ring(tuple(nodes), vnodes_per_node=5)
    for token in probe_tokens(ring):
        for n in (4, 7, 9, 12):
            assert ring.preference_list(token, n) == reference_preference_list(nodes, 5, token, n)
    # The clockwise orders built for them are a cache, not part of the value.
    assert ring == Ring(tuple(nodes), vnodes_per_node=5)
    assert hash(ring) == hash(Ring(tuple(nodes), vnodes_per_node=5))
    assert ring.with_node("node-9").preference_list(0, 10) == reference_preference_list(
        [*nodes, "node-9"], 5, 0, 10
    )


def test_every_node_in_clockwise_order_on_a_default_ring() -> None:
    # The server asks for all members (replicas, then stand-ins) on every request.
    nodes = [f"node-{i}" for i in range(16)]
    ring = Ring(tuple(nodes))
    vnodes = sorted_vnodes(nodes, DEFAULT_VNODES_PER_NODE)
    probes = [*KEY_TOKENS[:300], 0, MAX_TOKEN, vnodes[0][0], vnodes[-1][0], vnodes[-1][0] + 1]
    for token in probes:
        everyone = ring.preference_list(token, len(nodes))
        assert everyone == walk_clockwise(vnodes, token, len(nodes))
        assert ring.preference_list(token, 5) == everyone[:5]
        assert ring.preference_list(token, 3) == everyone[:3]


@pytest.mark.parametrize("token", [-1, TOKEN_SPACE, TOKEN_SPACE + 5])
def test_tokens_outside_the_space_are_rejected(token: int) -> None:
    with pytest.raises(ValueError, match="token"):
        Ring(("a",)).preference_list(token, 1)


@pytest.mark.parametrize("method", ["preference_list", "ranges", "ownership"])
@pytest.mark.parametrize("n", [0, -1])
def test_list_length_below_one_is_rejected(method: str, n: int) -> None:
    ring = Ring(("a",), vnodes_per_node=2)
    call: dict[str, Callable[[], object]] = {
        "preference_list": lambda: ring.preference_list(5, n),
        "ranges": lambda: ring.ranges(n),
        "ownership": lambda: ring.ownership(n),
    }
    with pytest.raises(ValueError, match="n >= 1"):
        call[method]()


# --- boundary tokens ---------------------------------------------------------


def test_boundary_tokens_with_one_vnode_per_node() -> None:
    nodes = ("a", "b", "c")
    ring = Ring(nodes, vnodes_per_node=1)
    ordered = sorted((vnode_token(node, 0), node) for node in nodes)
    (first, first_node), (middle, middle_node), (last, last_node) = ordered
    # So that every case below is a real boundary:
    assert first > 0
    assert last < MAX_TOKEN

    # A vnode owns its own token and everything since the previous vnode.
    assert ring.preference_list(first, 1) == (first_node,)
    assert ring.preference_list(first + 1, 1) == (middle_node,)
    assert ring.preference_list(middle, 3) == (middle_node, last_node, first_node)
    assert ring.preference_list(middle + 1, 3) == (last_node, first_node, middle_node)
    assert ring.preference_list(last, 2) == (last_node, first_node)
    # Past the last vnode, and from zero, the first vnode owns the tokens.
    assert ring.preference_list(last + 1, 2) == (first_node, middle_node)
    assert ring.preference_list(MAX_TOKEN, 2) == (first_node, middle_node)
    assert ring.preference_list(0, 2) == (first_node, middle_node)

    assert ring.ranges(1) == [
        TokenRange(0, first + 1, (first_node,)),
        TokenRange(first + 1, middle + 1, (middle_node,)),
        TokenRange(middle + 1, last + 1, (last_node,)),
        TokenRange(last + 1, TOKEN_SPACE, (first_node,)),
    ]


@given(nodes=members(2, 6), vnodes=small_vnode_counts, n=replica_counts)
@STRUCTURE
def test_vnode_tokens_belong_to_their_own_vnode(nodes: list[str], vnodes: int, n: int) -> None:
    ring = Ring(tuple(nodes), vnodes_per_node=vnodes)
    for node in nodes:
        for i in range(vnodes):
            token = vnode_token(node, i)
            # Only a hash collision with a smaller id could take the token away.
            assert ring.preference_list(token, n)[0] == node
    assert ring.preference_list(MAX_TOKEN, n) == ring.preference_list(0, n)


def test_equal_vnode_tokens_go_to_the_smaller_node_id(monkeypatch: pytest.MonkeyPatch) -> None:
    # Real collisions are vanishingly rare, so fake the hash: every node's
    # vnode i lands on token 1000 * (i + 1).
    monkeypatch.setattr(ring_module, "vnode_token", lambda node, i: 1000 * (i + 1))
    ring = Ring(("b", "c", "a"), vnodes_per_node=2)
    assert ring.preference_list(1000, 3) == ("a", "b", "c")
    assert ring.preference_list(1500, 1) == ("a",)
    assert ring.preference_list(2001, 2) == ("a", "b")  # wraps to the first vnode
    assert ring.ranges(2) == [TokenRange(0, TOKEN_SPACE, ("a", "b"))]
    assert ring.ownership(1) == {"a": 1.0, "b": 0.0, "c": 0.0}
    # The later vnodes at a shared token still count for longer lists, so a
    # join still only inserts the new node into every list.
    assert ring.with_node("0").preference_list(5, 4) == ("0", "a", "b", "c")


# --- membership changes ------------------------------------------------------


def test_with_and_without_node_advance_the_epoch() -> None:
    ring = Ring(("a", "b"), epoch=7, vnodes_per_node=4)
    grown = ring.with_node("c")
    assert grown.epoch == 8
    assert grown.nodes == ("a", "b", "c")
    assert grown.vnodes_per_node == 4
    shrunk = grown.without_node("a")
    assert shrunk.epoch == 9
    assert shrunk.nodes == ("b", "c")
    emptied = shrunk.without_node("b").without_node("c")
    assert emptied.epoch == 11
    assert emptied.nodes == ()
    assert emptied.preference_list(12345, 2) == ()
    assert Ring().with_node("z").preference_list(12345, 2) == ("z",)
    assert ring.epoch == 7  # rings are values: the original is unchanged
    assert ring.nodes == ("a", "b")


def test_membership_change_errors() -> None:
    ring = Ring(("a", "b"), vnodes_per_node=4)
    with pytest.raises(ValueError, match="already"):
        ring.with_node("a")
    with pytest.raises(ValueError, match="not in the ring"):
        ring.without_node("c")
    with pytest.raises(ValueError, match="must not be empty"):
        ring.with_node("")


@given(nodes=members(1, 8), vnodes=small_vnode_counts, newcomer=node_ids)
@STRUCTURE
def test_changed_ring_equals_a_ring_built_from_scratch(
    nodes: list[str], vnodes: int, newcomer: str
) -> None:
    ring = Ring(tuple(nodes), epoch=3, vnodes_per_node=vnodes)
    if newcomer not in nodes:
        grown = ring.with_node(newcomer)
        rebuilt = Ring((*nodes, newcomer), epoch=4, vnodes_per_node=vnodes)
        assert grown == rebuilt
        assert grown.ranges(3) == rebuilt.ranges(3)
    leaver = nodes[0]
    shrunk = ring.without_node(leaver)
    rebuilt = Ring(tuple(nodes[1:]), epoch=4, vnodes_per_node=vnodes)
    assert shrunk == rebuilt
    assert shrunk.ranges(3) == rebuilt.ranges(3)


# --- ranges ------------------------------------------------------------------


def assert_ranges_tile_the_token_space(ranges: Sequence[TokenRange]) -> None:
    assert ranges[0].start == 0
    assert ranges[-1].end == TOKEN_SPACE
    for token_range in ranges:
        assert token_range.start < token_range.end
    for before, after in pairwise(ranges):
        assert before.end == after.start
    assert sum(token_range.width for token_range in ranges) == TOKEN_SPACE


@given(
    nodes=members(1, 7),
    vnodes=small_vnode_counts,
    n=replica_counts,
    samples=st.lists(tokens, max_size=30),
)
@STRUCTURE
def test_ranges_tile_the_space_and_agree_with_preference_lists(
    nodes: list[str], vnodes: int, n: int, samples: list[int]
) -> None:
    ring = Ring(tuple(nodes), vnodes_per_node=vnodes)
    ranges = ring.ranges(n)
    assert_ranges_tile_the_token_space(ranges)
    # Maximal runs: only the run across zero is split, into the first and last range.
    for before, after in pairwise(ranges):
        assert before.replicas != after.replicas
    # The list is constant on a vnode's arc, so checking each range's ends,
    # every vnode token and its neighbours checks every token.
    for token_range in ranges:
        assert ring.preference_list(token_range.start, n) == token_range.replicas
        assert ring.preference_list(token_range.end - 1, n) == token_range.replicas
    for token in [*probe_tokens(ring), *samples]:
        found = range_containing(ranges, token)
        assert token in found
        assert ring.preference_list(token, n) == found.replicas


def test_ranges_of_a_default_ring_agree_with_key_lists() -> None:
    ring = Ring(tuple(f"node-{i}" for i in range(5)))
    for n in (1, 3):
        ranges = ring.ranges(n)
        assert_ranges_tile_the_token_space(ranges)
        lists = key_lists(ring, n)
        for token, replicas in zip(KEY_TOKENS[:2000], lists, strict=False):
            assert range_containing(ranges, token).replicas == replicas


def test_wrap_around_run_is_split_at_zero() -> None:
    ring = Ring(("a", "b", "c"), vnodes_per_node=4)
    ranges = ring.ranges(2)
    last_vnode = max(vnode_tokens_of(ring))
    assert ranges[-1] == TokenRange(ranges[-1].start, TOKEN_SPACE, ranges[0].replicas)
    assert ranges[-1].start <= last_vnode + 1
    assert ranges[0].start == 0
    assert ranges[0].replicas == ring.preference_list(0, 2) == ring.preference_list(MAX_TOKEN, 2)


def test_token_range_membership_is_half_open() -> None:
    token_range = TokenRange(10, 20, ("a",))
    assert 10 in token_range
    assert 19 in token_range
    assert 20 not in token_range
    assert 9 not in token_range
    assert token_range.width == 10


# --- ownership ---------------------------------------------------------------


@given(nodes=members(1, 8), vnodes=small_vnode_counts, n=replica_counts)
@STRUCTURE
def test_ownership_adds_up_to_the_replica_count(nodes: list[str], vnodes: int, n: int) -> None:
    ring = Ring(tuple(nodes), vnodes_per_node=vnodes)
    shares = ring.ownership(n)
    assert set(shares) == set(nodes)
    assert all(0.0 <= share <= 1.0 for share in shares.values())
    assert sum(shares.values()) == pytest.approx(min(n, len(nodes)))
    widths = Counter[str]()
    for token_range in ring.ranges(n):
        widths.update(dict.fromkeys(token_range.replicas, token_range.width))
    assert shares == {node: widths[node] / TOKEN_SPACE for node in nodes}


def test_ownership_matches_the_share_of_keys() -> None:
    ring = Ring(tuple(f"node-{i}" for i in range(6)))
    for n in (1, 3):
        load = key_load(ring, n)
        for node, share in ring.ownership(n).items():
            # 20,000 keys: sampling error of a ~1/6 or ~1/2 share is < 1%.
            assert load[node] / KEY_COUNT == pytest.approx(share, abs=0.02)


# --- balance -----------------------------------------------------------------


@given(nodes=members(3, 16))
@LOAD
@example(nodes=[f"node-{i}" for i in range(16)])
def test_busiest_node_holds_at_most_a_quarter_more_than_the_mean(nodes: list[str]) -> None:
    ring = Ring(tuple(nodes))
    for n in (1, 3):
        load = key_load(ring, n)
        mean = KEY_COUNT * min(n, len(nodes)) / len(nodes)
        busiest = max(load[node] for node in nodes)
        assert busiest <= BALANCE_LIMIT * mean, (n, busiest / mean)
        shares = ring.ownership(n)
        assert max(shares.values()) <= BALANCE_LIMIT * min(n, len(nodes)) / len(nodes)


# --- movement ----------------------------------------------------------------


def assert_join_only_inserts(
    before: list[tuple[str, ...]], after: list[tuple[str, ...]], newcomer: str, size: int
) -> None:
    """Each list is the old one with the newcomer inserted and the last node dropped."""
    for old, new in zip(before, after, strict=True):
        assert len(new) == size
        if newcomer in new:
            assert tuple(node for node in new if node != newcomer) == old[: size - 1]
        else:
            assert new == old


@given(nodes=members(2, 16), newcomer=node_ids)
@LOAD
@example(nodes=[f"node-{i}" for i in range(15)], newcomer="node-15")
@example(nodes=["a", "b"], newcomer="c")
def test_a_join_moves_keys_only_to_the_new_node(nodes: list[str], newcomer: str) -> None:
    if newcomer in nodes:
        newcomer = newcomer + "-new"
    ring = Ring(tuple(nodes))
    grown = ring.with_node(newcomer)
    size = len(grown.nodes)  # the newcomer is the k-th node
    for n in (1, 3):
        before, after = key_lists(ring, n), key_lists(grown, n)
        assert_join_only_inserts(before, after, newcomer, min(n, size))
        expected = min(n, size) / size
        assert MOVED_LOW * expected <= changed_share(before, after) <= MOVED_HIGH * expected
        # Exactly: the tokens that move are the ones the newcomer now replicates.
        moves = moved_ranges(ring, grown, n)
        assert sum(move.width for move in moves) / TOKEN_SPACE == grown.ownership(n)[newcomer]
        for move in moves:
            assert move.gained == (newcomer,)
            assert len(move.lost) == (1 if len(nodes) >= n else 0)


@given(nodes=members(3, 16), leaver_index=st.integers(min_value=0))
@LOAD
@example(nodes=[f"node-{i}" for i in range(16)], leaver_index=3)
def test_a_leave_moves_only_the_leavers_keys(nodes: list[str], leaver_index: int) -> None:
    leaver = nodes[leaver_index % len(nodes)]
    ring = Ring(tuple(nodes))
    shrunk = ring.without_node(leaver)
    size = len(nodes)  # the leaver is one of k nodes
    for n in (1, 3):
        before, after = key_lists(ring, n), key_lists(shrunk, n)
        for old, new in zip(before, after, strict=True):
            assert len(new) == min(n, size - 1)
            if leaver in old:
                # The leaver drops out and the next node clockwise joins the end.
                assert new[: len(old) - 1] == tuple(node for node in old if node != leaver)
            else:
                assert new == old
        expected = min(n, size) / size
        assert MOVED_LOW * expected <= changed_share(before, after) <= MOVED_HIGH * expected
        moves = moved_ranges(ring, shrunk, n)
        assert sum(move.width for move in moves) / TOKEN_SPACE == ring.ownership(n)[leaver]
        for move in moves:
            assert move.lost == (leaver,)
            assert len(move.gained) == (1 if len(nodes) > n else 0)


# --- moved_ranges ------------------------------------------------------------


def assert_moves_agree_with_preference_lists(old: Ring, new: Ring, n: int) -> None:
    moves = moved_ranges(old, new, n)
    for before, after in pairwise(moves):
        assert before.end <= after.start
        if before.end == after.start:  # touching moves are merged unless they differ
            assert (before.old_replicas, before.new_replicas) != (
                after.old_replicas,
                after.new_replicas,
            )
    boundaries = {0, MAX_TOKEN} | {m.start for m in moves} | {m.end - 1 for m in moves}
    probes = sorted({*probe_tokens(old), *probe_tokens(new), *boundaries})
    starts = [move.start for move in moves]
    for token in probes:
        old_list, new_list = old.preference_list(token, n), new.preference_list(token, n)
        index = bisect_right(starts, token) - 1
        move = moves[index] if index >= 0 and token in moves[index] else None
        if old_list == new_list:
            assert move is None, token
        else:
            assert move is not None, token
            assert (move.old_replicas, move.new_replicas) == (old_list, new_list)


@given(
    old_nodes=members(0, 6),
    new_nodes=members(0, 6),
    vnodes=small_vnode_counts,
    n=replica_counts,
)
@STRUCTURE
def test_moved_ranges_between_any_two_rings(
    old_nodes: list[str], new_nodes: list[str], vnodes: int, n: int
) -> None:
    old = Ring(tuple(old_nodes), vnodes_per_node=vnodes)
    new = Ring(tuple(new_nodes), epoch=1, vnodes_per_node=vnodes)
    assert_moves_agree_with_preference_lists(old, new, n)


@given(nodes=members(1, 7), vnodes=small_vnode_counts, newcomer=node_ids, n=replica_counts)
@STRUCTURE
def test_moved_ranges_of_a_join_and_a_leave(
    nodes: list[str], vnodes: int, newcomer: str, n: int
) -> None:
    ring = Ring(tuple(nodes), vnodes_per_node=vnodes)
    if newcomer not in nodes:
        assert_moves_agree_with_preference_lists(ring, ring.with_node(newcomer), n)
    assert_moves_agree_with_preference_lists(ring, ring.without_node(nodes[-1]), n)


def test_moved_ranges_of_the_same_ring_are_empty() -> None:
    ring = Ring(("a", "b", "c"), vnodes_per_node=16)
    assert moved_ranges(ring, ring, 2) == []
    assert moved_ranges(ring, Ring(("c", "a", "b"), epoch=5, vnodes_per_node=16), 2) == []


def test_moved_ranges_agree_with_key_lists() -> None:
    ring = Ring(tuple(f"node-{i}" for i in range(4)))
    grown = ring.with_node("node-4")
    moves = moved_ranges(ring, grown, 2)
    starts = [move.start for move in moves]
    for token, old, new in zip(KEY_TOKENS, key_lists(ring, 2), key_lists(grown, 2), strict=True):
        index = bisect_right(starts, token) - 1
        inside = index >= 0 and token in moves[index]
        assert inside == (old != new)


def test_range_move_gained_and_lost() -> None:
    move = RangeMove(0, 10, old_replicas=("a", "b", "c"), new_replicas=("a", "d", "b"))
    assert move.gained == ("d",)
    assert move.lost == ("c",)
    assert move.width == 10
    assert 9 in move
    assert 10 not in move
    reordered = RangeMove(0, 10, old_replicas=("a", "b"), new_replicas=("b", "a"))
    assert reordered.gained == ()
    assert reordered.lost == ()
