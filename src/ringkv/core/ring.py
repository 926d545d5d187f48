"""The consistent-hash ring: which nodes store a token.

Every member node has ``vnodes_per_node`` virtual nodes (vnodes) on a circle
of 2**64 tokens. A vnode's token comes from hashing ``"{node_id}/{index}"``
(:func:`vnode_token`), so it depends on nothing but the node's own id: every
node computes the same ring from the same member set, in any order.

A token belongs to the first vnode clockwise from it: the one with the
smallest vnode token >= the token, wrapping past 2**64 - 1 to the smallest
vnode token. Its preference list is the first ``n`` distinct nodes met
walking clockwise from that vnode. So a vnode with token ``v`` whose
predecessor on the circle has token ``u`` owns the tokens ``u < t <= v``.

Why vnode tokens depend on the node's id alone
-----------------------------------------------
Adding a node only inserts its vnodes into the circle; nothing else moves.
So a key's new preference list is its old one with the new node inserted
(and the last node dropped), and data only ever moves to the new node, never
between old ones; removing a node is the mirror image. Any scheme that lets
the member set move an old node's tokens (to even out the load) breaks this:
the moved token hands its keys from one old node to another. And since the
tokens must come out the same whatever order the nodes joined in, a node's
tokens can depend on its own id only.

With independent tokens a node's share is the sum of its vnodes' arcs, each
a random fraction of the circle, so the spread of shares shrinks only like
``1 / sqrt(vnodes_per_node)``. For random sets of 16 nodes, the busiest
node's share of the token space (one replica), relative to the mean, is
1.16x typically and over 1.25x for ~5% of member sets with 128 vnodes (300
sets measured); 1.08x typically and 1.19x at worst with 512 (600 sets).
With three replicas the excess is ~60% as large. Spreading a node's
tokens more evenly (one per stratum of the circle) does not help: the arcs'
lengths are set by where the *other* nodes' tokens fall. Fixed partitions
placed by rendezvous hashing keep the "only the new node gains" property but
have the same spread for the same number of pieces per node. So the default
is 512 vnodes per node. Every node must use the same count; fewer vnodes
mean fewer, larger ranges and a less even load.

Ranges
------
:meth:`Ring.ranges` splits the token space into :class:`TokenRange` values,
half-open ``[start, end)`` with ``0 <= start < end <= 2**64``, matching the
storage engines' ``scan(start_token, end_token)``. A vnode's arc
``u < t <= v`` is the range ``[u + 1, v + 1)``. Ranges never wrap: the arc
that crosses zero is split into ``[0, first + 1)`` and ``[last + 1, 2**64)``,
the first and last ranges of the list, which so have the same replicas
(unless a vnode sits at 2**64 - 1 and nothing wraps).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from ringkv.core.tokens import MAX_TOKEN, TOKEN_BITS, token_of

TOKEN_SPACE = 1 << TOKEN_BITS
"""The number of tokens on the circle: every token is in ``[0, TOKEN_SPACE)``."""

DEFAULT_VNODES_PER_NODE = 512
"""Vnodes per node unless configured: enough for the busiest of 16 nodes to
stay well within 1.25x of the mean share (see the module docstring)."""

CACHED_LIST_LENGTH = 3
"""Preference lists up to this long (the usual replication factors) are
precomputed for every vnode. Longer ones are cut from every node's clockwise
order, which is built for every vnode on the first such request."""


def vnode_token(node_id: str, index: int) -> int:
    """The token of a node's ``index``-th vnode.

    Every node must compute the same value, in every version: changing this
    moves data between nodes.
    """
    return token_of(f"{node_id}/{index}".encode())


@dataclass(frozen=True, slots=True)
class TokenRange:
    """The tokens ``start <= t < end``, all with the same preference list."""

    start: int
    """The first token in the range."""
    end: int
    """One past the last token in the range; at most ``TOKEN_SPACE``."""
    replicas: tuple[str, ...]
    """The preference list of every token in the range."""

    @property
    def width(self) -> int:
        """The number of tokens in the range."""
        return self.end - self.start

    def __contains__(self, token: int) -> bool:
        return self.start <= token < self.end


@dataclass(frozen=True, slots=True)
class RangeMove:
    """Tokens ``start <= t < end`` whose preference list differs between two rings."""

    start: int
    """The first token in the range."""
    end: int
    """One past the last token in the range; at most ``TOKEN_SPACE``."""
    old_replicas: tuple[str, ...]
    """The preference list in the old ring."""
    new_replicas: tuple[str, ...]
    """The preference list in the new ring."""

    @property
    def width(self) -> int:
        """The number of tokens in the range."""
        return self.end - self.start

    @property
    def gained(self) -> tuple[str, ...]:
        """Nodes that replicate the range only in the new ring: they must receive its data."""
        return tuple(node for node in self.new_replicas if node not in self.old_replicas)

    @property
    def lost(self) -> tuple[str, ...]:
        """Nodes that replicate the range only in the old ring: they may drop its data."""
        return tuple(node for node in self.old_replicas if node not in self.new_replicas)

    def __contains__(self, token: int) -> bool:
        return self.start <= token < self.end


@dataclass(frozen=True, slots=True)
class Ring:
    """An immutable consistent-hash ring over a set of member nodes.

    Build it from the members in any order: ``Ring(("a", "b", "c"))``. The
    nodes are kept sorted, so two rings with the same members, epoch and
    vnode count are equal and place every token identically.
    """

    nodes: tuple[str, ...] = ()
    """The member node ids, sorted."""
    epoch: int = 0
    """The ring's version; each membership change adds one."""
    vnodes_per_node: int = DEFAULT_VNODES_PER_NODE
    """How many vnodes each node has on the circle."""
    _tokens: tuple[int, ...] = field(init=False, repr=False, compare=False)
    """Every vnode's token, ascending; equal tokens ordered by node id."""
    _owners: tuple[str, ...] = field(init=False, repr=False, compare=False)
    """The node of each vnode in ``_tokens``."""
    _cached_lists: tuple[tuple[str, ...], ...] = field(init=False, repr=False, compare=False)
    """Per vnode, the first ``min(CACHED_LIST_LENGTH, len(nodes))`` distinct
    nodes clockwise from it: preference lists without a walk."""
    _full_orders_memo: list[tuple[tuple[str, ...], ...]] = field(
        init=False, repr=False, compare=False
    )
    """Empty until a longer list is asked for; then holds, per vnode, every
    node in clockwise order from it. A walk for all nodes visits about
    ``k * ln(k)`` vnodes (20 us for 16 nodes): too slow for every request,
    and most rings never need it (it costs ``len(_tokens) * k`` references)."""
    _bucket_shift: int = field(init=False, repr=False, compare=False)
    """Tokens are bucketed by their top bits: ``token >> _bucket_shift``."""
    _bucket_starts: tuple[int, ...] = field(init=False, repr=False, compare=False)
    """Per bucket, the index of the first vnode token in it or after it, and
    ``len(_tokens)`` at the end: a lookup bisects one bucket, not the whole
    ring (a bisect over thousands of 64-bit ints is most of a lookup's cost)."""

    def __post_init__(self) -> None:
        nodes = tuple(sorted(self.nodes))
        _check_members(nodes)
        if self.epoch < 0:
            raise ValueError(f"ring epoch must be >= 0, got {self.epoch}")
        if self.vnodes_per_node < 1:
            raise ValueError(f"vnodes_per_node must be >= 1, got {self.vnodes_per_node}")
        vnodes = sorted(
            (vnode_token(node, index), node)
            for node in nodes
            for index in range(self.vnodes_per_node)
        )
        self._set_arrays(nodes, vnodes)

    def _set_arrays(self, nodes: tuple[str, ...], vnodes: list[tuple[int, str]]) -> None:
        """Store the sorted (token, node) pairs as the lookup arrays."""
        # The dataclass is frozen: these are its only writes, made while building it.
        object.__setattr__(self, "nodes", nodes)
        object.__setattr__(self, "_tokens", tuple(token for token, _ in vnodes))
        object.__setattr__(self, "_owners", tuple(node for _, node in vnodes))
        object.__setattr__(self, "_cached_lists", self._build_lists(CACHED_LIST_LENGTH))
        object.__setattr__(self, "_full_orders_memo", [])
        # About one vnode per bucket: between len(_tokens) and twice as many buckets.
        bucket_bits = max(0, (len(vnodes) - 1).bit_length())
        shift = TOKEN_BITS - bucket_bits
        starts: list[int] = []
        index = 0
        for bucket in range((1 << bucket_bits) + 1):
            bucket_first_token = bucket << shift
            while index < len(vnodes) and vnodes[index][0] < bucket_first_token:
                index += 1
            starts.append(index)
        object.__setattr__(self, "_bucket_shift", shift)
        object.__setattr__(self, "_bucket_starts", tuple(starts))

    def _build_lists(self, length: int) -> tuple[tuple[str, ...], ...]:
        """Per vnode, the first ``min(length, len(nodes))`` distinct nodes clockwise from it."""
        owners = self._owners
        if not owners:
            return ()
        length = min(length, len(self.nodes))
        lists: list[tuple[str, ...]] = [()] * len(owners)
        last = len(owners) - 1
        lists[last] = self._walk(last, length)
        # Walking backwards, each vnode's list is its own node followed by the
        # next vnode's list without that node: the first `length - 1` other
        # nodes after it are always among the next vnode's first `length`.
        for index in range(last - 1, -1, -1):
            node = owners[index]
            following = lists[index + 1]
            if following[0] == node:
                lists[index] = following
            elif node in following:
                lists[index] = (node, *(other for other in following if other != node))
            else:
                lists[index] = (node, *following[: length - 1])
        return tuple(lists)

    def _walk(self, index: int, n: int) -> tuple[str, ...]:
        """The first ``min(n, len(nodes))`` distinct nodes clockwise from vnode ``index``."""
        owners = self._owners
        wanted = min(n, len(self.nodes))
        found: list[str] = []
        while len(found) < wanted:
            node = owners[index]
            if node not in found:
                found.append(node)
            index += 1
            if index == len(owners):
                index = 0
        return tuple(found)

    def _full_order(self, index: int) -> tuple[str, ...]:
        """Every node, clockwise from vnode ``index``."""
        memo = self._full_orders_memo
        if not memo:
            # Two threads may both build it; either result is the same.
            memo.append(self._build_lists(len(self.nodes)))
        return memo[0][index]

    def _list_at(self, index: int, n: int) -> tuple[str, ...]:
        """The preference list of the tokens owned by vnode ``index``."""
        cached = self._cached_lists[index]
        if n < len(cached):
            return cached[:n]
        if n == len(cached) or len(cached) == len(self.nodes):
            return cached
        everyone = self._full_order(index)
        return everyone if n >= len(everyone) else everyone[:n]

    def preference_list(self, token: int, n: int) -> tuple[str, ...]:
        """The first ``n`` distinct nodes clockwise from ``token``: its replicas.

        Starts at the vnode with the smallest token >= ``token``, wrapping
        around. Has ``min(n, len(nodes))`` nodes; empty for an empty ring.
        """
        if not 0 <= token <= MAX_TOKEN:
            raise ValueError(f"token must be in [0, 2**64), got {token}")
        if n < 1:  # _check_list_length, inlined
            _check_list_length(n)
        tokens = self._tokens
        if not tokens:
            return ()
        bucket = token >> self._bucket_shift
        starts = self._bucket_starts
        index = bisect_left(tokens, token, starts[bucket], starts[bucket + 1])
        if index == len(tokens):
            index = 0  # past the last vnode: the first vnode owns the wrap-around
        # _list_at, inlined: this is on the path of every request.
        cached = self._cached_lists[index]
        if n < len(cached):
            return cached[:n]
        if n == len(cached) or len(cached) == len(self.nodes):
            return cached
        everyone = self._full_order(index)
        return everyone if n >= len(everyone) else everyone[:n]

    def replicas(self, key: bytes, n: int) -> tuple[str, ...]:
        """The first ``n`` distinct nodes clockwise from the key's token."""
        return self.preference_list(token_of(key), n)

    def with_node(self, node_id: str) -> Ring:
        """This ring with one more node, at the next epoch."""
        if node_id in self.nodes:
            raise ValueError(f"node {node_id!r} is already in the ring")
        nodes = tuple(sorted((*self.nodes, node_id)))
        _check_members(nodes)
        added = [(vnode_token(node_id, index), node_id) for index in range(self.vnodes_per_node)]
        # The existing vnodes are already sorted: reuse them instead of rehashing.
        vnodes = sorted([*zip(self._tokens, self._owners, strict=True), *added])
        return self._derived(nodes, vnodes)

    def without_node(self, node_id: str) -> Ring:
        """This ring without one of its nodes, at the next epoch."""
        if node_id not in self.nodes:
            raise ValueError(f"node {node_id!r} is not in the ring")
        nodes = tuple(node for node in self.nodes if node != node_id)
        vnodes = [
            (token, owner)
            for token, owner in zip(self._tokens, self._owners, strict=True)
            if owner != node_id
        ]
        return self._derived(nodes, vnodes)

    def _derived(self, nodes: tuple[str, ...], vnodes: list[tuple[int, str]]) -> Ring:
        """A ring at the next epoch from already sorted vnodes, skipping the rehash."""
        ring = object.__new__(Ring)
        object.__setattr__(ring, "epoch", self.epoch + 1)
        object.__setattr__(ring, "vnodes_per_node", self.vnodes_per_node)
        ring._set_arrays(nodes, vnodes)
        return ring

    def ranges(self, n: int) -> list[TokenRange]:
        """The token space as ranges of equal preference lists, in token order.

        The ranges are half-open ``[start, end)``, cover ``[0, 2**64)``
        exactly once and never wrap: the run that crosses zero is split into
        the first and the last range. Neighbours in the list always differ in
        replicas. An empty ring is one range with no replicas.
        """
        _check_list_length(n)
        tokens = self._tokens
        if not tokens:
            return [TokenRange(0, TOKEN_SPACE, ())]
        result: list[TokenRange] = []
        run_start = 0
        run_replicas = self._list_at(0, n)
        for index in range(1, len(tokens)):
            if tokens[index] == tokens[index - 1]:
                continue  # a hash collision: the earlier vnode owns the token, this one nothing
            replicas = self._list_at(index, n)
            if replicas != run_replicas:
                # Vnode `index` owns from one past its predecessor's token.
                boundary = tokens[index - 1] + 1
                result.append(TokenRange(run_start, boundary, run_replicas))
                run_start, run_replicas = boundary, replicas
        last_end = tokens[-1] + 1
        result.append(TokenRange(run_start, last_end, run_replicas))
        if last_end < TOKEN_SPACE:
            # Past the last vnode the first vnode owns the tokens again.
            wrapped = self._list_at(0, n)
            if wrapped == run_replicas:
                result[-1] = TokenRange(run_start, TOKEN_SPACE, run_replicas)
            else:
                result.append(TokenRange(last_end, TOKEN_SPACE, wrapped))
        return result

    def ownership(self, n: int) -> dict[str, float]:
        """The fraction of the token space each node replicates with ``n`` replicas.

        Every member is listed; the fractions add up to ``min(n, len(nodes))``.
        """
        widths = dict.fromkeys(self.nodes, 0)
        for token_range in self.ranges(n):
            for node in token_range.replicas:
                widths[node] += token_range.width
        return {node: width / TOKEN_SPACE for node, width in widths.items()}


def moved_ranges(old: Ring, new: Ring, n: int) -> list[RangeMove]:
    """The token ranges whose preference list differs between two rings, in token order.

    A change of order alone counts (the first replica coordinates writes);
    its :attr:`RangeMove.gained` and :attr:`RangeMove.lost` are then empty.
    Adjacent moves with the same old and new lists are merged.
    """
    before = old.ranges(n)
    after = new.ranges(n)
    moves: list[RangeMove] = []
    old_index = new_index = 0
    start = 0
    while start < TOKEN_SPACE:
        old_range = before[old_index]
        new_range = after[new_index]
        end = min(old_range.end, new_range.end)
        if old_range.replicas != new_range.replicas:
            previous = moves[-1] if moves else None
            if (
                previous is not None
                and previous.end == start
                and previous.old_replicas == old_range.replicas
                and previous.new_replicas == new_range.replicas
            ):
                moves[-1] = replace(previous, end=end)
            else:
                moves.append(RangeMove(start, end, old_range.replicas, new_range.replicas))
        if old_range.end == end:
            old_index += 1
        if new_range.end == end:
            new_index += 1
        start = end
    return moves


def _check_members(nodes: Iterable[str]) -> None:
    """Reject empty and repeated node ids; ``nodes`` must be sorted."""
    previous: str | None = None
    for node in nodes:
        if not node:
            raise ValueError("node ids must not be empty")
        if node == previous:
            raise ValueError(f"node {node!r} is listed twice")
        previous = node


def _check_list_length(n: int) -> None:
    if n < 1:
        raise ValueError(f"a preference list needs n >= 1 nodes, got {n}")
