"""The member table, its two-step changes, the failure detector and the leader's decisions."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ringkv.core.errors import InvalidArgument, NotFound, Unavailable
from ringkv.core.membership import (
    REMOVED_KEPT,
    FailureDetector,
    Liveness,
    Membership,
    MemberStatus,
    RingMaker,
    caught_up,
    gainers,
    leader_decision,
    ready_to_settle,
)

RINGS = RingMaker(64)
THREE = Membership.bootstrap({"n1": "a:1", "n2": "a:2", "n3": "a:3"})
ALIVE = {"n1": Liveness.ALIVE, "n2": Liveness.ALIVE, "n3": Liveness.ALIVE, "n4": Liveness.ALIVE}


def test_bootstrap_is_epoch_one_with_every_member_normal() -> None:
    assert THREE.epoch == 1
    assert THREE.node_ids == ("n1", "n2", "n3")
    assert not THREE.changing
    assert THREE.current_nodes() == THREE.next_nodes() == ("n1", "n2", "n3")


def test_a_join_takes_two_epochs_and_the_joiner_serves_reads_only_after() -> None:
    joining = THREE.with_joining("n4", "a:4", term=5)
    assert (joining.epoch, joining.term) == (2, 5)
    assert joining.changing
    assert "n4" not in joining.current_nodes()
    assert "n4" in joining.next_nodes()
    settled = joining.settled(term=5)
    assert settled.epoch == 3
    assert settled.get("n4") is not None
    assert not settled.changing
    assert settled.current_nodes() == ("n1", "n2", "n3", "n4")


def test_a_departure_keeps_serving_reads_until_it_settles() -> None:
    leaving = THREE.with_leaving("n2", term=1)
    assert leaving.get("n2") is not None
    assert "n2" in leaving.current_nodes()
    assert "n2" not in leaving.next_nodes()
    assert leaving.settled(term=1).node_ids == ("n1", "n3")


def test_one_change_at_a_time() -> None:
    joining = THREE.with_joining("n4", "a:4", term=1)
    with pytest.raises(Unavailable) as error:
        joining.with_joining("n5", "a:5", term=1)
    assert error.value.reason == "MEMBERSHIP_CHANGING"
    with pytest.raises(Unavailable):
        joining.with_leaving("n1", term=1)


def test_removing_a_joiner_gives_up_its_join_and_frees_the_next_change() -> None:
    joining = THREE.with_joining("n4", "a:4", term=1)
    removed = joining.with_leaving("n4", term=2)
    assert removed.node_ids == THREE.node_ids
    assert not removed.changing
    assert removed.newer_than(joining)
    # The next change is not held up by the join that never finished.
    assert removed.with_joining("n5", "a:5", term=2).get("n5") is not None


def test_a_joiner_the_operator_removed_is_named_until_it_is_admitted_again() -> None:
    joining = THREE.with_joining("n4", "a:4", term=1)
    removed = joining.with_leaving("n4", term=1)
    assert removed.removed == ("n4",)
    # Kept through later changes, so a removed joiner that was away learns it.
    later = removed.with_leaving("n1", term=1).settled(term=1)
    assert later.removed == ("n4",)
    assert later.with_joining("n4", "a:4", term=1).removed == ()
    # A joiner dropped for being dead is not named: it joins again on return.
    assert joining.without_joining("n4", term=1).removed == ()


def test_a_table_remembers_only_the_latest_removed_joiners() -> None:
    table = THREE
    for i in range(REMOVED_KEPT + 3):
        table = table.with_joining(f"j{i}", "a:9", term=1).with_leaving(f"j{i}", term=1)
    assert len(table.removed) == REMOVED_KEPT
    assert table.removed[-1] == f"j{REMOVED_KEPT + 2}"
    assert "j0" not in table.removed


def test_joining_again_under_the_same_id_and_address_changes_nothing() -> None:
    assert THREE.with_joining("n2", "a:2", term=3) is THREE
    moved = THREE.with_joining("n2", "b:2", term=3)
    assert moved.epoch == 2
    assert moved.addresses["n2"] == "b:2"


def test_removing_an_unknown_or_the_last_member_is_refused() -> None:
    with pytest.raises(NotFound):
        THREE.with_leaving("n9", term=1)
    with pytest.raises(InvalidArgument):
        Membership.bootstrap({"n1": "a:1"}).with_leaving("n1", term=1)


def test_the_later_term_wins_between_tables_of_one_epoch() -> None:
    by_old_leader = THREE.with_joining("n4", "a:4", term=1)
    by_new_leader = THREE.with_leaving("n1", term=2)
    assert by_old_leader.epoch == by_new_leader.epoch
    assert by_new_leader.newer_than(by_old_leader)
    assert not by_old_leader.newer_than(by_new_leader)


def test_only_the_joiner_gains_ranges_on_a_join() -> None:
    joining = THREE.with_joining("n4", "a:4", term=1)
    assert gainers(joining, RINGS, 2) == {"n4"}
    assert gainers(THREE, RINGS, 2) == frozenset()


def test_survivors_gain_the_ranges_of_a_leaver() -> None:
    leaving = THREE.with_leaving("n3", term=1)
    assert gainers(leaving, RINGS, 2) == {"n1", "n2"}
    # With as many replicas as members everyone already holds everything.
    assert gainers(leaving, RINGS, 3) == frozenset()


def test_a_change_settles_once_every_live_gainer_synced() -> None:
    leaving = THREE.with_leaving("n3", term=1)
    gaining = gainers(leaving, RINGS, 2)
    assert not ready_to_settle(leaving, gaining, {"n1": leaving.epoch}, ALIVE)
    assert ready_to_settle(leaving, gaining, {"n1": 2, "n2": 2}, ALIVE)
    # A dead survivor is not waited for: anti-entropy catches it up.
    assert ready_to_settle(leaving, gaining, {"n1": 2}, {**ALIVE, "n2": Liveness.DEAD})


def test_a_dead_joiner_is_waited_for_then_dropped() -> None:
    joining = THREE.with_joining("n4", "a:4", term=1)
    gaining = gainers(joining, RINGS, 2)
    dead = {**ALIVE, "n4": Liveness.DEAD}
    assert not ready_to_settle(joining, gaining, {}, dead)
    decide = {
        "term": 1,
        "gaining": gaining,
        "synced": {},
        "liveness": dead,
        "remove_dead_after_ms": 60_000,
        "adopted": {},
        "leases_expired": True,
    }
    assert leader_decision(joining, dead_for_ms={"n4": 59_999}, **decide) is None  # type: ignore[arg-type]
    dropped = leader_decision(joining, dead_for_ms={"n4": 60_000}, **decide)  # type: ignore[arg-type]
    assert dropped is not None
    assert dropped.node_ids == ("n1", "n2", "n3")
    assert not dropped.changing


def test_a_change_settles_only_once_no_member_can_coordinate_on_an_older_table() -> None:
    """Item 11 of docs/correctness.md: a member cut off from the leader still holds
    the table before the change; were the change settled, it and the others would be
    two tables apart, with quorums that need not meet."""
    leaving = THREE.with_leaving("n3", term=1)
    gaining = gainers(leaving, RINGS, 2)
    synced = dict.fromkeys(("n1", "n2", "n3"), leaving.epoch)
    assert ready_to_settle(leaving, gaining, synced, ALIVE)

    def decide(adopted: dict[str, int], leases_expired: bool) -> Membership | None:
        return leader_decision(
            leaving,
            term=1,
            gaining=gaining,
            synced=synced,
            liveness=ALIVE,
            dead_for_ms={},
            remove_dead_after_ms=60_000,
            adopted=adopted,
            leases_expired=leases_expired,
        )

    behind = {"n1": leaving.epoch, "n2": leaving.epoch - 1, "n3": leaving.epoch}
    assert not caught_up(leaving, behind)
    assert decide(behind, leases_expired=False) is None
    settled = decide(behind, leases_expired=True)
    assert settled is not None and not settled.changing
    everyone = dict.fromkeys(("n1", "n2", "n3"), leaving.epoch)
    assert caught_up(leaving, everyone)
    assert decide(everyone, leases_expired=False) == settled


def test_the_leader_removes_a_member_dead_past_the_limit() -> None:
    liveness = {**ALIVE, "n2": Liveness.DEAD}

    def decide(dead_for: int) -> Membership | None:
        return leader_decision(
            THREE,
            term=4,
            gaining=frozenset(),
            synced={},
            liveness=liveness,
            dead_for_ms={"n2": dead_for},
            remove_dead_after_ms=60_000,
            adopted={},
            leases_expired=False,  # starting a change does not wait for leases
        )

    assert decide(59_000) is None
    change = decide(60_000)
    assert change is not None
    assert change.get("n2") is not None
    assert change.get("n2").status is MemberStatus.LEAVING  # type: ignore[union-attr]
    assert change.term == 4


def test_failure_detector_states_follow_silence() -> None:
    detector = FailureDetector(suspect_after_ms=2_000, dead_after_ms=3_000)
    detector.watch(["a", "b"], now_ms=0)
    detector.heard("a", now_ms=1_000)
    assert detector.state("a", 2_500) is Liveness.ALIVE
    assert detector.state("b", 2_500) is Liveness.SUSPECT
    assert detector.state("b", 3_000) is Liveness.DEAD
    assert detector.silent_for("b", 3_500) == 3_500
    detector.heard("b", 3_500)
    assert detector.state("b", 3_500) is Liveness.ALIVE


@st.composite
def change_sequences(draw: st.DrawFn) -> list[tuple[str, str]]:
    return draw(
        st.lists(
            st.tuples(
                st.sampled_from(["join", "leave", "settle"]),
                st.sampled_from([f"n{i}" for i in range(1, 7)]),
            ),
            max_size=30,
        )
    )


@given(change_sequences())
def test_epochs_only_grow_and_a_settled_table_has_no_leavers(
    changes: list[tuple[str, str]],
) -> None:
    table = THREE
    for action, node in changes:
        try:
            if action == "join":
                after = table.with_joining(node, f"h:{node}", term=1)
            elif action == "leave":
                after = table.with_leaving(node, term=1)
            else:
                after = table.settled(term=1) if table.changing else table
        except (Unavailable, NotFound, InvalidArgument):
            continue
        assert after is table or after.epoch == table.epoch + 1
        assert after is table or after.newer_than(table)
        assert sum(m.status is not MemberStatus.NORMAL for m in after.members) <= 1
        if action == "settle":
            assert not after.changing
        assert after.current_nodes()
        table = after


def test_a_leader_does_not_build_on_a_table_a_later_term_made() -> None:
    later = THREE.with_leaving("n3", term=5)
    assert later.made_after(4)
    with pytest.raises(Unavailable) as refused:
        later.settled(term=4)
    assert refused.value.reason == "STALE_LEADER"
    assert later.settled(term=5).term == 5
