"""The pure parts of ``ringkv bench``: key generators, workload mixes, the latency histogram."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from ringkv.cli.workloads import (
    WORKLOADS,
    ZIPFIAN_CONSTANT,
    Histogram,
    InsertCounter,
    LatestGenerator,
    ScrambledZipfianGenerator,
    UniformGenerator,
    Workload,
    ZipfianGenerator,
    fnv_hash64,
    zeta,
)

SAMPLES = 100_000
# Five standard deviations of a share near 0.2 measured over SAMPLES draws: a
# correct generator fails this with negligible probability, and the seed is fixed.
TOLERANCE = 5 * math.sqrt(0.2 * 0.8 / SAMPLES)


def shares(draws: list[int]) -> dict[int, float]:
    return {value: count / len(draws) for value, count in Counter(draws).items()}


def reference_fnv_hash64(value: int) -> int:
    """YCSB's Utils.fnvhash64 as specified: FNV-1a over a long's 8 little-endian bytes,
    the product wrapping at 64 bits, then Java's Math.abs of the signed result."""
    hashed = 0xCBF29CE484222325
    for octet in value.to_bytes(8, "little"):
        hashed = ((hashed ^ octet) * 0x100000001B3) % 2**64
    signed = int.from_bytes(hashed.to_bytes(8, "little"), "little", signed=True)
    return abs(signed)


def test_fnv_hash64_matches_ycsb() -> None:
    rng = random.Random(1)
    values = [*range(1000), *(rng.randrange(2**62) for _ in range(1000))]
    assert all(fnv_hash64(value) == reference_fnv_hash64(value) for value in values)
    assert all(0 <= fnv_hash64(value) < 2**63 for value in values)


def test_zeta_extends_incrementally() -> None:
    assert zeta(1, 0.99) == 1.0
    assert zeta(2, 0.99) == pytest.approx(1 + 0.5**0.99)
    whole = zeta(1000, 0.99)
    assert zeta(1000, 0.99, start=400, initial=zeta(400, 0.99)) == pytest.approx(whole)


def test_zipfian_top_ranks_get_their_exact_share() -> None:
    items = 100
    generator = ZipfianGenerator(items, random.Random(7))
    draws = [generator.next() for _ in range(SAMPLES)]
    share = shares(draws)
    zetan = zeta(items, ZIPFIAN_CONSTANT)
    assert share[0] == pytest.approx(1 / zetan, abs=TOLERANCE)
    assert share[1] == pytest.approx(0.5**ZIPFIAN_CONSTANT / zetan, abs=TOLERANCE)
    assert min(draws) == 0
    assert max(draws) < items


def test_zipfian_popularity_falls_with_rank() -> None:
    generator = ZipfianGenerator(1000, random.Random(3))
    counts = Counter(generator.next() for _ in range(SAMPLES))
    first_ten = [counts[rank] for rank in range(10)]
    assert first_ten[0] > first_ten[1] > first_ten[2]
    assert sum(first_ten) > sum(counts[rank] for rank in range(500, 1000))


@pytest.mark.parametrize("items", [1, 2, 3])
def test_zipfian_handles_tiny_item_counts(items: int) -> None:
    generator = ZipfianGenerator(items, random.Random(1))
    assert {generator.next() for _ in range(2000)} == set(range(items))


def test_zipfian_count_only_grows() -> None:
    generator = ZipfianGenerator(10, random.Random(1))
    assert all(generator.next(20) < 20 for _ in range(1000))
    with pytest.raises(ValueError, match="only grow"):
        generator.next(5)


def test_scrambled_zipfian_hottest_record_gets_ycsb_share() -> None:
    records = 1000
    generator = ScrambledZipfianGenerator(records, random.Random(11))
    draws = [generator.next() for _ in range(SAMPLES)]
    share = shares(draws)
    # Rank 0 alone has 1/zeta(10^10); other ranks hashed onto the same record add a little.
    expected = 1 / 26.46902820178302
    hottest = generator.hottest()
    assert max(share, key=share.__getitem__) == hottest
    assert expected - TOLERANCE < share[hottest] < expected + 0.01
    assert all(0 <= draw < records for draw in draws)
    # Scrambled: the hot records are spread out, not the lowest numbers.
    top = sorted(share, key=share.__getitem__, reverse=True)[:5]
    assert top != list(range(5))


def test_scrambled_zipfian_is_deterministic_for_a_seed() -> None:
    def draws(seed: int) -> list[int]:
        generator = ScrambledZipfianGenerator(500, random.Random(seed))
        return [generator.next() for _ in range(1000)]

    assert draws(5) == draws(5)
    assert draws(5) != draws(6)


def test_uniform_covers_the_range_evenly() -> None:
    generator = UniformGenerator(10, random.Random(2))
    share = shares([generator.next() for _ in range(SAMPLES)])
    assert set(share) == set(range(10))
    assert all(value == pytest.approx(0.1, abs=TOLERANCE) for value in share.values())


def test_insert_counter_acknowledges_only_a_settled_prefix() -> None:
    counter = InsertCounter(10)
    numbers = [counter.next() for _ in range(3)]
    assert numbers == [10, 11, 12]
    assert counter.acknowledged == 10
    counter.settle(11)
    assert counter.acknowledged == 10
    counter.settle(10)
    assert counter.acknowledged == 12
    counter.settle(12)
    assert counter.acknowledged == 13


def test_latest_prefers_the_newest_acknowledged_record() -> None:
    counter = InsertCounter(1000)
    generator = LatestGenerator(counter, random.Random(4))
    draws = [generator.next() for _ in range(SAMPLES)]
    share = shares(draws)
    assert max(share, key=share.__getitem__) == 999
    assert share[999] == pytest.approx(1 / zeta(1000, ZIPFIAN_CONSTANT), abs=TOLERANCE)
    assert all(0 <= draw < 1000 for draw in draws)

    for _ in range(50):
        counter.settle(counter.next())
    later = Counter(generator.next() for _ in range(10_000))
    assert later.most_common(1)[0][0] == 1049
    assert max(later) == 1049


def test_latest_never_reads_an_unsettled_insert() -> None:
    counter = InsertCounter(5)
    generator = LatestGenerator(counter, random.Random(1))
    pending = counter.next()
    assert all(generator.next() < pending for _ in range(1000))


def test_workload_mixes_match_ycsb() -> None:
    assert {name: dict(workload.mix) for name, workload in WORKLOADS.items()} == {
        "A": {"read": 0.5, "update": 0.5},
        "B": {"read": 0.95, "update": 0.05},
        "C": {"read": 1.0},
        "D": {"read": 0.95, "insert": 0.05},
        "F": {"read": 0.5, "rmw": 0.5},
    }
    assert [name for name, workload in WORKLOADS.items() if workload.latest] == ["D"]


@pytest.mark.parametrize("name", list(WORKLOADS))
def test_workload_choices_follow_the_proportions(name: str) -> None:
    workload = WORKLOADS[name]
    rng = random.Random(9)
    share = Counter(workload.choose(rng) for _ in range(SAMPLES))
    for operation, proportion in workload.mix.items():
        assert share[operation] / SAMPLES == pytest.approx(proportion, abs=TOLERANCE)
    assert set(share) <= set(workload.mix)


def test_workload_rejects_proportions_not_summing_to_one() -> None:
    with pytest.raises(ValueError, match="sum to 1"):
        Workload("X", "broken", {"read": 0.5, "update": 0.4})


def exact_percentile(values: list[int], percent: float) -> int:
    """Nearest rank: the smallest value with at least ``percent``% of values at or below it."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(percent / 100 * len(ordered))) - 1]


PERCENTS = [0, 1, 25, 50, 90, 95, 99, 99.9, 100]


def histogram_of(values: list[int]) -> Histogram:
    histogram = Histogram()
    for value in values:
        histogram.record(value)
    return histogram


def test_histogram_is_exact_for_small_values() -> None:
    rng = random.Random(1)
    values = [rng.randrange(256) for _ in range(1000)]
    histogram = histogram_of(values)
    for percent in PERCENTS:
        assert histogram.percentile(percent) == exact_percentile(values, percent)


@pytest.mark.parametrize("seed", range(5))
def test_histogram_percentiles_are_within_one_bucket(seed: int) -> None:
    rng = random.Random(seed)
    # Latency-like: log-normal nanoseconds from microseconds to seconds.
    values = [int(rng.lognormvariate(14, 2)) for _ in range(rng.randrange(1, 300))]
    histogram = histogram_of(values)
    precision = 1 / 2 ** (Histogram.SUB_BUCKET_BITS - 1)
    for percent in PERCENTS:
        exact = exact_percentile(values, percent)
        reported = histogram.percentile(percent)
        assert Histogram.bucket(reported) == Histogram.bucket(exact)
        assert exact <= reported <= exact * (1 + precision)
    assert histogram.percentile(0) == min(values)
    assert histogram.percentile(100) == max(values)
    assert histogram.mean() == pytest.approx(sum(values) / len(values))
    assert histogram.count == len(values)


def test_histogram_buckets_are_ordered_and_tile_the_values() -> None:
    previous_top = -1
    for index in range(Histogram.bucket(10**12) + 1):
        low, high = Histogram.bucket_bounds(index)
        if index < 2 ** (Histogram.SUB_BUCKET_BITS - 1) * 2:
            assert low == high == index
        assert low == previous_top + 1
        assert Histogram.bucket(low) == Histogram.bucket(high) == index
        previous_top = high


def test_histogram_single_value_is_every_percentile() -> None:
    histogram = histogram_of([123_456_789])
    assert {histogram.percentile(percent) for percent in PERCENTS} == {123_456_789}


def test_histogram_merge_equals_recording_everything() -> None:
    rng = random.Random(3)
    parts = [[rng.randrange(10**9) for _ in range(rng.randrange(0, 50))] for _ in range(4)]
    merged = Histogram()
    merged.merge(histogram_of(part) for part in parts)
    together = histogram_of([value for part in parts for value in part])
    assert (merged.count, merged.total, merged.min, merged.max) == (
        together.count,
        together.total,
        together.min,
        together.max,
    )
    for percent in PERCENTS:
        assert merged.percentile(percent) == together.percentile(percent)


def test_histogram_rejects_bad_input() -> None:
    histogram = Histogram()
    with pytest.raises(ValueError, match="no values"):
        histogram.percentile(50)
    with pytest.raises(ValueError, match="no values"):
        histogram.mean()
    with pytest.raises(ValueError, match="negative"):
        histogram.record(-1)
    histogram.record(1)
    with pytest.raises(ValueError, match="between 0 and 100"):
        histogram.percentile(101)
