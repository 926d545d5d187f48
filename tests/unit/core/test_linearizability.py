"""Tests for ringkv.core.linearizability: the per-key WGL linearizability checker."""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ringkv.core.linearizability import (
    DEFAULT_MAX_CONFIGURATIONS,
    CheckResult,
    ClientId,
    HistoryRecorder,
    Invocation,
    Operation,
    OpKind,
    Value,
    Verdict,
    check_history,
)

PROPERTY = settings(max_examples=200, deadline=None)

KEY = b"k"
OTHER_KEY = b"other"
UNKNOWN = None  # a return time for "outcome unknown"

READ, WRITE, DELETE = OpKind.READ, OpKind.WRITE, OpKind.DELETE


def read(
    value: Value, call: float, ret: float | None, *, client: ClientId = 0, key: bytes = KEY
) -> Operation:
    return Operation(client, READ, key, value, call, ret)


def write(
    value: bytes, call: float, ret: float | None, *, client: ClientId = 0, key: bytes = KEY
) -> Operation:
    return Operation(client, WRITE, key, value, call, ret)


def delete(call: float, ret: float | None, *, client: ClientId = 0, key: bytes = KEY) -> Operation:
    return Operation(client, DELETE, key, None, call, ret)


def check(operations: Sequence[Operation], initial_value: Value = None) -> CheckResult:
    result = check_history(operations, initial_value=initial_value)
    # Every example is small: the search must decide it.
    assert result.verdict is not Verdict.UNDECIDED, result.describe()
    return result


# --- A sequential model, and a brute-force reference ------------------------


def run_against_model(
    rng: random.Random,
    *,
    clients: int,
    count: int,
    keys: int,
    unknown_rate: float = 0.0,
    value_pool: int | None = None,
    initial: Value = None,
) -> list[Operation]:
    """A history made by executing operations against a sequential map.

    Each client makes one call at a time. Each operation takes effect at a
    random instant inside its interval, and reads return what the map held
    at theirs. An operation with unknown outcome takes effect at any time
    after its call, or never; its client carries on after giving up on it.
    Writes write fresh values, or values from a pool of ``value_pool``.
    """
    cursor = [0] * clients
    shapes: list[tuple[int, OpKind, bytes, Value, int, int | None]] = []
    effect_at: list[float | None] = []
    for number in range(count):
        client = rng.randrange(clients)
        call = cursor[client] + rng.randint(0, 3)
        duration = rng.randint(0, 10)
        cursor[client] = call + duration
        kind = rng.choice([READ, READ, WRITE, WRITE, DELETE])
        key = b"k%d" % rng.randrange(keys)
        value: Value = None
        if kind is WRITE:
            value = b"p%d" % rng.randrange(value_pool) if value_pool else b"v%d" % number
        if rng.random() < unknown_rate:
            shapes.append((client, kind, key, value, call, None))
            effect_at.append(None if rng.random() < 0.3 else call + rng.uniform(0, 40))
        else:
            shapes.append((client, kind, key, value, call, call + duration))
            effect_at.append(rng.uniform(call, call + duration))

    results: dict[int, Value] = {}
    contents: dict[bytes, Value] = {}
    effects = sorted((at, index) for index, at in enumerate(effect_at) if at is not None)
    for _, index in effects:
        _, kind, key, value, _, _ = shapes[index]
        if kind is READ:
            results[index] = contents.get(key, initial)
        else:
            contents[key] = value
    history: list[Operation] = []
    for index, (client, kind, key, value, call, ret) in enumerate(shapes):
        outcome = value
        if kind is READ:
            # A read that never returned has no result: give it nonsense,
            # which the checker must ignore.
            outcome = results[index] if ret is not None else b"never returned"
        history.append(Operation(client, kind, key, outcome, call, ret))
    return history


def brute_force_linearizable(operations: Sequence[Operation], initial: Value = None) -> bool:
    """Linearizability by definition: try every order, the whole map at once.

    No memoization, no per-key split, no reductions. An unknown-outcome
    write may go anywhere after its call, the end included (which is the
    same as never); an unknown-outcome read has no result to match, so it
    is left out.
    """
    pending = [op for op in operations if op.kind is not READ or op.outcome_known]

    def extend(remaining: frozenset[int], contents: dict[bytes, Value]) -> bool:
        if not remaining:
            return True
        first_return = min(pending[index].return_time for index in remaining)
        for index in remaining:
            op = pending[index]
            if op.call > first_return:
                continue  # something still pending must go first
            if op.kind is READ:
                if op.value == contents.get(op.key, initial) and extend(
                    remaining - {index}, contents
                ):
                    return True
            elif extend(remaining - {index}, {**contents, op.key: op.value}):
                return True
        return False

    return extend(frozenset(range(len(pending))), {})


@st.composite
def model_histories(draw: st.DrawFn) -> tuple[list[Operation], Value]:
    """A history made against the sequential model, and the initial value it used."""
    initial = draw(st.sampled_from([None, b"init"]))
    history = run_against_model(
        draw(st.randoms(use_true_random=True)),
        clients=draw(st.integers(min_value=1, max_value=6)),
        count=draw(st.integers(min_value=0, max_value=40)),
        keys=draw(st.integers(min_value=1, max_value=3)),
        unknown_rate=draw(st.sampled_from([0.0, 0.1, 0.3])),
        value_pool=draw(st.sampled_from([None, 2, 4])),
        initial=initial,
    )
    return history, initial


@st.composite
def arbitrary_histories(draw: st.DrawFn) -> list[Operation]:
    """A small history over two keys and three values, linearizable or not."""
    history: list[Operation] = []
    for _ in range(draw(st.integers(min_value=0, max_value=7))):
        kind = draw(st.sampled_from(OpKind))
        key = draw(st.sampled_from([b"a", b"b"]))
        call = draw(st.integers(min_value=0, max_value=12))
        ret = draw(st.none() | st.integers(min_value=call, max_value=call + 6))
        value: Value = None
        if kind is WRITE:
            value = draw(st.sampled_from([b"x", b"y", b"z"]))
        elif kind is READ:
            value = draw(st.sampled_from([None, b"x", b"y", b"z"]))
        history.append(Operation(len(history), kind, key, value, call, ret))
    return history


def by_key(history: Sequence[Operation]) -> dict[bytes, list[Operation]]:
    """The sub-history of each key, keys in order of first appearance."""
    split: dict[bytes, list[Operation]] = {}
    for op in history:
        split.setdefault(op.key, []).append(op)
    return split


# --- Operation --------------------------------------------------------------


def test_operation_fields_and_outcome() -> None:
    op = write(b"v", 1, 2, client=3)
    assert (op.client, op.kind, op.key, op.value, op.call, op.ret) == (3, WRITE, KEY, b"v", 1, 2)
    assert op.outcome_known
    assert op.return_time == 2


@pytest.mark.parametrize("ret", [None, math.inf])
def test_unknown_outcome_is_none_or_infinity(ret: float | None) -> None:
    op = write(b"v", 1, ret)
    assert not op.outcome_known
    assert op.return_time == math.inf


@pytest.mark.parametrize(
    ("kind", "value", "call", "ret", "message"),
    [
        (READ, None, 2, 1, "before call time"),
        (READ, None, math.nan, 1, "finite"),
        (READ, None, math.inf, None, "finite"),
        (READ, None, 0, math.nan, "before call time"),
        (WRITE, None, 0, 1, "needs a value"),
        (DELETE, b"v", 0, 1, "no value"),
    ],
)
def test_operation_rejects_nonsense(
    kind: OpKind, value: Value, call: float, ret: float | None, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        Operation(0, kind, KEY, value, call, ret)


def test_operation_str_names_client_action_and_interval() -> None:
    assert str(read(b"v", 1, 2, client=7)) == "client 7: read b'k' -> b'v' [1, 2]"
    assert str(write(b"v", 1.5, None, client="c")) == "client c: write b'k' := b'v' [1.5, ?]"
    assert str(delete(1, 2)) == "client 0: delete b'k' [1, 2]"


# --- Known-good histories ---------------------------------------------------


def test_empty_history_is_linearizable() -> None:
    result = check([])
    assert result.ok
    assert result.verdict is Verdict.LINEARIZABLE
    assert result.explanation is None
    assert result.key is None


def test_sequential_history() -> None:
    history = [
        read(None, 0, 1),
        write(b"a", 2, 3),
        read(b"a", 4, 5),
        write(b"b", 6, 7),
        read(b"b", 8, 9),
        delete(10, 11),
        read(None, 12, 13),
        write(b"a", 14, 15),
        read(b"a", 16, 17),
    ]
    assert check(history).ok


@pytest.mark.parametrize("final", [b"a", b"b"])
def test_concurrent_writes_may_land_in_either_order(final: bytes) -> None:
    history = [
        write(b"a", 0, 10, client=1),
        write(b"b", 1, 9, client=2),
        read(final, 11, 12, client=3),
        read(final, 13, 14, client=1),
    ]
    assert check(history).ok


@pytest.mark.parametrize("seen", [None, b"a"])
def test_read_overlapping_a_write_sees_old_or_new(seen: Value) -> None:
    history = [write(b"a", 0, 10, client=1), read(seen, 2, 5, client=2)]
    assert check(history).ok


def test_reads_during_a_write_see_old_then_new() -> None:
    history = [
        write(b"a", 0, 10, client=1),
        read(None, 1, 2, client=2),
        read(b"a", 3, 4, client=2),
        read(b"a", 5, 6, client=3),
    ]
    assert check(history).ok


def test_unknown_write_observed_long_after_its_call() -> None:
    history = [
        write(b"a", 0, UNKNOWN, client=1),
        read(None, 5, 6, client=2),
        read(b"a", 100, 101, client=2),
        read(b"a", 102, 103, client=3),
    ]
    assert check(history).ok


def test_unknown_write_never_observed() -> None:
    history = [
        write(b"a", 0, UNKNOWN, client=1),
        read(None, 5, 6, client=2),
        write(b"b", 7, 8, client=2),
        read(b"b", 100, 101, client=3),
    ]
    assert check(history).ok


def test_unknown_write_may_land_after_a_later_completed_write() -> None:
    history = [
        write(b"a", 0, UNKNOWN, client=1),
        write(b"b", 1, 2, client=2),
        read(b"a", 3, 4, client=3),
    ]
    assert check(history).ok


def test_many_unobserved_unknown_writes_cost_nothing() -> None:
    history = [write(b"lost%d" % n, n, UNKNOWN, client=n) for n in range(200)]
    history += [write(b"a", 300, 301), read(b"a", 302, 303)]
    result = check(history)
    assert result.ok
    assert result.explored <= 2


@pytest.mark.parametrize("seen", [None, b"a"])
def test_read_overlapping_a_delete_sees_old_or_absent(seen: Value) -> None:
    history = [write(b"a", 0, 1), delete(2, 10, client=1), read(seen, 3, 4, client=2)]
    assert check(history).ok


def test_unknown_delete_observed() -> None:
    history = [write(b"a", 0, 1), delete(2, UNKNOWN, client=1), read(None, 3, 4, client=2)]
    assert check(history).ok


def test_touching_intervals_count_as_concurrent() -> None:
    # b's write was called at the instant a's returned: either may be first.
    history = [write(b"a", 0, 1, client=1), write(b"b", 1, 2, client=2), read(b"a", 3, 4)]
    assert check(history).ok


def test_unknown_outcome_read_is_ignored() -> None:
    history = [write(b"a", 0, 1), read(b"nonsense", 2, UNKNOWN, client=1), read(b"a", 3, 4)]
    assert check(history).ok


def test_initial_value_is_configurable() -> None:
    history = [read(b"init", 0, 1), write(b"a", 2, 3), read(b"a", 4, 5)]
    assert check(history, initial_value=b"init").ok
    assert not check(history).ok
    assert not check([read(None, 0, 1)], initial_value=b"init").ok


def test_keys_are_independent_registers() -> None:
    history = [
        write(b"a", 0, 1, key=KEY),
        write(b"b", 2, 3, key=OTHER_KEY),
        read(b"a", 4, 5, key=KEY),
        read(b"b", 4, 5, key=OTHER_KEY),
        read(None, 6, 7, key=b"untouched"),
    ]
    assert check(history).ok


# --- Known-bad histories ----------------------------------------------------


def test_read_of_a_value_never_written() -> None:
    phantom = read(b"phantom", 2, 3, client=2)
    result = check([write(b"a", 0, 1, client=1), phantom])
    assert not result.ok
    assert result.verdict is Verdict.NOT_LINEARIZABLE
    assert result.key == KEY
    assert result.explanation is not None
    assert result.explanation.stuck == (phantom,)
    assert not result.explanation.searched
    assert "no operation on the key wrote" in result.explanation.reason
    assert f"the read: {phantom}" in result.describe()


def test_read_sees_a_value_before_its_write_was_called() -> None:
    early = read(b"a", 0, 1, client=2)
    result = check([early, write(b"a", 2, 3, client=1)])
    assert not result.ok
    assert result.explanation is not None
    assert result.explanation.stuck == (early,)
    assert "no write of it was called before the read returned" in result.explanation.reason


@pytest.mark.parametrize(
    "overwrite", [write(b"b", 2, 3, client=1), delete(2, 3, client=1)], ids=["write", "delete"]
)
def test_stale_read_after_a_completed_write(overwrite: Operation) -> None:
    stale = read(b"a", 4, 5, client=2)
    result = check([write(b"a", 0, 1, client=1), overwrite, stale])
    assert not result.ok
    assert result.explanation is not None
    assert result.explanation.stuck == (stale,)
    assert "stale" in result.explanation.reason
    assert str(overwrite) in result.explanation.reason


def test_stale_read_of_the_initial_value() -> None:
    result = check([write(b"a", 0, 1, client=1), read(None, 2, 3, client=2)])
    assert not result.ok


def test_flip_flop_reads_during_a_write() -> None:
    # The write is concurrent with both reads, but once one read saw the
    # new value, a later one cannot see the old.
    old = write(b"a", 0, 1, client=1)
    new = write(b"b", 2, 10, client=1)
    saw_new = read(b"b", 3, 4, client=2)
    saw_old = read(b"a", 5, 6, client=2)
    result = check([old, new, saw_new, saw_old])
    assert not result.ok
    assert result.verdict is Verdict.NOT_LINEARIZABLE
    explanation = result.explanation
    assert explanation is not None
    assert explanation.key == KEY
    assert explanation.verdict is Verdict.NOT_LINEARIZABLE
    assert explanation.searched
    assert explanation.linearized == (old, new, saw_new)
    assert explanation.state == b"b"
    assert explanation.stuck == (saw_old,)
    assert explanation.operations == 4


def test_lost_update_becomes_visible() -> None:
    # Both writes completed and b won; then a is back, so b's write was lost.
    history = [
        write(b"a", 0, 3, client=1),
        write(b"b", 1, 4, client=2),
        read(b"b", 5, 6, client=3),
        read(b"a", 7, 8, client=3),
    ]
    assert not check(history).ok


def test_unknown_write_observed_then_unobserved() -> None:
    # Once a read saw the write, it had taken effect: absent cannot come back.
    history = [
        write(b"a", 0, UNKNOWN, client=1),
        read(b"a", 1, 2, client=2),
        read(None, 3, 4, client=2),
    ]
    assert not check(history).ok


def test_value_comes_back_without_a_write() -> None:
    # Passes the quick stale-read test (a's write overlaps the read that
    # follows b), so the search has to find it.
    history = [
        write(b"a", 0, 5, client=1),
        write(b"b", 1, 2, client=2),
        read(b"a", 6, 7, client=3),
        read(b"b", 8, 9, client=3),
    ]
    result = check(history)
    assert not result.ok
    assert result.explanation is not None
    assert result.explanation.linearized[-1] == history[2]


def test_failure_names_the_first_failing_key() -> None:
    history = [
        write(b"a", 0, 1, key=b"fine"),
        write(b"a", 0, 1, key=b"broken"),
        write(b"b", 2, 3, key=b"broken"),
        read(b"a", 4, 5, key=b"broken"),
        read(b"a", 4, 5, key=b"fine"),
        read(b"zzz", 4, 5, key=b"also broken"),
    ]
    result = check(history)
    assert not result.ok
    assert result.key == b"broken"


def test_describe_tells_what_went_wrong() -> None:
    history = [
        write(b"a", 0, 1, client=1),
        write(b"b", 2, 10, client=1),
        read(b"b", 3, 4, client=2),
        read(b"a", 5, 6, client=2),
    ]
    result = check(history)
    text = result.describe()
    assert str(result) == text
    assert text.startswith("not linearizable")
    assert "key b'k'" in text
    assert "register after the prefix: b'b'" in text
    assert "none leads to a linearization" in text
    assert "client 2: read b'k' -> b'a' [5, 6]  (inconsistent with the register)" in text
    assert check([]).describe().startswith("linearizable")


def test_describe_shows_only_the_end_of_a_long_prefix() -> None:
    history: list[Operation] = []
    for n in range(10):
        history += [write(b"%d" % n, 4 * n, 4 * n + 1), read(b"%d" % n, 4 * n + 2, 4 * n + 3)]
    # A flip-flop at the end: the new value is seen, then the old one.
    history += [
        write(b"new", 100, 110, client=1),
        read(b"new", 101, 102, client=2),
        read(b"9", 103, 104, client=2),
    ]
    result = check(history)
    explanation = result.explanation
    assert explanation is not None
    assert explanation.linearized == tuple(history[:22])
    assert explanation.stuck == (history[22],)
    text = explanation.describe(last=3)
    assert "linearized prefix (last 3 of 22):" in text
    assert str(history[18]) not in text
    assert str(history[19]) in text
    assert "(22 operations)" in explanation.describe(last=50)


# --- The configuration bound ------------------------------------------------


def test_search_gives_up_at_the_bound() -> None:
    history = [write(b"a", 0, 1), read(b"a", 2, 3), write(b"b", 4, 5)]
    result = check_history(history, max_configurations=2)
    assert result.verdict is Verdict.UNDECIDED
    assert not result.ok
    assert result.explored == 2
    assert result.explanation is not None
    assert result.explanation.key == KEY
    assert result.explanation.verdict is Verdict.UNDECIDED
    assert result.explanation.reason.startswith("gave up after 2 configurations")
    assert result.explanation.linearized == tuple(history[:2])
    assert result.describe().startswith("undecided")
    assert "not all tried" in result.describe()
    assert check_history(history, max_configurations=3).ok


def test_a_failing_key_beats_an_undecided_one() -> None:
    history = [
        write(b"a", 0, 1, key=b"long"),
        read(b"a", 2, 3, key=b"long"),
        write(b"b", 4, 5, key=b"long"),
        write(b"a", 0, 1, key=b"stale"),
        write(b"b", 2, 3, key=b"stale"),
        read(b"a", 4, 5, key=b"stale"),
    ]
    result = check_history(history, max_configurations=2)
    assert result.verdict is Verdict.NOT_LINEARIZABLE
    assert result.key == b"stale"
    assert result.explored == 2


@pytest.mark.parametrize("bound", [0, -1])
def test_bound_must_be_positive(bound: int) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        check_history([], max_configurations=bound)


# --- Property tests ---------------------------------------------------------


@PROPERTY
@given(model_histories())
def test_histories_from_the_sequential_model_are_linearizable(
    made: tuple[list[Operation], Value],
) -> None:
    history, initial = made
    result = check(history, initial_value=initial)
    assert result.ok, result.describe()


@PROPERTY
@given(model_histories(), st.data())
def test_a_read_of_a_value_never_written_is_caught(
    made: tuple[list[Operation], Value], data: st.DataObject
) -> None:
    history, initial = made
    reads = [index for index, op in enumerate(history) if op.kind is READ and op.outcome_known]
    if not reads:
        history.append(read(b"phantom", 1000, 1001))
    else:
        index = data.draw(st.sampled_from(reads))
        history[index] = dataclasses.replace(history[index], value=b"phantom")
    result = check(history, initial_value=initial)
    assert not result.ok
    assert result.explanation is not None
    assert [op.value for op in result.explanation.stuck] == [b"phantom"]


@PROPERTY
@given(arbitrary_histories(), st.sampled_from([None, b"x"]))
def test_agrees_with_brute_force(history: list[Operation], initial: Value) -> None:
    # Brute force checks the whole map in one go, so this tests the split
    # into keys (P-compositionality) as well as the search.
    result = check(history, initial_value=initial)
    assert result.ok == brute_force_linearizable(history, initial), result.describe()


@PROPERTY
@given(model_histories(), st.data())
def test_linearizable_iff_every_key_is(
    made: tuple[list[Operation], Value], data: st.DataObject
) -> None:
    history, initial = made
    # Give some reads another value the history holds, to break some keys.
    values = sorted({op.value for op in history if op.value is not None}) or [b"x"]
    for index, op in enumerate(history):
        if op.kind is READ and data.draw(st.integers(min_value=0, max_value=9)) == 0:
            history[index] = dataclasses.replace(op, value=data.draw(st.sampled_from(values)))
    whole = check(history, initial_value=initial)
    parts = {key: check(ops, initial_value=initial) for key, ops in by_key(history).items()}
    assert whole.ok == all(part.ok for part in parts.values())
    failing = [key for key, part in parts.items() if not part.ok]
    assert whole.key == (failing[0] if failing else None)


# --- Performance ------------------------------------------------------------


@pytest.mark.parametrize(
    ("clients", "count", "keys", "bound"),
    [(10, 2000, 10, 20_000), (10, 500, 1, 20_000)],
    ids=["2000-ops-10-keys", "500-ops-hot-key"],
)
def test_large_generated_history_is_decided_within_the_bound(
    clients: int, count: int, keys: int, bound: int
) -> None:
    # The bound is a regression guard on the search, not a clock: a
    # linearizable history should need about one configuration per operation.
    assert bound < DEFAULT_MAX_CONFIGURATIONS
    for seed in range(3):
        history = run_against_model(
            random.Random(seed), clients=clients, count=count, keys=keys, unknown_rate=0.02
        )
        result = check_history(history, max_configurations=bound)
        assert result.ok, result.describe()


# --- HistoryRecorder --------------------------------------------------------


def test_recorder_builds_operations() -> None:
    recorder = HistoryRecorder()
    put = recorder.invoke(1, WRITE, KEY, b"a", 0)
    get = recorder.invoke(2, READ, KEY, None, 1)
    remove = recorder.invoke(3, DELETE, KEY, None, 2)
    recorder.complete(get, b"a", 4)
    recorder.complete(put, None, 3)
    recorder.complete(remove, None, 5)
    assert recorder.operations() == [
        write(b"a", 0, 3, client=1),
        read(b"a", 1, 4, client=2),
        delete(2, 5, client=3),
    ]


def test_recorder_drops_failures_and_keeps_unknowns() -> None:
    recorder = HistoryRecorder()
    failed = recorder.invoke(1, WRITE, KEY, b"failed", 0)
    timed_out = recorder.invoke(2, WRITE, KEY, b"maybe", 1)
    lost_read = recorder.invoke(3, READ, KEY, None, 2)
    recorder.invoke(4, WRITE, KEY, b"unfinished", 3)
    recorder.fail(failed)
    recorder.unknown(timed_out)
    recorder.unknown(lost_read)
    assert recorder.operations() == [
        write(b"maybe", 1, UNKNOWN, client=2),
        read(None, 2, UNKNOWN, client=3),
        write(b"unfinished", 3, UNKNOWN, client=4),
    ]


def test_recorder_rejects_misuse() -> None:
    recorder = HistoryRecorder()
    with pytest.raises(ValueError, match="pass it to complete"):
        recorder.invoke(1, READ, KEY, b"v", 0)
    handle = recorder.invoke(1, WRITE, KEY, b"v", 0)
    with pytest.raises(ValueError, match="has no result"):
        recorder.complete(handle, b"v", 1)
    handle = recorder.invoke(1, WRITE, KEY, b"v", 2)
    recorder.complete(handle, None, 3)
    for finish in (recorder.fail, recorder.unknown):
        with pytest.raises(ValueError, match="not an open call"):
            finish(handle)
    with pytest.raises(ValueError, match="not an open call"):
        recorder.complete(Invocation(99), None, 4)
    with pytest.raises(ValueError, match="before call time"):
        recorder.complete(recorder.invoke(1, READ, KEY, None, 10), None, 9)


def test_recorded_run_against_a_dict_is_linearizable() -> None:
    # Clients take turns in a random order, each call taking effect at once:
    # a trivially linearizable store, recorded as a harness would.
    rng = random.Random(7)
    store: dict[bytes, bytes] = {}
    recorder = HistoryRecorder()
    open_calls: dict[int, tuple[Invocation, OpKind, bytes, Value]] = {}
    time = 0.0
    for step in range(300):
        time += rng.random()
        client = rng.randrange(5)
        if client not in open_calls:
            kind = rng.choice(list(OpKind))
            key = rng.choice([b"x", b"y"])
            value: Value = b"%d" % step if kind is WRITE else None
            handle = recorder.invoke(client, kind, key, value, time)
            # The store applies it now; the client hears back later.
            if kind is READ:
                value = store.get(key)
            elif kind is WRITE:
                assert value is not None
                store[key] = value
            else:
                store.pop(key, None)
            open_calls[client] = (handle, kind, key, value)
        else:
            handle, kind, _, value = open_calls.pop(client)
            outcome = rng.random()
            if outcome < 0.1:
                recorder.unknown(handle)
            else:
                recorder.complete(handle, value if kind is READ else None, time)
    assert check(recorder.operations()).ok
