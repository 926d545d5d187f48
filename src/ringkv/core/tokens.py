"""Tokens: the stable 64-bit position of a key on the ring."""

from __future__ import annotations

import xxhash

TOKEN_BITS = 64
MAX_TOKEN = (1 << TOKEN_BITS) - 1


def token_of(key: bytes) -> int:
    """The key's token: xxh3-64 of its bytes, the same on every machine and run."""
    return int(xxhash.xxh3_64_intdigest(key))
