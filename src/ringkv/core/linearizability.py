"""A linearizability checker for histories of a key-value store.

A history is what clients saw: each operation was called at one time and
returned at a later one, or never returned (its outcome is unknown). The
history is linearizable if every operation can be given one instant inside
its call..return interval such that, applied one by one in that order, a
plain in-memory map produces exactly the results the clients saw.

Each key is an independent read/write register; a delete is a write of
"absent" (None). Linearizability is compositional (Herlihy & Wing's locality,
Lowe's P-compositionality): a history of many registers is linearizable if
and only if each register's sub-history is. So each key is checked on its
own, which keeps every search small.

Per key the checker runs the Wing & Gong search with Lowe's memoization
(G. Lowe, "Testing for linearizability", 2017): a depth-first search over
the events in time order that linearizes any operation whose call comes
before every pending return, backtracks when it meets the return of an
operation it has not linearized, and never visits the same configuration
(set of linearized operations, register value) twice. The set is a bitset
in a Python int; the search keeps its own stack, so deep histories do not
hit the recursion limit. It gives up with ``Verdict.UNDECIDED`` after
``max_configurations`` configurations of one key rather than run forever.

The search is exponential in the worst case, so cheaper steps come first:
unknown-outcome operations that cannot matter are dropped, an O(n log n)
pass rejects reads no write can explain (phantom and stale values, the
usual failures), and inside the search two sound reductions and a
deadline-first order make a linearizable history need about one
configuration per operation (see ``_search``).

Conventions:

* Times come from any monotonic clock, as ints or floats. Operation A
  precedes B only if A returned strictly before B was called; equal times
  count as concurrent, since one clock reading cannot order two events.
* A call that definitely failed (did not take effect) is left out of the
  history by the caller.
* A write or delete whose outcome is unknown (say it timed out) has
  ``ret=None``: it may take effect at any time after its call, or never.
* A read whose outcome is unknown says nothing, and the checker drops it.
"""

from __future__ import annotations

import bisect
import dataclasses
import enum
import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TypeAlias

ClientId: TypeAlias = int | str
Value: TypeAlias = bytes | None
"""A register's contents: the bytes stored, or None when the key is absent."""

DEFAULT_MAX_CONFIGURATIONS = 500_000
"""How many configurations the search of one key may explore before it gives up.

Each costs a set entry of a few hundred bytes for a key with a few thousand
operations, so the default bounds one key to some hundreds of MB and
seconds of CPU. A linearizable history typically needs about one per
operation.
"""


class OpKind(enum.Enum):
    """What an operation does to its key's register."""

    READ = "read"
    """Returns the register's value."""
    WRITE = "write"
    """Sets the register to a value."""
    DELETE = "delete"
    """Sets the register to absent."""


@dataclass(frozen=True, slots=True)
class Operation:
    """One operation of a history, as its client saw it."""

    client: ClientId
    """Who made the call. Only explanations use it: the checker orders by time."""
    kind: OpKind
    """Read, write or delete."""
    key: bytes
    """The register the operation acts on."""
    value: Value
    """For a write, the value written; for a read, the value returned (None:
    absent); None for a delete."""
    call: float
    """When the call was made."""
    ret: float | None = None
    """When the call returned; None (or infinity) if the outcome is unknown."""

    def __post_init__(self) -> None:
        if not math.isfinite(self.call):
            raise ValueError(f"call time must be finite, got {self.call!r}")
        if self.ret is not None and (math.isnan(self.ret) or self.ret < self.call):
            raise ValueError(f"return time {self.ret!r} is before call time {self.call!r}")
        if self.kind is OpKind.WRITE and self.value is None:
            raise ValueError("a write needs a value; a delete makes the key absent")
        if self.kind is OpKind.DELETE and self.value is not None:
            raise ValueError("a delete has no value")

    @property
    def outcome_known(self) -> bool:
        """Whether the call returned, so its effect (and a read's result) is known."""
        return self.ret is not None and self.ret != math.inf

    @property
    def return_time(self) -> float:
        """When the call returned; infinity if the outcome is unknown."""
        return math.inf if self.ret is None else self.ret

    def __str__(self) -> str:
        ret = str(self.ret) if self.outcome_known else "?"
        if self.kind is OpKind.READ:
            action = f"read {self.key!r} -> {self.value!r}"
        elif self.kind is OpKind.WRITE:
            action = f"write {self.key!r} := {self.value!r}"
        else:
            action = f"delete {self.key!r}"
        return f"client {self.client}: {action} [{self.call}, {ret}]"


class Verdict(enum.Enum):
    """What the check concluded."""

    LINEARIZABLE = "linearizable"
    """Every key's sub-history has a linearization."""
    NOT_LINEARIZABLE = "not linearizable"
    """Some key's sub-history has none."""
    UNDECIDED = "undecided"
    """No key failed, but the search of some key hit its configuration bound."""


@dataclass(frozen=True, slots=True)
class Explanation:
    """Why one key failed the check, or where its search gave up."""

    key: bytes
    """The key."""
    verdict: Verdict
    """NOT_LINEARIZABLE, or UNDECIDED if the search gave up."""
    reason: str
    """One sentence: what went wrong."""
    linearized: tuple[Operation, ...]
    """The longest prefix of a linearization the search found, in linearization
    order; empty if no search ran."""
    state: Value
    """The register's value after ``linearized``."""
    stuck: tuple[Operation, ...]
    """After a search, the operations real-time order allows next after
    ``linearized``: none of them leads to a complete linearization (or, if
    undecided, not all were tried). Without one, the read no write explains."""
    operations: int
    """How many operations of the key had to be placed."""
    searched: bool = True
    """False if a quick pass found the impossible read before any search."""
    witnesses: tuple[Operation, ...] = ()
    """Without a search, the writes that make the read impossible (the last
    write of its value and the write that overwrote it), where there are any."""

    def describe(self, *, last: int = 10) -> str:
        """A multi-line account for a test failure message; shows ``last`` prefix operations."""
        lines = [f"key {self.key!r}: {self.reason}"]
        if not self.searched:
            lines.extend(f"  the read: {op}" for op in self.stuck)
            return "\n".join(lines)
        shown = self.linearized[-last:] if last > 0 else ()
        if len(shown) < len(self.linearized):
            lines.append(f"  linearized prefix (last {len(shown)} of {len(self.linearized)}):")
        else:
            lines.append(f"  linearized prefix ({len(self.linearized)} operations):")
        lines.extend(f"    {op}" for op in shown)
        lines.append(f"  register after the prefix: {self.state!r}")
        if self.verdict is Verdict.UNDECIDED:
            lines.append("  may go next (not all tried):")
        else:
            lines.append("  may go next, but none leads to a linearization:")
        for op in self.stuck:
            note = ""
            if op.kind is OpKind.READ and op.value != self.state:
                note = "  (inconsistent with the register)"
            lines.append(f"    {op}{note}")
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The outcome of a check."""

    verdict: Verdict
    """Linearizable, not linearizable, or undecided (too complex to search)."""
    explored: int
    """Configurations the search explored, over every key it searched."""
    explanation: Explanation | None = None
    """When not linearizable, the first failing key (the check stops there);
    when undecided, the first key whose search gave up; otherwise None."""

    @property
    def ok(self) -> bool:
        """Whether the history is known to be linearizable."""
        return self.verdict is Verdict.LINEARIZABLE

    @property
    def key(self) -> bytes | None:
        """The key the explanation is about, if any."""
        return None if self.explanation is None else self.explanation.key

    def describe(self) -> str:
        """The verdict and, unless linearizable, the explanation."""
        head = f"{self.verdict.value} ({self.explored} configurations explored)"
        if self.explanation is None:
            return head
        return f"{head}\n{self.explanation.describe()}"

    def __str__(self) -> str:
        return self.describe()


def check_history(
    operations: Iterable[Operation],
    *,
    initial_value: Value = None,
    max_configurations: int = DEFAULT_MAX_CONFIGURATIONS,
) -> CheckResult:
    """Check a history of a key-value store for linearizability, one key at a time.

    Every register holds ``initial_value`` before the history. Keys are
    searched in order of first appearance; the check stops at the first key
    that is not linearizable. A key whose search explores more than
    ``max_configurations`` configurations makes the verdict UNDECIDED,
    unless a later key is found not linearizable.
    """
    if max_configurations < 1:
        raise ValueError(f"max_configurations must be at least 1, got {max_configurations}")
    by_key: dict[bytes, list[Operation]] = {}
    for op in operations:
        by_key.setdefault(op.key, []).append(op)
    explored = 0
    undecided: Explanation | None = None
    for key, key_operations in by_key.items():
        result = _check_register(key, key_operations, initial_value, max_configurations)
        explored += result.explored
        if result.verdict is Verdict.NOT_LINEARIZABLE:
            return dataclasses.replace(result, explored=explored)
        if result.verdict is Verdict.UNDECIDED and undecided is None:
            undecided = result.explanation
    if undecided is not None:
        return CheckResult(Verdict.UNDECIDED, explored, undecided)
    return CheckResult(Verdict.LINEARIZABLE, explored)


def _check_register(
    key: bytes, operations: Sequence[Operation], initial: Value, max_configurations: int
) -> CheckResult:
    """Check the sub-history of one key."""
    # A read that never returned constrains nothing.
    known = [op for op in operations if op.kind is not OpKind.READ or op.outcome_known]
    # An unknown-outcome write whose value no read returned can always be
    # linearized last, where it changes nothing; and in any linearization,
    # removing it leaves one, since no read sat between it and the next
    # write. So dropping it loses nothing, and each one kept would multiply
    # the configurations the search must consider.
    observed = {op.value for op in known if op.kind is OpKind.READ}
    relevant = [
        op for op in known if op.kind is OpKind.READ or op.outcome_known or op.value in observed
    ]

    impossible = _first_impossible_read(relevant, initial)
    if impossible is not None:
        read, why, witnesses = impossible
        reason = f"a read returned {read.value!r}, {why}"
        return CheckResult(
            Verdict.NOT_LINEARIZABLE,
            0,
            Explanation(
                key,
                Verdict.NOT_LINEARIZABLE,
                reason,
                (),
                initial,
                (read,),
                len(relevant),
                searched=False,
                witnesses=witnesses,
            ),
        )

    search = _search(relevant, initial, max_configurations)
    if search.verdict is Verdict.LINEARIZABLE:
        return CheckResult(Verdict.LINEARIZABLE, search.explored)
    prefix = tuple(relevant[index] for index in search.prefix)
    stuck = _next_candidates(relevant, set(search.prefix) | search.retired)
    if search.verdict is Verdict.NOT_LINEARIZABLE:
        reason = (
            f"no linearization exists; the longest linearizable prefix found places "
            f"{len(prefix)} of {len(relevant)} operations"
        )
    else:
        reason = (
            f"gave up after {search.explored} configurations; the longest linearizable "
            f"prefix found places {len(prefix)} of {len(relevant)} operations"
        )
    return CheckResult(
        search.verdict,
        search.explored,
        Explanation(key, search.verdict, reason, prefix, search.state, stuck, len(relevant)),
    )


def _first_impossible_read(
    operations: Sequence[Operation], initial: Value
) -> tuple[Operation, str, tuple[Operation, ...]] | None:
    """A read no write could explain, found without searching, and why.

    In any linearization a read returns the value of the last write before
    it (or the initial value, written at minus infinity), and that write
    must be called before the read returns. Any write called after that
    write returned, and itself returned before the read was called, falls
    between them. So a read is impossible if every write of its value was
    called after it returned, or is followed so by another write. Finding
    that with the full search could mean ruling out every interleaving of
    the operations before the read; this finds phantom and stale reads, the
    common failures, in O(n log n). Besides the read and why, it returns the
    writes that show it: the last write of the value called before the read
    returned, and the write that overwrote it.
    """
    writes = sorted((op for op in operations if op.kind is not OpKind.READ), key=_by_call)
    calls = [op.call for op in writes]
    # The write returning first among writes[i:], for each i; None past the end.
    first_to_return: list[Operation | None] = [None] * (len(writes) + 1)
    for position in range(len(writes) - 1, -1, -1):
        later = first_to_return[position + 1]
        write = writes[position]
        keep = later is not None and later.return_time <= write.return_time
        first_to_return[position] = later if keep else write

    def overwriter(returned: float) -> Operation | None:
        """The write called after ``returned`` that returns first."""
        return first_to_return[bisect.bisect_right(calls, returned)]

    # For each value: its writes in call order, with the latest time each
    # prefix of them stays visible (until a write after it returns), and
    # the write that ends it.
    visible: dict[
        Value, tuple[list[float], list[float], list[Operation | None], list[Operation | None]]
    ] = {}

    def add_writer(value: Value, call: float, returned: float, op: Operation | None) -> None:
        calls_of_value, until, ended_by, writers = visible.setdefault(value, ([], [], [], []))
        writers.append(op)
        successor = overwriter(returned)
        end = math.inf if successor is None else successor.return_time
        calls_of_value.append(call)
        if until and until[-1] >= end:
            until.append(until[-1])
            ended_by.append(ended_by[-1])
        else:
            until.append(end)
            ended_by.append(successor)

    add_writer(initial, -math.inf, -math.inf, None)
    for write in writes:
        add_writer(write.value, write.call, write.return_time, write)

    reads = sorted((op for op in operations if op.kind is OpKind.READ), key=_by_call)
    for read in reads:
        if read.value not in visible:
            return read, "which no operation on the key wrote", ()
        calls_of_value, until, ended_by, writers = visible[read.value]
        callable_writes = bisect.bisect_right(calls_of_value, read.return_time)
        if callable_writes == 0:
            first = writers[0]
            return (
                read,
                "but no write of it was called before the read returned",
                () if first is None else (first,),
            )
        if until[callable_writes - 1] < read.call:
            witnesses = (writers[callable_writes - 1], ended_by[callable_writes - 1])
            return (
                read,
                f"a stale value: it was overwritten before the read was called, "
                f"by {ended_by[callable_writes - 1]}",
                tuple(op for op in witnesses if op is not None),
            )
    return None


def _next_candidates(
    operations: Sequence[Operation], linearized: set[int]
) -> tuple[Operation, ...]:
    """The operations not in ``linearized`` that no other such operation precedes."""
    remaining = [op for index, op in enumerate(operations) if index not in linearized]
    first_return = min((op.return_time for op in remaining), default=math.inf)
    return tuple(sorted((op for op in remaining if op.call <= first_return), key=_by_call))


def _by_call(op: Operation) -> float:
    return op.call


@dataclass(frozen=True, slots=True)
class _SearchOutcome:
    """What the search of one register found."""

    verdict: Verdict
    explored: int
    """Configurations explored."""
    state: Value
    """The register's value after ``prefix``."""
    prefix: tuple[int, ...] = ()
    """Indices of the longest linearizable prefix found, in order, without the
    writes retired along the way (empty if linearizable)."""
    retired: frozenset[int] = frozenset()
    """Indices of the unknown-outcome writes the prefix retired."""


# The linearization so far as a linked list, newest first: (operation index,
# the rest). Saving the longest one seen is then O(1), not a copy. A retired
# write is pushed as the bitwise complement of its index.
_Path: TypeAlias = tuple[int, "_Path"] | None


@dataclass(slots=True)
class _Frame:
    """One configuration on the search's path, and the choices left to try from it."""

    candidates: list[int]
    """Call events that may go next, in the order to try them."""
    tried: int
    """How many of ``candidates`` have been tried."""
    linearized: int
    """The configuration's set of linearized operations, as a bitset."""
    state: int
    """The configuration's register value, as a value number."""
    path: _Path
    """The linearization that reached the configuration."""
    chosen: int = 0
    """The call event being explored from here; 0 for none."""


def _search(operations: Sequence[Operation], initial: Value, budget: int) -> _SearchOutcome:
    """The Wing & Gong search with Lowe's memoization, over one register.

    Two reductions on top, each a step taken at once without trying the
    alternatives (so if the search fails after it, the configuration before
    it fails too):

    * A read that may go next and returns the current value is linearized.
      In any linearization of the rest it could move to the front: nothing
      left must precede it, and it changes nothing.
    * An unknown-outcome write whose value no remaining read returns is
      retired: placed last, where it changes nothing, it serves as well as
      anywhere else.

    And one heuristic: writes are tried in order of deadline (see below).
    """
    count = len(operations)
    if count == 0:
        return _SearchOutcome(Verdict.LINEARIZABLE, 0, initial)

    # Events are numbered 1..2n: operation i calls at 2i+1 and returns at
    # 2i+2; 0 is the head of a doubly linked list of them and 2n+1 its tail.
    # Ties go calls first, so operations whose times touch are concurrent.
    head, tail = 0, 2 * count + 1

    def event_order(event: int) -> tuple[float, int, int]:
        operation = operations[(event - 1) >> 1]
        if event & 1:
            return operation.call, 0, event
        return operation.return_time, 1, event

    order = [head, *sorted(range(1, tail), key=event_order), tail]
    following = [0] * (tail + 1)
    preceding = [0] * (tail + 1)
    for earlier, later in itertools.pairwise(order):
        following[earlier] = later
        preceding[later] = earlier

    # Values are numbered, so configurations hash small ints, not bytes.
    numbers: dict[Value, int] = {initial: 0}
    for op in operations:
        numbers.setdefault(op.value, len(numbers))
    by_number = list(numbers)
    value = [numbers[op.value] for op in operations]
    is_read = [op.kind is OpKind.READ for op in operations]
    is_unknown = [not op.outcome_known for op in operations]
    reads_left = [0] * len(numbers)
    for index in range(count):
        if is_read[index]:
            reads_left[value[index]] += 1

    # A write's deadline: its return, or the first return of a read that
    # could see it, if earlier. Trying writes by deadline follows the order
    # in which reads force them, so a linearizable history rarely backtracks.
    read_returns: list[list[float]] = [[] for _ in numbers]
    for index, op in enumerate(operations):
        if is_read[index]:
            read_returns[value[index]].append(op.return_time)
    for returns in read_returns:
        returns.sort()
    deadline = [math.inf] * count
    for index, op in enumerate(operations):
        returns = read_returns[value[index]]
        seen_by = bisect.bisect_left(returns, op.call)
        first_reader = returns[seen_by] if seen_by < len(returns) else math.inf
        deadline[index] = min(op.return_time, first_reader)

    seen: set[tuple[int, int]] = set()
    best_path: _Path = None
    best_depth = 0
    best_state = 0

    def open_frame(linearized: int, state: int, path: _Path) -> _Frame:
        """A frame for a new configuration, with its candidates in order."""
        writes: list[int] = []
        # The calls before the first return are those that may go next.
        event = following[head]
        while event & 1:
            index = (event - 1) >> 1
            if is_read[index]:
                if value[index] == state:
                    return _Frame([event], 0, linearized, state, path)
            elif is_unknown[index] and reads_left[value[index]] == 0:
                return _Frame([event], 0, linearized, state, path)
            else:
                writes.append(event)
            event = following[event]
        writes.sort(key=lambda call: deadline[(call - 1) >> 1])
        return _Frame(writes, 0, linearized, state, path)

    frames = [open_frame(0, 0, None)]
    while frames:
        frame = frames[-1]
        if frame.chosen:
            # Back from a dead end: put the call and its return back, in
            # reverse order of taking them out, so the neighbours' links hold.
            index = (frame.chosen - 1) >> 1
            for event in (frame.chosen + 1, frame.chosen):
                following[preceding[event]] = event
                preceding[following[event]] = event
            if is_read[index]:
                reads_left[value[index]] += 1
            frame.chosen = 0
        while frame.tried < len(frame.candidates):
            chosen = frame.candidates[frame.tried]
            frame.tried += 1
            index = (chosen - 1) >> 1
            retired = is_unknown[index] and reads_left[value[index]] == 0
            state = frame.state if is_read[index] or retired else value[index]
            linearized = frame.linearized | (1 << index)
            if (linearized, state) in seen:
                continue
            if len(seen) >= budget:
                return _SearchOutcome(
                    Verdict.UNDECIDED, len(seen), by_number[best_state], *_unwind(best_path)
                )
            seen.add((linearized, state))
            frame.chosen = chosen
            # Take the call and its return out of the list; their own links
            # stay, for putting them back.
            for event in (chosen, chosen + 1):
                following[preceding[event]] = following[event]
                preceding[following[event]] = preceding[event]
            if is_read[index]:
                reads_left[value[index]] -= 1
            path = (~index if retired else index, frame.path)
            if len(frames) > best_depth:
                best_path, best_depth, best_state = path, len(frames), state
            if following[head] == tail:
                return _SearchOutcome(Verdict.LINEARIZABLE, len(seen), initial)
            frames.append(open_frame(linearized, state, path))
            break
        else:
            frames.pop()
    return _SearchOutcome(
        Verdict.NOT_LINEARIZABLE, len(seen), by_number[best_state], *_unwind(best_path)
    )


def _unwind(path: _Path) -> tuple[tuple[int, ...], frozenset[int]]:
    """The operations a path linearized, oldest first, and the writes it retired."""
    linearized: list[int] = []
    retired: set[int] = set()
    while path is not None:
        if path[0] >= 0:
            linearized.append(path[0])
        else:
            retired.add(~path[0])
        path = path[1]
    linearized.reverse()
    return tuple(linearized), frozenset(retired)


@dataclass(frozen=True, slots=True)
class Invocation:
    """A handle on a call a ``HistoryRecorder`` has seen begin."""

    index: int
    """The call's position in the recorder's history."""


class HistoryRecorder:
    """Builds a history from calls as a test harness makes them.

    The harness passes in times from its own monotonic clock. Not
    thread-safe: record from one thread or one event loop.
    """

    def __init__(self) -> None:
        # None marks a call that failed and so never took effect.
        self._operations: list[Operation | None] = []
        self._open: set[int] = set()

    def invoke(
        self, client: ClientId, kind: OpKind, key: bytes, value: Value, time: float
    ) -> Invocation:
        """Record a call; ``value`` is the value written, or None for a read or delete."""
        if kind is OpKind.READ and value is not None:
            raise ValueError("a read's value is its result: pass it to complete()")
        self._operations.append(Operation(client, kind, key, value, time))
        index = len(self._operations) - 1
        self._open.add(index)
        return Invocation(index)

    def complete(self, handle: Invocation, result: Value, time: float) -> None:
        """Record that a call returned at ``time``; ``result`` is what a read returned.

        A write or delete has no result: pass None.
        """
        operation = self._open_operation(handle)
        if operation.kind is not OpKind.READ and result is not None:
            raise ValueError(f"a {operation.kind.value} has no result, got {result!r}")
        value = result if operation.kind is OpKind.READ else operation.value
        self._operations[handle.index] = dataclasses.replace(operation, value=value, ret=time)
        self._open.remove(handle.index)

    def fail(self, handle: Invocation) -> None:
        """Record that a call definitely did not take effect: it leaves the history."""
        self._open_operation(handle)
        self._operations[handle.index] = None
        self._open.remove(handle.index)

    def unknown(self, handle: Invocation) -> None:
        """Record that a call's outcome is unknown (say it timed out)."""
        self._open_operation(handle)
        self._open.remove(handle.index)

    def operations(self) -> list[Operation]:
        """The history so far, in call order.

        Calls not yet finished count as unknown outcomes: whatever happens to
        them, they may already have taken effect.
        """
        return [op for op in self._operations if op is not None]

    def _open_operation(self, handle: Invocation) -> Operation:
        """The operation a handle stands for, if the call is still open."""
        operation = self._operations[handle.index] if handle.index in self._open else None
        if operation is None:
            raise ValueError(f"{handle} is not an open call of this recorder")
        return operation
