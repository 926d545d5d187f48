"""The history checkers, on hand-made good and bad histories, and on generated sequential ones."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ringkv.core.checkers import (
    NO_FAULT,
    RunEvidence,
    Status,
    analyse,
    availability,
    check_convergence,
    check_linearizable,
    check_lost_cas,
    check_lost_writes,
    check_single_leader,
    check_version_order,
    timeline,
)
from ringkv.core.history import (
    ABSENT_VERSION,
    FaultWindow,
    FinalRead,
    HistoryOp,
    LeaderSample,
    OpKind,
    Outcome,
    ReplicaCopy,
    dump_lines,
    load_lines,
)

_index = itertools.count()


def op(
    kind: OpKind,
    value: str | None,
    invoke: float,
    complete: float,
    *,
    key: str = "k",
    outcome: Outcome = Outcome.OK,
    version: int | None = None,
    expected: int | None = None,
    level: str = "quorum",
    error: str = "",
    process: str = "p",
) -> HistoryOp:
    return HistoryOp(
        next(_index),
        process,
        kind,
        key,
        value,
        level,
        invoke,
        complete,
        outcome,
        version,
        expected,
        error,
    )


def write(value: str, invoke: float, complete: float, **kw: object) -> HistoryOp:
    return op(OpKind.WRITE, value, invoke, complete, **kw)  # type: ignore[arg-type]


def read(value: str | None, invoke: float, complete: float, **kw: object) -> HistoryOp:
    return op(OpKind.READ, value, invoke, complete, **kw)  # type: ignore[arg-type]


def cas(value: str, expected: int, invoke: float, complete: float, **kw: object) -> HistoryOp:
    return op(OpKind.CAS, value, invoke, complete, expected=expected, **kw)  # type: ignore[arg-type]


# History files


def test_a_history_survives_json_lines() -> None:
    history = [
        write("a", 0.0, 1.0, version=5),
        read("a", 1.5, 2.0, version=5, level="linearizable"),
        cas("1:x", ABSENT_VERSION, 2.0, 3.0, outcome=Outcome.FAILED, error="VERSION_MISMATCH"),
        write("b", 3.0, 6.0, outcome=Outcome.UNKNOWN, error="DEADLINE_EXCEEDED"),
    ]
    assert load_lines(dump_lines(history)) == history


def test_a_malformed_history_line_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="not a history operation"):
        load_lines(['{"index": 1}'])


# Linearizability


def test_a_sequential_register_history_is_linearizable() -> None:
    history = [
        write("a", 0, 1, level="linearizable"),
        read("a", 2, 3, level="linearizable"),
        write("b", 4, 5, level="linearizable"),
        read("b", 6, 7, level="linearizable"),
    ]
    report = check_linearizable(history)
    assert report.status is Status.HOLDS
    assert report.checked == 1


def test_a_stale_read_is_not_linearizable_and_names_the_read() -> None:
    history = [
        write("a", 0, 1, level="linearizable"),
        write("b", 2, 3, level="linearizable"),
        read("a", 4, 5, level="linearizable"),
    ]
    report = check_linearizable(history)
    assert report.status is Status.VIOLATED
    (violation,) = report.violations
    assert history[2] in violation.ops
    lines = timeline(violation, history)
    assert any(line.startswith("*") and "read" in line for line in lines)


def test_an_unknown_write_may_have_happened() -> None:
    history = [
        write("a", 0, 1, level="linearizable"),
        write("b", 2, 3, level="linearizable", outcome=Outcome.UNKNOWN),
        read("b", 4, 5, level="linearizable"),
        read("b", 6, 7, level="linearizable"),
    ]
    assert check_linearizable(history).holds


def test_a_failed_write_never_happened() -> None:
    history = [
        write("a", 0, 1, level="linearizable"),
        write("b", 2, 3, level="linearizable", outcome=Outcome.FAILED),
        read("b", 4, 5, level="linearizable"),
    ]
    assert check_linearizable(history).status is Status.VIOLATED


def test_only_keys_wholly_at_linearizable_are_judged_unless_named() -> None:
    history = [
        write("a", 0, 1, level="one"),
        write("b", 2, 3, level="one"),
        read("a", 4, 5, level="one"),
    ]
    assert check_linearizable(history).checked == 0
    named = check_linearizable(history, keys=["k"])
    assert named.status is Status.VIOLATED


def test_a_search_that_runs_out_of_steps_is_unknown_never_a_pass() -> None:
    # Many concurrent writes and reads that each could come first: more
    # configurations than a budget of 1 allows.
    history = [write(f"v{i}", 0, 10, level="linearizable") for i in range(6)]
    history += [read(f"v{i}", 0, 10, level="linearizable") for i in range(6)]
    report = check_linearizable(history, max_configurations=1)
    assert report.status is Status.UNKNOWN
    assert "gave up" in report.note
    assert not report.holds


# Lost writes


def test_of_concurrent_writes_the_larger_version_wins_whichever_it_is() -> None:
    early_low = [write("a", 0, 2, version=9), write("b", 1, 3, version=10)]
    assert check_lost_writes(early_low, {"k": FinalRead("k", "b", 10)}).holds
    early_high = [write("a", 0, 2, version=10), write("b", 1, 3, version=9)]
    assert check_lost_writes(early_high, {"k": FinalRead("k", "a", 10)}).holds
    # The last writer wins: an acknowledged version above the final one was lost.
    report = check_lost_writes(early_high, {"k": FinalRead("k", "b", 9)})
    assert report.status is Status.VIOLATED
    assert "version above the final" in report.violations[0].message


def test_a_final_value_whose_write_failed_is_a_violation() -> None:
    history = [write("a", 0, 1, version=1), write("b", 2, 3, outcome=Outcome.FAILED)]
    report = check_lost_writes(history, {"k": FinalRead("k", "b", 2)})
    assert report.status is Status.VIOLATED


def test_writes_at_one_promise_no_durability() -> None:
    history = [write("a", 0, 1, version=20, level="one"), write("b", 2, 3, version=5, level="one")]
    report = check_lost_writes(history, {"k": FinalRead("k", "a", 20)})
    assert report.holds
    assert report.checked == 0


def test_an_acknowledged_write_superseded_by_an_older_one_is_lost() -> None:
    older = write("a", 0, 1, version=20)
    newer = write("b", 2, 3, version=15)  # stamped below, as a skewed clock does
    report = check_lost_writes([older, newer], {"k": FinalRead("k", "a", 20)})
    assert report.status is Status.VIOLATED
    (violation,) = report.violations
    assert violation.ops == (older, newer)
    assert "1 acknowledged write(s) lost" in violation.message


def test_an_unknown_final_winner_proves_nothing_lost() -> None:
    history = [write("a", 0, 1, outcome=Outcome.UNKNOWN), write("b", 2, 3, version=5)]
    assert check_lost_writes(history, {"k": FinalRead("k", "a")}).holds


def test_an_absent_key_or_a_phantom_value_after_acknowledged_writes_is_a_violation() -> None:
    history = [write("a", 0, 1, version=1)]
    assert not check_lost_writes(history, {"k": FinalRead("k", None)}).holds
    assert not check_lost_writes(history, {"k": FinalRead("k", "zzz", 3)}).holds
    assert check_lost_writes(history, {}).holds  # a key not read is not judged


# Version order


def test_versions_that_follow_real_time_hold() -> None:
    history = [
        write("a", 0, 1, version=10),
        read("a", 2, 3, version=10),
        write("b", 4, 5, version=11),
        read("b", 6, 7, version=11),
    ]
    report = check_version_order(history)
    assert report.holds
    assert report.checked == 3


def test_a_later_write_with_a_smaller_version_breaks_the_order() -> None:
    first = write("a", 0, 1, version=10)
    later = write("b", 2, 3, version=9)
    report = check_version_order([first, later])
    assert report.status is Status.VIOLATED
    assert report.violations[0].ops == (first, later)


def test_a_later_read_of_an_older_version_breaks_the_order() -> None:
    report = check_version_order([write("a", 0, 1, version=10), read("x", 2, 3, version=4)])
    assert report.status is Status.VIOLATED


def test_reading_the_key_absent_after_an_acknowledged_write_breaks_the_order() -> None:
    report = check_version_order([write("a", 0, 1, version=10), read(None, 2, 3)])
    assert report.status is Status.VIOLATED


def test_an_equal_version_is_not_judged() -> None:
    # Equal timestamps are ordered by node id, which clients do not see.
    assert check_version_order([write("a", 0, 1, version=10), write("b", 2, 3, version=10)]).holds


def test_concurrent_calls_and_weak_levels_are_not_ordered() -> None:
    concurrent = [write("a", 0, 3, version=10), write("b", 1, 2, version=9)]
    assert check_version_order(concurrent).holds
    weak = [write("a", 0, 1, version=10, level="one"), write("b", 2, 3, version=9, level="one")]
    assert check_version_order(weak).holds


# Lost CAS updates


def test_a_chain_of_increments_holds() -> None:
    history = [
        read(None, 0, 1),
        cas("1:a", ABSENT_VERSION, 1, 2, version=5),
        read("1:a", 3, 4, version=5),
        cas("2:b", 5, 4, 5, version=6),
        cas("2:c", 5, 5, 6, outcome=Outcome.FAILED, error="VERSION_MISMATCH"),
    ]
    report = check_lost_cas(history, {"k": FinalRead("k", "2:b", 6)})
    assert report.holds
    assert report.checked == 2


def test_two_acknowledged_cas_from_one_version_lose_an_update() -> None:
    history = [
        cas("1:a", 5, 0, 1, version=6),
        cas("1:b", 5, 0, 1, version=7),
    ]
    report = check_lost_cas(history, {"k": FinalRead("k", "1:b", 7)})
    assert report.status is Status.VIOLATED
    messages = [v.message for v in report.violations]
    assert any("expected v=5" in m for m in messages)
    assert any("final count 1 is below the 2" in m for m in messages)


def test_a_failed_cas_whose_value_is_read_is_a_violation() -> None:
    history = [
        cas("1:a", ABSENT_VERSION, 0, 1, outcome=Outcome.FAILED, error="VERSION_MISMATCH"),
        read("1:a", 2, 3, version=4),
    ]
    report = check_lost_cas(history)
    assert report.status is Status.VIOLATED
    assert "answered VERSION_MISMATCH" in report.violations[0].message


def test_unknown_cas_may_add_to_the_count() -> None:
    history = [
        cas("1:a", ABSENT_VERSION, 0, 1, version=4),
        cas("2:b", 4, 2, 3, outcome=Outcome.UNKNOWN),
    ]
    assert check_lost_cas(history, {"k": FinalRead("k", "2:b", 9)}).holds
    assert check_lost_cas(history, {"k": FinalRead("k", "1:a", 4)}).holds


# Convergence


def test_replicas_that_agree_converge_and_ones_that_differ_do_not() -> None:
    same = ReplicaCopy(5, "node1", b"v")
    assert check_convergence({"k": {"node1": same, "node2": same, "node3": same}}).holds
    assert check_convergence({"k": {"node1": None, "node2": None}}).holds
    stale = ReplicaCopy(4, "node2", b"old")
    report = check_convergence({"k": {"node1": same, "node2": stale, "node3": None}})
    assert report.status is Status.VIOLATED
    assert "node2: v=4/node2" in report.violations[0].message
    assert "node3: none" in report.violations[0].message


def test_equal_versions_with_different_values_are_corrupt() -> None:
    report = check_convergence(
        {"k": {"node1": ReplicaCopy(5, "node1", b"a"), "node2": ReplicaCopy(5, "node1", b"b")}}
    )
    assert report.status is Status.VIOLATED


# Availability and the analysis


def test_availability_counts_calls_by_the_faults_in_force() -> None:
    history = [
        write("a", 0.5, 1, version=1),
        write("b", 2.5, 3, outcome=Outcome.UNKNOWN),
        cas("1:x", 3, 3.5, 4, outcome=Outcome.FAILED, error="VERSION_MISMATCH"),
        write("c", 5.5, 6, version=2),
    ]
    faults = [FaultWindow("kill", 2, 4), FaultWindow("partition-leader", 3, 5)]
    rows = {row.kind: row for row in availability(history, faults)}
    assert (rows["kill"].calls, rows["kill"].succeeded) == (2, 1)
    assert (rows["partition-leader"].calls, rows["partition-leader"].succeeded) == (1, 1)
    assert (rows[NO_FAULT].calls, rows[NO_FAULT].succeeded) == (2, 2)


def test_analysis_holds_only_when_every_checker_holds() -> None:
    good = [write("a", 0, 1, version=1, level="linearizable")]
    assert analyse(good, RunEvidence(final={"k": FinalRead("k", "a", 1)})).holds
    bad = [*good, write("b", 2, 3, version=0, level="linearizable")]
    analysis = analyse(bad, RunEvidence(final={"k": FinalRead("k", "a", 1)}))
    assert analysis.violated
    assert {v.checker for v in analysis.violations} == {"lost-writes", "version-order"}


# Generated histories: a correct sequential register passes every checker.


@given(st.lists(st.tuples(st.sampled_from(["r", "w", "c"]), st.integers(0, 2)), max_size=40))
def test_any_sequential_history_of_a_correct_store_passes(steps: list[tuple[str, int]]) -> None:
    store: dict[str, tuple[str, int]] = {}
    history: list[HistoryOp] = []
    clock = 0.0
    version = 0
    for n, (action, k) in enumerate(steps):
        key = f"k{k}"
        clock += 1
        current = store.get(key)
        if action == "r":
            value, seen = current if current else (None, None)
            history.append(
                read(value, clock, clock + 0.5, key=key, version=seen, level="linearizable")
            )
        else:
            version += 1
            if action == "w":
                new = f"{n}:w"
                history.append(
                    write(new, clock, clock + 0.5, key=key, version=version, level="linearizable")
                )
            else:
                count = int(current[0].split(":")[0]) if current else 0
                expected = current[1] if current else ABSENT_VERSION
                new = f"{count + 1}:c{n}"
                history.append(
                    cas(
                        new,
                        expected,
                        clock,
                        clock + 0.5,
                        key=key,
                        version=version,
                        level="linearizable",
                    )
                )
            store[key] = (new, version)
    final = {key: FinalRead(key, value, v) for key, (value, v) in store.items()}
    copies = {key: {"a": ReplicaCopy(v, "a", value.encode())} for key, (value, v) in store.items()}
    analysis = analyse(history, RunEvidence(final=final, replicas=copies))
    assert analysis.holds, [v.message for v in analysis.violations]


def polled(rounds: list[dict[str, tuple[str, int]]], period: float = 0.1) -> list[LeaderSample]:
    """Samples of every node per polling round: node -> (leader it names, term).
    Each round's questions leave at once; the answers arrive a millisecond apart."""
    return [
        LeaderSample(i * period + (j + 1) * 0.001, node, leader, term, sent=i * period)
        for i, answers in enumerate(rounds)
        for j, (node, (leader, term)) in enumerate(sorted(answers.items()))
    ]


def test_a_clean_failover_has_one_leader_at_a_time() -> None:
    rounds = [
        {"n1": ("n3", 1), "n2": ("n3", 1), "n3": ("n3", 1)},
        {"n1": ("", 1), "n2": ("", 1), "n3": ("", 1)},  # n3 stepped down
        {"n1": ("n2", 2), "n2": ("n2", 2), "n3": ("n2", 2)},
    ]
    report = check_single_leader(polled(rounds))
    assert report.holds, report.violations
    assert report.checked == 2


def test_a_deposed_leader_that_still_says_it_leads_is_a_dual_leader_interval() -> None:
    rounds = [
        {"n1": ("n3", 1), "n2": ("n3", 1), "n3": ("n3", 1)},
        {"n1": ("n2", 2), "n2": ("n2", 2), "n3": ("n3", 1)},  # n3 cut off, not yet down
        {"n1": ("n2", 2), "n2": ("n2", 2), "n3": ("n3", 1)},
        {"n1": ("n2", 2), "n2": ("n2", 2), "n3": ("n2", 2)},
    ]
    report = check_single_leader(polled(rounds))
    assert report.status is Status.VIOLATED
    (violation,) = report.violations
    assert "n3 (term 1) and n2 (term 2) both led" in violation.message


def test_a_deposed_leader_and_its_successor_answering_in_one_round_are_not_two_at_once() -> None:
    # Matrix seed 245: n3 answered "I lead" just before its lease ran out, n2
    # just after it took over; the answers of one round came back together.
    rounds = [
        {"n1": ("n3", 1), "n2": ("n3", 1), "n3": ("n3", 1)},
        {"n1": ("n3", 1), "n2": ("n3", 1), "n3": ("n3", 1)},
        {"n1": ("n2", 2), "n2": ("n2", 2), "n3": ("n3", 1)},
        {"n1": ("n2", 2), "n2": ("n2", 2), "n3": ("n2", 2)},
    ]
    assert check_single_leader(polled(rounds)).holds


def test_a_leader_of_a_new_term_is_a_new_span() -> None:
    rounds = [{"n1": ("n1", 1)}, {"n1": ("n1", 2)}, {"n1": ("n1", 2)}]
    report = check_single_leader(polled(rounds))
    assert report.holds
    assert report.checked == 2
