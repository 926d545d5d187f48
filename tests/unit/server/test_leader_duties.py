"""The leader's bookkeeping: silence per member, pulled ranges, adopted tables."""

from __future__ import annotations

from ringkv.core.membership import Liveness, Membership, MemberStatus, RingMaker
from ringkv.server.cluster.leader_duties import LeaderDuties

HEARTBEAT_MS = 100
TIMEOUT_MS = 1_000
REMOVE_DEAD_AFTER_MS = 10_000
THREE = Membership.bootstrap({"n1": "a:1", "n2": "a:2", "n3": "a:3"})


def duties() -> LeaderDuties:
    return LeaderDuties(
        "n1",
        heartbeat_interval_ms=HEARTBEAT_MS,
        election_timeout_ms=TIMEOUT_MS,
        remove_dead_after_ms=REMOVE_DEAD_AFTER_MS,
        rings=RingMaker(16),
        replication_factor=2,
    )


def step(
    leader: LeaderDuties, table: Membership, now_ms: int, *, leading: bool = True
) -> tuple[dict[str, Liveness], Membership | None] | None:
    return leader.step(
        leading, table, term=1, synced_epoch=table.epoch, published={}, now_ms=now_ms
    )


def test_a_follower_has_no_duties() -> None:
    assert step(duties(), THREE, 0, leading=False) is None


def test_silence_counts_from_when_the_node_began_to_lead() -> None:
    leader = duties()
    # Members unheard for a long time before: as a follower, it did not watch them.
    assert step(leader, THREE, 50_000, leading=False) is None
    first = step(leader, THREE, 50_000)
    assert first is not None
    assert set(first[0].values()) == {Liveness.ALIVE}
    leader.answered("n2", synced=1, adopted=1, now_ms=50_000 + TIMEOUT_MS - HEARTBEAT_MS)
    later = step(leader, THREE, 50_000 + TIMEOUT_MS)
    assert later is not None
    assert later[0] == {"n1": Liveness.ALIVE, "n2": Liveness.ALIVE, "n3": Liveness.DEAD}


def test_a_member_silent_past_the_limit_is_decommissioned() -> None:
    leader = duties()
    step(leader, THREE, 0)
    for now in range(0, REMOVE_DEAD_AFTER_MS, HEARTBEAT_MS):
        leader.answered("n2", synced=1, adopted=1, now_ms=now)
    quiet = step(leader, THREE, REMOVE_DEAD_AFTER_MS - 1)
    assert quiet is not None and quiet[1] is None
    removing = step(leader, THREE, REMOVE_DEAD_AFTER_MS)
    assert removing is not None
    change = removing[1]
    assert change is not None and change.epoch == THREE.epoch + 1
    n3 = change.get("n3")
    assert n3 is not None and n3.status is MemberStatus.LEAVING


JOINED_AT_MS = 10 * TIMEOUT_MS
"""When the leader below, leading since 0, admits n4."""


def settled_after_join(
    adopted_by: tuple[str, ...], now_ms: int, *, before: Membership = THREE, led_at_ms: int = 0
) -> bool:
    """Whether a leader (since ``led_at_ms``) settles n4's join at ``now_ms``,
    the members in ``adopted_by`` having answered with the join's table, the
    others with the one before it."""
    joining = before.with_joining("n4", "a:4", term=1)
    leader = duties()
    leader.adopted_table(THREE, 0)
    step(leader, THREE, led_at_ms)
    if before is not THREE:
        leader.adopted_table(before, JOINED_AT_MS - TIMEOUT_MS // 2)
    leader.adopted_table(joining, JOINED_AT_MS)
    step(leader, joining, JOINED_AT_MS)
    for node in ("n2", "n3", "n4"):
        if joining.get(node) is not None:
            epoch = joining.epoch if node in adopted_by else before.epoch
            leader.answered(node, synced=joining.epoch, adopted=epoch, now_ms=now_ms)
    result = step(leader, joining, now_ms)
    assert result is not None
    return result[1] is not None and not result[1].changing


def test_a_join_settles_when_every_member_adopted_it_or_the_old_leases_ran_out() -> None:
    assert settled_after_join(("n2", "n3", "n4"), JOINED_AT_MS + 10)
    # n3 still answers with the table before the join: it may hold a lease on it.
    assert not settled_after_join(("n2", "n4"), JOINED_AT_MS + 10)
    # Leases on older tables run out two election timeouts after the leader
    # adopted the join: heartbeats since carried it.
    drained = JOINED_AT_MS + 2 * TIMEOUT_MS
    assert not settled_after_join(("n2", "n4"), drained - 1)
    assert settled_after_join(("n2", "n4"), drained)


def test_a_new_leader_waits_out_the_leases_its_predecessors_gave_before_it_trusts_answers() -> None:
    """A node dropped from the table before this leader was elected may hold a
    lease from a predecessor's heartbeat, and never answers (cluster sim seed
    10364)."""
    led_at = JOINED_AT_MS - 10
    everyone = ("n2", "n3", "n4")
    assert not settled_after_join(everyone, JOINED_AT_MS + 10, led_at_ms=led_at)
    assert not settled_after_join(everyone, led_at + 3 * TIMEOUT_MS - 1, led_at_ms=led_at)
    assert settled_after_join(everyone, led_at + 3 * TIMEOUT_MS, led_at_ms=led_at)


def test_a_node_dropped_from_the_table_holds_up_the_next_settle_until_its_lease_is_over() -> None:
    """Cluster sim seed 140: n3 left and was dropped from the table without
    hearing of it (no heartbeat reaches a non-member), so it never answers
    with a newer table; its lease on the table before its departure ran on
    while the next join settled on members that all had adopted it."""
    without_n3 = THREE.with_leaving("n3", term=1).settled(term=1)
    everyone = ("n2", "n4")
    # Dropped half a timeout before the join (below), its lease may run two
    # from then: sooner than leases on the table before the join run out.
    drained = JOINED_AT_MS - TIMEOUT_MS // 2 + 2 * TIMEOUT_MS
    assert not settled_after_join(everyone, JOINED_AT_MS + 10, before=without_n3)
    assert not settled_after_join(everyone, drained - 1, before=without_n3)
    assert settled_after_join(everyone, drained, before=without_n3)


def test_a_joiner_admitted_while_leading_that_never_comes_up_is_dropped() -> None:
    leader = duties()
    step(leader, THREE, 0)
    phantom = THREE.with_joining("n4", "a:4", term=1)
    leader.adopted_table(phantom, 1_000)
    for now in range(1_000, 1_000 + REMOVE_DEAD_AFTER_MS + 2 * TIMEOUT_MS, HEARTBEAT_MS):
        for node in ("n2", "n3"):
            leader.answered(node, synced=phantom.epoch, adopted=phantom.epoch, now_ms=now)
    silent = step(leader, phantom, 1_000 + TIMEOUT_MS)
    assert silent is not None and silent[0]["n4"] is Liveness.DEAD
    dropped = step(leader, phantom, 1_000 + REMOVE_DEAD_AFTER_MS + TIMEOUT_MS)
    assert dropped is not None
    change = dropped[1]
    assert change is not None and change.get("n4") is None and not change.changing
