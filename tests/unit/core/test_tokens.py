"""Tests for ringkv.core.tokens.

Tokens are stored on disk and decide which node owns a key, so they must never
change between versions: the pinned values below catch a change of hash.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ringkv.core.tokens import MAX_TOKEN, TOKEN_BITS, token_of

PROPERTY = settings(max_examples=200, deadline=None)


def test_token_range_constants() -> None:
    assert TOKEN_BITS == 64
    assert MAX_TOKEN == 2**64 - 1


# Computed once with xxhash.xxh3_64_intdigest (xxhash 3.x, XXH3-64 with seed 0).
# Do not update these to make the test pass: a change here moves every key.
PINNED = [
    (b"", 3244421341483603138),  # 0x2D06800538D394C2, the XXH3-64 reference value
    (b"a", 16629034431890738719),
    (b"hello", 10760762337991515389),
    (b"user:42", 11511735035886662826),
    ("ключ".encode(), 11102353883453021918),
    (bytes(range(256)), 10666956326096416113),
]


@pytest.mark.parametrize(("key", "token"), PINNED, ids=[repr(k[:10]) for k, _ in PINNED])
def test_pinned_tokens(key: bytes, token: int) -> None:
    assert token_of(key) == token


def test_token_is_a_plain_int() -> None:
    assert type(token_of(b"k")) is int


@given(key=st.binary(max_size=512))
@PROPERTY
def test_token_is_deterministic_and_in_range(key: bytes) -> None:
    token = token_of(key)
    assert 0 <= token <= MAX_TOKEN
    assert token < 2**TOKEN_BITS
    assert token_of(bytes(key)) == token  # a fresh copy: only the bytes matter


def test_tokens_spread_over_the_ring() -> None:
    """A sanity check that similar keys do not cluster (which would unbalance the ring)."""
    tokens = [token_of(f"key{i}".encode()) for i in range(4096)]
    assert len(set(tokens)) == len(tokens)
    quarters = [sum(1 for t in tokens if t >> 62 == q) for q in range(4)]
    assert all(800 < count < 1250 for count in quarters), quarters
