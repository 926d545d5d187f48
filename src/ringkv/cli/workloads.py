"""The pure parts of ``ringkv bench``: YCSB's workloads, key generators and a latency histogram.

Nothing here does I/O or reads a clock; every random choice comes from a
``random.Random`` the caller seeds, so a seed always gives the same sequence.
The generators follow YCSB (``site.ycsb.generator``) so that numbers are
comparable with other stores measured the same way.
"""

from __future__ import annotations

import math
import random
from bisect import bisect_right
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Protocol

ZIPFIAN_CONSTANT = 0.99
"""YCSB's skew: the most popular key is chosen about 1/zeta(n) of the time."""

_FNV_OFFSET_BASIS_64 = 0xCBF29CE484222325
_FNV_PRIME_64 = 1099511628211
_MASK_64 = (1 << 64) - 1

_SCRAMBLED_ITEM_COUNT = 10_000_000_000
# zeta(10^10, 0.99) as YCSB precomputes it: summing ten billion terms per run is not an option.
_SCRAMBLED_ZETAN = 26.46902820178302


def fnv_hash64(value: int) -> int:
    """YCSB's ``Utils.fnvhash64``: FNV-1a over the 8 little-endian bytes of a long."""
    hashed = _FNV_OFFSET_BASIS_64
    for _ in range(8):
        hashed ^= value & 0xFF
        value >>= 8
        hashed = (hashed * _FNV_PRIME_64) & _MASK_64
    # Java's Math.abs of the signed 64-bit result.
    return abs(hashed - (1 << 64) if hashed >= 1 << 63 else hashed)


def zeta(n: int, theta: float, *, start: int = 0, initial: float = 0.0) -> float:
    """The sum of ``1 / i**theta`` for i in 1..n; from ``start`` on top of ``initial``."""
    return initial + math.fsum(1.0 / (i + 1) ** theta for i in range(start, n))


class KeyChooser(Protocol):
    """Chooses record numbers for reads and updates."""

    def next(self) -> int:
        """The next record number."""
        ...


class UniformGenerator:
    """Record numbers in ``[0, items)``, each equally likely."""

    def __init__(self, items: int, rng: random.Random) -> None:
        if items < 1:
            raise ValueError("items must be at least 1")
        self._items = items
        self._rng = rng

    def next(self) -> int:
        return self._rng.randrange(self._items)


class ZipfianGenerator:
    """YCSB's ``ZipfianGenerator``: rank 0 is the most popular, then 1, and so on.

    Gray et al.'s "Quickly generating billion-record synthetic databases":
    one uniform draw per value, after computing zeta(n) once. The item count
    may grow between calls (zeta is then extended, not recomputed), which is
    what the "latest" distribution needs as inserts land.
    """

    def __init__(
        self,
        items: int,
        rng: random.Random,
        *,
        theta: float = ZIPFIAN_CONSTANT,
        zetan: float | None = None,
    ) -> None:
        if items < 1:
            raise ValueError("items must be at least 1")
        self._rng = rng
        self._theta = theta
        self._alpha = 1.0 / (1.0 - theta)
        self._zeta2 = zeta(2, theta)
        self._half_pow_theta = 0.5**theta
        self._items = items
        self._zetan = zeta(items, theta) if zetan is None else zetan
        self._eta = self._compute_eta()

    def _compute_eta(self) -> float:
        if self._items <= 2:
            # Ranks 0 and 1 are answered before eta is needed, and the formula divides by zero.
            return 0.0
        # float(): typeshed types float ** float as Any (a negative base gives a complex).
        numerator = 1.0 - float((2.0 / self._items) ** (1.0 - self._theta))
        return numerator / (1.0 - self._zeta2 / self._zetan)

    def next(self, items: int | None = None) -> int:
        """A rank in ``[0, items)``; ``items`` (default: as constructed) may only grow."""
        if items is not None and items != self._items:
            if items < self._items:
                raise ValueError("the item count may only grow")
            self._zetan = zeta(items, self._theta, start=self._items, initial=self._zetan)
            self._items = items
            self._eta = self._compute_eta()
        u = self._rng.random()
        uz = u * self._zetan
        if uz < 1.0:
            return 0
        if uz < 1.0 + self._half_pow_theta:
            return 1
        rank = int(self._items * (self._eta * u - self._eta + 1.0) ** self._alpha)
        # Floating-point rounding could land exactly on the count.
        return min(rank, self._items - 1)


class ScrambledZipfianGenerator:
    """YCSB's ``ScrambledZipfianGenerator``: Zipfian popularity, hot keys spread out.

    Draws a rank from a Zipfian over ten billion items and hashes it into
    ``[0, items)``, so the popular records are not all neighbours (which would
    put every hot key on the same partition). The hottest record gets about
    1 / 26.47 of all requests whatever the record count.
    """

    def __init__(self, items: int, rng: random.Random) -> None:
        if items < 1:
            raise ValueError("items must be at least 1")
        self._items = items
        self._ranks = ZipfianGenerator(_SCRAMBLED_ITEM_COUNT, rng, zetan=_SCRAMBLED_ZETAN)

    def hottest(self) -> int:
        """The record that rank 0, the most popular, lands on."""
        return fnv_hash64(0) % self._items

    def next(self) -> int:
        return fnv_hash64(self._ranks.next()) % self._items


class InsertCounter:
    """Hands out new record numbers and knows which prefix of them is surely written.

    YCSB's ``AcknowledgedCounterGenerator``: inserts finish out of order, and
    a "latest" read must only pick records whose insert has finished, so the
    acknowledged count moves past a number only when every smaller one settled.
    """

    def __init__(self, start: int) -> None:
        self._next = start
        self._acknowledged = start
        self._settled: set[int] = set()

    def next(self) -> int:
        """The number of the next record to insert."""
        number = self._next
        self._next += 1
        return number

    def settle(self, number: int) -> None:
        """The insert of ``number`` finished (failed inserts settle too, or reads would stall)."""
        self._settled.add(number)
        while self._acknowledged in self._settled:
            self._settled.remove(self._acknowledged)
            self._acknowledged += 1

    @property
    def acknowledged(self) -> int:
        """Every record below this number has been inserted."""
        return self._acknowledged


class LatestGenerator:
    """YCSB's ``SkewedLatestGenerator``: Zipfian over recency, the newest record hottest."""

    def __init__(self, counter: InsertCounter, rng: random.Random) -> None:
        if counter.acknowledged < 1:
            raise ValueError("the latest distribution needs at least one record")
        self._counter = counter
        self._recency = ZipfianGenerator(counter.acknowledged, rng)

    def next(self) -> int:
        count = self._counter.acknowledged
        return count - 1 - self._recency.next(count)


@dataclass(frozen=True)
class Workload:
    """One of YCSB's core workloads: a mix of operations by proportion."""

    name: str
    title: str
    mix: Mapping[str, float]
    """Operation name (read, update, insert, rmw) to its share; the shares sum to 1."""
    latest: bool = False
    """Reads prefer recently inserted records (YCSB's requestdistribution=latest)."""
    _operations: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _cumulative: tuple[float, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not math.isclose(sum(self.mix.values()), 1.0):
            raise ValueError(f"workload {self.name}: the proportions must sum to 1")
        # Frozen, so the lookup tables are set through object.__setattr__.
        object.__setattr__(self, "_operations", tuple(self.mix))
        object.__setattr__(self, "_cumulative", tuple(accumulate(self.mix.values())))

    def choose(self, rng: random.Random) -> str:
        """The next operation, drawn by proportion."""
        index = bisect_right(self._cumulative, rng.random() * self._cumulative[-1])
        # A draw equal to the (rounded) total would fall one past the end.
        return self._operations[min(index, len(self._operations) - 1)]


WORKLOADS: dict[str, Workload] = {
    workload.name: workload
    for workload in (
        Workload("A", "update heavy", {"read": 0.5, "update": 0.5}),
        Workload("B", "read mostly", {"read": 0.95, "update": 0.05}),
        Workload("C", "read only", {"read": 1.0}),
        Workload("D", "read latest", {"read": 0.95, "insert": 0.05}, latest=True),
        Workload("F", "read-modify-write", {"read": 0.5, "rmw": 0.5}),
    )
}
"""YCSB's core workloads by letter (E, short range scans, has no ringkv equivalent)."""


class Histogram:
    """Latencies (non-negative integers, e.g. nanoseconds) in log-linear buckets, like HDR.

    Values below 2**SUB_BUCKET_BITS are kept exactly; larger ones share a
    bucket with values that agree in their top SUB_BUCKET_BITS bits, so a
    reported percentile is within 1/2**(SUB_BUCKET_BITS - 1) of the true one
    (0.8%). Memory stays a few thousand counters however long the run.
    """

    SUB_BUCKET_BITS = 8

    def __init__(self) -> None:
        self._counts: dict[int, int] = {}
        self.count = 0
        self.total = 0
        self.min = 0
        self.max = 0

    @classmethod
    def bucket(cls, value: int) -> int:
        """The index of the bucket ``value`` falls in; indexes grow with values."""
        shift = max(0, value.bit_length() - cls.SUB_BUCKET_BITS)
        # value >> shift keeps the top bits; shift counts the halvings, so each
        # shift owns its own range of 2**(bits-1) indexes above the exact ones.
        return (shift << (cls.SUB_BUCKET_BITS - 1)) + (value >> shift)

    @classmethod
    def bucket_bounds(cls, index: int) -> tuple[int, int]:
        """The smallest and largest value of a bucket."""
        half = 1 << (cls.SUB_BUCKET_BITS - 1)
        if index < 2 * half:
            return index, index
        shift = index // half - 1
        top = index - (shift << (cls.SUB_BUCKET_BITS - 1))
        return top << shift, ((top + 1) << shift) - 1

    def record(self, value: int) -> None:
        """Count one value."""
        if value < 0:
            raise ValueError("a latency cannot be negative")
        index = self.bucket(value)
        self._counts[index] = self._counts.get(index, 0) + 1
        if self.count == 0 or value < self.min:
            self.min = value
        self.max = max(self.max, value)
        self.count += 1
        self.total += value

    def merge(self, others: Iterable[Histogram]) -> None:
        """Add the values counted in ``others``."""
        for other in others:
            if other.count == 0:
                continue
            for index, count in other._counts.items():
                self._counts[index] = self._counts.get(index, 0) + count
            self.min = other.min if self.count == 0 else min(self.min, other.min)
            self.max = max(self.max, other.max)
            self.count += other.count
            self.total += other.total

    def mean(self) -> float:
        """The exact mean of the values counted."""
        if self.count == 0:
            raise ValueError("no values recorded")
        return self.total / self.count

    def percentile(self, percent: float) -> int:
        """The nearest-rank percentile: the smallest value with ``percent``% at or below it.

        Reported as the top of its bucket (HDR's "highest equivalent value"),
        clamped to the largest value seen; the first rank is the smallest value seen.
        """
        if self.count == 0:
            raise ValueError("no values recorded")
        if not 0 <= percent <= 100:
            raise ValueError("percent must be between 0 and 100")
        rank = max(1, math.ceil(percent / 100 * self.count))
        if rank == 1:
            return self.min
        seen = 0
        for index in sorted(self._counts):
            seen += self._counts[index]
            if seen >= rank:
                return min(self.bucket_bounds(index)[1], self.max)
        raise AssertionError("unreachable: the counts sum to count")
