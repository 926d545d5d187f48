"""Checkers of recorded histories: what a fault run must not show.

Each checker reads a history (``ringkv.core.history``) and returns a
``CheckerReport``: HOLDS, VIOLATED with the violations found, or UNKNOWN
when it could not decide (the linearizability search ran out of steps; an
undecided check is never reported as a pass). A violation names the
operations that show it, so a caller can print the shortest failing window
as a timeline.

The checkers, and the promise of docs/correctness.md each one tests:

``linearizable``
    Per key, operations at LINEARIZABLE form a linearizable register history
    (Wing & Gong with Lowe's memoization, ``ringkv.core.linearizability``).
``lost-writes``
    An acknowledged write is not superseded by a write that completed before
    it was invoked: the final state of a key (read at ALL after heal and
    repair) is not an older write than an acknowledged one.
``version-order``
    For QUORUM, ALL and LINEARIZABLE, a write invoked after another
    acknowledged write to the same key completed gets the larger version, and
    a read invoked after it completed returns that version or a newer one.
``lost-cas``
    Read-then-conditional-write counters lose no update: no two acknowledged
    conditional writes expected the same version, no value written by a
    conditional write that definitely failed is ever read, and the final
    count is at least the number of acknowledged increments.
``convergence``
    After heal and one repair, every replica of a key holds the same version.
``single-leader``
    No two nodes lead at once: a watcher polled every node's view of the
    leadership, and no two nodes' spans of saying "I lead" overlap.

``availability`` is a measure, not a checker: the share of calls that
succeeded while each kind of fault was in force.
"""

from __future__ import annotations

import enum
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from ringkv.core import linearizability as lin
from ringkv.core.history import (
    FaultWindow,
    FinalRead,
    HistoryOp,
    LeaderSample,
    OpKind,
    Outcome,
    ReplicaCopy,
)

ORDERED_LEVELS = frozenset({"quorum", "all", "linearizable"})
"""Levels whose acknowledged writes promise real-time version order."""


class Status(enum.Enum):
    """What a checker concluded."""

    HOLDS = "holds"
    VIOLATED = "violated"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Violation:
    """One breach of a checker's property."""

    checker: str
    key: str
    message: str
    ops: tuple[HistoryOp, ...] = ()
    """The operations that show it, in invocation order."""

    def window(self) -> tuple[float, float]:
        """From the first involved call to the last completion."""
        if not self.ops:
            return (0.0, 0.0)
        return (min(op.invoke for op in self.ops), max(op.complete for op in self.ops))


@dataclass(frozen=True, slots=True)
class CheckerReport:
    """A checker's verdict on one history."""

    name: str
    status: Status
    checked: int
    """How many things it looked at (keys, writes, increments: see ``unit``)."""
    unit: str
    violations: tuple[Violation, ...] = ()
    note: str = ""
    """Why the verdict is UNKNOWN, or anything else the reader should know."""

    @property
    def holds(self) -> bool:
        return self.status is Status.HOLDS


def _report(
    name: str, checked: int, unit: str, violations: Sequence[Violation], note: str = ""
) -> CheckerReport:
    status = Status.VIOLATED if violations else Status.HOLDS
    return CheckerReport(name, status, checked, unit, tuple(violations), note)


def _by_key(history: Iterable[HistoryOp]) -> dict[str, list[HistoryOp]]:
    keys: dict[str, list[HistoryOp]] = defaultdict(list)
    for op in history:
        keys[op.key].append(op)
    return keys


def check_linearizable(
    history: Iterable[HistoryOp],
    *,
    keys: Collection[str] | None = None,
    max_configurations: int = lin.DEFAULT_MAX_CONFIGURATIONS,
) -> CheckerReport:
    """Each of ``keys`` is a linearizable register, whatever level its calls asked for.

    By default the keys judged are those whose every call was at
    LINEARIZABLE; name others to ask whether a weaker level happened to
    behave linearizably (``ringkv check --level one`` does). A conditional
    write counts as a write when it succeeded or may have (the register model
    ignores its precondition, so this can only accept more, never flag a
    correct history). A key whose search gives up makes the verdict UNKNOWN
    unless another key is violated.
    """
    by_key = _by_key(history)
    if keys is None:
        judged = {
            key: ops for key, ops in by_key.items() if all(op.level == "linearizable" for op in ops)
        }
    else:
        judged = {key: by_key[key] for key in keys if key in by_key}
    violations: list[Violation] = []
    undecided: list[str] = []
    for key, ops in judged.items():
        by_index = {op.index: op for op in ops}
        register = [_register_op(op) for op in ops]
        result = lin.check_history(
            [r for r in register if r is not None], max_configurations=max_configurations
        )
        if result.verdict is lin.Verdict.NOT_LINEARIZABLE:
            assert result.explanation is not None
            involved = [
                by_index[int(op.client)]
                for op in (
                    *result.explanation.linearized[-3:],
                    *result.explanation.stuck,
                    *result.explanation.witnesses,
                )
            ]
            violations.append(
                Violation(
                    "linearizable",
                    key,
                    result.explanation.reason,
                    tuple(sorted(set(involved), key=lambda op: op.index)),
                )
            )
        elif result.verdict is lin.Verdict.UNDECIDED:
            undecided.append(key)
    if undecided and not violations:
        note = f"search gave up on {len(undecided)} key(s): {', '.join(sorted(undecided)[:5])}"
        return CheckerReport("linearizable", Status.UNKNOWN, len(judged), "keys", (), note)
    return _report("linearizable", len(judged), "keys", violations)


def _register_op(op: HistoryOp) -> lin.Operation | None:
    key = op.key.encode()
    if op.kind is OpKind.READ:
        if not op.ok:
            return None
        value = None if op.value is None else op.value.encode()
        return lin.Operation(op.index, lin.OpKind.READ, key, value, op.invoke, op.complete)
    if op.outcome is Outcome.FAILED or op.value is None:
        return None
    ret = op.complete if op.ok else None
    return lin.Operation(op.index, lin.OpKind.WRITE, key, op.value.encode(), op.invoke, ret)


def _writers(ops: Iterable[HistoryOp]) -> dict[str, HistoryOp]:
    """Each written value's write (values are unique per key in every workload)."""
    return {op.value: op for op in ops if op.is_write and op.value is not None}


def check_lost_writes(
    history: Iterable[HistoryOp], final: Mapping[str, FinalRead]
) -> CheckerReport:
    """No acknowledged write is superseded by a write that completed before it began.

    ``final`` holds each key's value after heal and repair. Judged are the
    writes acknowledged at QUORUM or stronger (ONE promises no durability).
    A key whose final value no write produced, or a write that failed, or
    that is absent although a write to it was acknowledged, is a violation
    too (values are unique and nothing is deleted in these workloads); so is
    an acknowledged version above the final one (the last writer wins). Keys
    missing from ``final`` are not judged.
    """
    violations: list[Violation] = []
    acknowledged = 0
    for key, ops in _by_key(history).items():
        acked = [op for op in ops if op.is_write and op.ok and op.level in ORDERED_LEVELS]
        acknowledged += len(acked)
        if key not in final or not acked:
            continue
        last = final[key]
        if last.value is None:
            violations.append(
                Violation(
                    "lost-writes",
                    key,
                    f"{len(acked)} acknowledged write(s), but the key is absent at the end",
                    tuple(acked[-3:]),
                )
            )
            continue
        winner = _writers(ops).get(last.value)
        if winner is None:
            violations.append(
                Violation("lost-writes", key, f"final value {last.value!r} was never written")
            )
            continue
        if winner.outcome is Outcome.FAILED:
            violations.append(
                Violation(
                    "lost-writes",
                    key,
                    f"final value {last.value!r} was written by #{winner.index}, which failed "
                    f"with {winner.error}",
                    (winner,),
                )
            )
            continue
        # Last writer wins: after repair no acknowledged version may be above the final one.
        buried = [
            op
            for op in acked
            if last.version is not None and op.version is not None and op.version > last.version
        ]
        if buried:
            violations.append(
                Violation(
                    "lost-writes",
                    key,
                    f"{len(buried)} acknowledged write(s) have a version above the final "
                    f"value's (v={last.version}), yet lost",
                    (winner, *buried[:3]) if winner.ok else tuple(buried[:3]),
                )
            )
            continue
        if not winner.ok:
            # Its write may have landed at any time after it was invoked.
            continue
        lost = [op for op in acked if op.invoke > winner.complete]
        if lost:
            violations.append(
                Violation(
                    "lost-writes",
                    key,
                    f"{len(lost)} acknowledged write(s) lost: the final value "
                    f"{last.value!r} (v={last.version}) was written by #{winner.index}, "
                    f"which completed before they were invoked",
                    (winner, *lost[:3]),
                )
            )
    return _report("lost-writes", acknowledged, "acknowledged writes", violations)


def check_version_order(history: Iterable[HistoryOp]) -> CheckerReport:
    """Versions follow real time for acknowledged writes at QUORUM or stronger.

    For an acknowledged write A and a later call B to the same key (invoked
    after A completed), both at QUORUM, ALL or LINEARIZABLE: if B is an
    acknowledged write its version must not be below A's (equal timestamps
    are ordered by the node id, which clients do not see); if B is a
    successful read it must return A's version or a newer one (an absent key
    counts as version 0). Reads at QUORUM may return
    less only when writes did not go through the key's replicas' quorum,
    which is what this checker exists to catch.
    """
    violations: list[Violation] = []
    checked = 0
    for key, ops in _by_key(history).items():
        writes = sorted(
            (op for op in ops if op.is_write and op.ok and op.level in ORDERED_LEVELS),
            key=lambda op: op.complete,
        )
        if not writes:
            continue
        later = sorted(
            (
                op
                for op in ops
                if op.ok
                and op.level in ORDERED_LEVELS
                and (op.version is not None or op.kind is OpKind.READ)
            ),
            key=lambda op: op.invoke,
        )
        # Sweep the calls in invocation order, keeping the newest version of
        # any acknowledged write that completed before the call was invoked.
        newest: HistoryOp | None = None
        w = 0
        for op in later:
            while w < len(writes) and writes[w].complete < op.invoke:
                candidate = writes[w]
                if newest is None or _version(candidate) > _version(newest):
                    newest = candidate
                w += 1
            if newest is None:
                continue
            checked += 1
            # An absent key reads as version 0. Equal versions are not judged:
            # the node id the client does not see breaks the tie.
            seen = op.version or 0
            floor = _version(newest)
            if seen < floor:
                what = "write was given" if op.is_write else "read returned"
                violations.append(
                    Violation(
                        "version-order",
                        key,
                        f"#{op.index}'s {what} v={seen}, below v={floor} of "
                        f"#{newest.index}, acknowledged before #{op.index} was invoked",
                        (newest, op),
                    )
                )
    return _report("version-order", checked, "ordered calls", violations)


def _version(op: HistoryOp) -> int:
    assert op.version is not None
    return op.version


def counter_value(value: str | None) -> int:
    """The count a counter workload's value carries: ``"<count>:<unique tag>"``."""
    if value is None:
        return 0
    head, _, _ = value.partition(":")
    try:
        return int(head)
    except ValueError:
        return -1


def check_lost_cas(
    history: Iterable[HistoryOp], final: Mapping[str, FinalRead] | None = None
) -> CheckerReport:
    """Read-then-conditional-write counters lose no update.

    Only keys with conditional writes are judged. Violations:
    two acknowledged conditional writes that expected the same version (both
    read the same state and both won: one update is lost); a value whose
    conditional write definitely failed, seen by a read or at the end; and a
    final count lower than the number of acknowledged increments.
    """
    violations: list[Violation] = []
    increments = 0
    final = final or {}
    for key, ops in _by_key(history).items():
        cas = [op for op in ops if op.kind is OpKind.CAS]
        if not cas:
            continue
        acked = [op for op in cas if op.ok]
        increments += len(acked)
        by_expected: dict[int, list[HistoryOp]] = defaultdict(list)
        for op in acked:
            assert op.expected is not None
            by_expected[op.expected].append(op)
        for expected, winners in sorted(by_expected.items()):
            if len(winners) > 1:
                violations.append(
                    Violation(
                        "lost-cas",
                        key,
                        f"{len(winners)} acknowledged conditional writes expected v={expected}: "
                        f"all but one of their updates are lost",
                        tuple(winners[:4]),
                    )
                )
        failed = {op.value: op for op in cas if op.outcome is Outcome.FAILED}
        last = final.get(key)
        # Where a failed conditional write's value showed: a read, or the end.
        sightings: list[tuple[str | None, str, tuple[HistoryOp, ...]]] = [
            (op.value, f"#{op.index} read", (op,)) for op in ops if op.kind is OpKind.READ and op.ok
        ]
        if last is not None:
            sightings.append((last.value, "the final value is", ()))
        for value, seen, witnesses in sightings:
            if value in failed:
                loser = failed[value]
                violations.append(
                    Violation(
                        "lost-cas",
                        key,
                        f"{seen} {value!r}, written by #{loser.index}, "
                        f"which answered {loser.error or 'failed'}",
                        (loser, *witnesses),
                    )
                )
        if last is not None:
            count = counter_value(last.value)
            if count < 0:
                violations.append(
                    Violation("lost-cas", key, f"the final value {last.value!r} is not a count")
                )
            elif count < len(acked):
                violations.append(
                    Violation(
                        "lost-cas",
                        key,
                        f"final count {count} is below the {len(acked)} acknowledged increments",
                        tuple(acked[-3:]),
                    )
                )
    return _report("lost-cas", increments, "acknowledged increments", violations)


def check_convergence(
    copies: Mapping[str, Mapping[str, ReplicaCopy | None]],
) -> CheckerReport:
    """Every replica of each key holds the same version (or nothing at all).

    ``copies`` maps each key to what each of its replicas stores (None: no
    record). Values must agree too: equal versions with different values
    would be a corrupt copy.
    """
    violations: list[Violation] = []
    for key, by_node in copies.items():
        seen = {
            node: None if copy is None else (copy.timestamp, copy.node_id, copy.tombstone)
            for node, copy in by_node.items()
        }
        values = {
            (copy.timestamp, copy.node_id): copy.value
            for copy in by_node.values()
            if copy is not None
        }
        distinct = set(seen.values())
        corrupt = [
            node
            for node, copy in by_node.items()
            if copy is not None and values[(copy.timestamp, copy.node_id)] != copy.value
        ]
        if len(distinct) > 1 or corrupt:
            described = ", ".join(f"{node}: {_copy_name(v)}" for node, v in sorted(seen.items()))
            violations.append(Violation("convergence", key, f"replicas differ: {described}"))
    return _report("convergence", len(copies), "keys", violations)


def _copy_name(copy: tuple[int, str, bool] | None) -> str:
    if copy is None:
        return "none"
    timestamp, node_id, tombstone = copy
    return f"v={timestamp}/{node_id}" + (" (deleted)" if tombstone else "")


@dataclass(frozen=True, slots=True)
class Availability:
    """How many calls succeeded while one kind of fault was in force."""

    kind: str
    calls: int
    succeeded: int

    @property
    def ratio(self) -> float:
        return self.succeeded / self.calls if self.calls else 1.0


def check_single_leader(samples: Iterable[LeaderSample]) -> CheckerReport:
    """No two nodes led at one instant.

    A node's span runs over its consecutive samples that named itself leader
    in one term; any other answer of that node in between ends it. A sample
    was answered at some instant between its ``sent`` and its ``at``, so the
    node surely led from the arrival of the span's first answer to the
    sending of its last question: that is the span. Two spans of different
    nodes that overlap are a dual-leader interval. Answers of one polling
    round are not taken for simultaneous (a node deposed just before the
    round and its successor would both answer "I lead" in it), and the
    watcher's polling hides intervals shorter than about two of its periods,
    so a pass bounds their length, it does not rule them out.
    """
    spans: list[tuple[float, float, str, int]] = []
    open_spans: dict[str, tuple[float, float, int]] = {}
    for sample in sorted(samples, key=lambda s: s.at):
        current = open_spans.get(sample.node)
        leads = sample.leader == sample.node
        if current is not None and (not leads or sample.term != current[2]):
            spans.append((current[0], current[1], sample.node, current[2]))
            del open_spans[sample.node]
            current = None
        if leads:
            asked = sample.at if sample.sent is None else sample.sent
            start = sample.at if current is None else current[0]
            open_spans[sample.node] = (start, asked, sample.term)
    spans += [(start, end, node, term) for node, (start, end, term) in open_spans.items()]
    # A span of one answer is no interval the node surely led over.
    sure = sorted(span for span in spans if span[0] < span[1])
    violations: list[Violation] = []
    for i, (_start, end, node, term) in enumerate(sure):
        for other_start, other_end, other, other_term in sure[i + 1 :]:
            if other_start >= end:
                break
            overlap = min(end, other_end) - other_start
            if other != node and overlap > 0:
                violations.append(
                    Violation(
                        "single-leader",
                        "",
                        f"{node} (term {term}) and {other} (term {other_term}) both led "
                        f"for {overlap * 1000:.0f} ms from t={other_start:.3f}",
                    )
                )
    return _report("single-leader", len(spans), "leadership spans", violations)


NO_FAULT = "none"
"""The ``Availability.kind`` of calls invoked while no fault was in force."""


def availability(history: Iterable[HistoryOp], faults: Sequence[FaultWindow]) -> list[Availability]:
    """The share of calls that succeeded, per fault kind in force when they were invoked.

    A conditional write refused with VERSION_MISMATCH was served, so it
    counts as a success here. A call made while two faults overlapped counts
    for both kinds.
    """
    calls: dict[str, int] = defaultdict(int)
    succeeded: dict[str, int] = defaultdict(int)
    for op in history:
        kinds = {f.kind for f in faults if f.start <= op.invoke < f.end} or {NO_FAULT}
        served = op.ok or op.error == "VERSION_MISMATCH"
        for kind in kinds:
            calls[kind] += 1
            succeeded[kind] += served
    return [Availability(kind, calls[kind], succeeded[kind]) for kind in sorted(calls)]


@dataclass(frozen=True, slots=True)
class Analysis:
    """Every checker's report on one run, and availability per fault kind."""

    reports: tuple[CheckerReport, ...]
    availability: tuple[Availability, ...] = ()
    operations: int = 0

    @property
    def violations(self) -> tuple[Violation, ...]:
        return tuple(v for report in self.reports for v in report.violations)

    @property
    def holds(self) -> bool:
        """Every checker held (an UNKNOWN verdict is not a pass)."""
        return all(report.holds for report in self.reports)

    @property
    def violated(self) -> bool:
        return any(report.status is Status.VIOLATED for report in self.reports)

    def report(self, name: str) -> CheckerReport | None:
        return next((r for r in self.reports if r.name == name), None)


@dataclass(frozen=True, slots=True)
class RunEvidence:
    """Everything a run collected besides the history itself."""

    final: Mapping[str, FinalRead] = field(default_factory=dict)
    replicas: Mapping[str, Mapping[str, ReplicaCopy | None]] | None = None
    faults: Sequence[FaultWindow] = ()
    leaders: Sequence[LeaderSample] | None = None
    """The leader watcher's samples; None when no watcher ran."""


def analyse(
    history: Sequence[HistoryOp],
    evidence: RunEvidence,
    *,
    register_keys: Collection[str] | None = None,
    max_configurations: int = lin.DEFAULT_MAX_CONFIGURATIONS,
) -> Analysis:
    """Run every checker that the evidence allows on one history.

    ``register_keys``: the keys the linearizability checker judges (by
    default those whose every call was at LINEARIZABLE).
    """
    reports = [
        check_linearizable(history, keys=register_keys, max_configurations=max_configurations),
        check_lost_writes(history, evidence.final),
        check_version_order(history),
        check_lost_cas(history, evidence.final),
    ]
    if evidence.replicas is not None:
        reports.append(check_convergence(evidence.replicas))
    if evidence.leaders is not None:
        reports.append(check_single_leader(evidence.leaders))
    return Analysis(
        tuple(reports), tuple(availability(history, evidence.faults)), operations=len(history)
    )


def timeline(violation: Violation, history: Sequence[HistoryOp], *, limit: int = 40) -> list[str]:
    """The shortest failing window of ``violation`` as readable lines.

    Every call to the violation's key that overlaps the window from the first
    involved invocation to the last involved completion, involved calls
    marked with ``*``, times relative to the first call shown.
    """
    start, end = violation.window()
    involved = {op.index for op in violation.ops}
    shown = [
        op
        for op in history
        if op.key == violation.key and op.invoke <= end and op.complete >= start
    ]
    shown.sort(key=lambda op: (op.invoke, op.index))
    if len(shown) > limit:
        keep = [op for op in shown if op.index in involved]
        rest = [op for op in shown if op.index not in involved][: max(0, limit - len(keep))]
        shown = sorted([*keep, *rest], key=lambda op: (op.invoke, op.index))
    origin = min((op.invoke for op in shown), default=start)
    return [("* " if op.index in involved else "  ") + op.describe(origin) for op in shown]
