"""Bully election: hand-written scenarios on single nodes and small fake clusters."""

from __future__ import annotations

import random

import pytest

from ringkv.core.election import (
    Answer,
    Coordinator,
    CoordinatorAck,
    Election,
    ElectionConfig,
    ElectionNode,
    Envelope,
    Heartbeat,
    HeartbeatAck,
    Role,
    priority,
)
from tests.sim.network import Faults, SimNetwork

CONFIG = ElectionConfig()
ET = CONFIG.election_timeout_ms
# Long enough for any election to finish on a healthy network: a timeout with
# jitter, an unanswered Election, then one Coordinator round trip.
SETTLE_MS = 2 * ET
THREE = ("n1", "n2", "n3")
FIVE = ("n1", "n2", "n3", "n4", "n5")


def node(node_id: str = "n2", members: tuple[str, ...] = THREE) -> ElectionNode:
    return ElectionNode(node_id, members, CONFIG, random.Random(0))


def cluster(members: tuple[str, ...] = THREE, seed: int = 0) -> SimNetwork:
    net = SimNetwork(members, CONFIG, random.Random(seed), Faults(min_delay_ms=5, max_delay_ms=5))
    net.start()
    return net


def leaders(net: SimNetwork) -> list[str]:
    return [n for n, state in net.nodes.items() if state.role is Role.LEADER]


def follow(state: ElectionNode, leader: str, term: int, at: int = 0) -> None:
    """Make ``state`` a follower of ``leader`` in ``term``, at ``at``."""
    out = state.receive(Coordinator(leader, term), at)
    assert out.messages[0] == Envelope(leader, CoordinatorAck(state.node_id, term, True))
    assert (state.role, state.leader, state.term) == (Role.FOLLOWER, leader, term)


# -- single nodes -------------------------------------------------------------


def test_a_single_node_leads_itself_at_once() -> None:
    alone = node("solo", ("solo",))
    out = alone.start(100)
    assert (alone.role, alone.leader, alone.term) == (Role.LEADER, "solo", 1)
    assert out.messages == ()
    out = alone.tick(out.wake_at_ms)
    assert alone.role is Role.LEADER
    assert alone.tick(10 * ET).messages == ()
    assert alone.role is Role.LEADER


def test_nothing_happens_before_start() -> None:
    state = node()
    assert state.tick(10 * ET).messages == ()
    assert state.receive(Heartbeat("n3", 1), 0).messages == ()
    assert (state.role, state.leader, state.term) == (Role.FOLLOWER, None, 0)


def test_messages_from_non_members_are_ignored() -> None:
    state = node("n3")
    state.start(0)
    # An ack from a stranger must not count towards the majority.
    assert state.receive(CoordinatorAck("zz", 1, True), 1).messages == ()
    assert state.receive(Coordinator("zz", 9), 1).messages == ()
    assert (state.role, state.term) == (Role.CANDIDATE, 1)


def test_start_asks_only_higher_ids() -> None:
    out = node("n2").start(0)
    assert out.messages == (Envelope("n3", Election("n2", 0)),)
    assert out.wake_at_ms == CONFIG.answer_timeout_ms


def test_the_highest_id_claims_once_no_one_higher_exists() -> None:
    state = node("n3")
    out = state.start(0)
    assert state.role is Role.CANDIDATE
    assert set(out.messages) == {
        Envelope("n1", Coordinator("n3", 1)),
        Envelope("n2", Coordinator("n3", 1)),
    }
    # A majority of three is two: one accepted ack besides its own suffices.
    out = state.receive(CoordinatorAck("n1", 1, True), 10)
    assert (state.role, state.leader, state.term) == (Role.LEADER, "n3", 1)
    assert set(out.messages) == {
        Envelope("n1", Heartbeat("n3", 1)),
        Envelope("n2", Heartbeat("n3", 1)),
    }


def test_no_answer_then_claim_answer_then_wait() -> None:
    state = node("n2")
    out = state.start(0)
    out = state.tick(out.wake_at_ms)
    assert set(out.messages) == {
        Envelope("n1", Coordinator("n2", 1)),
        Envelope("n3", Coordinator("n2", 1)),
    }

    other = node("n2")
    other.start(0)
    out = other.receive(Answer("n3", 0), 10)
    assert out.messages == ()
    assert out.wake_at_ms >= 10 + ET  # Waits for n3 to announce itself.
    assert other.tick(CONFIG.answer_timeout_ms).messages == ()
    assert other.role is Role.CANDIDATE


def test_a_higher_node_answers_an_election_and_runs_its_own_once_its_leader_is_silent() -> None:
    state = node("n2")
    state.start(0)
    follow(state, "n3", 1)
    state.receive(Heartbeat("n3", 1), 0)
    # Its leader spoke lately: it only answers (the leader lives).
    out = state.receive(Election("n1", 1), 50)
    assert out.messages == (Envelope("n1", Answer("n2", 1)),)
    assert (state.role, state.leader) == (Role.FOLLOWER, "n3")
    out = state.receive(Election("n1", 1), ET)
    assert out.messages == (
        Envelope("n1", Answer("n2", 1)),
        Envelope("n3", Election("n2", 1)),
    )
    assert state.role is Role.CANDIDATE


def test_an_accepted_claim_holds_a_follower_as_a_heartbeat_does() -> None:
    """Its ack counts toward the claimant's lease: following another before the
    lease could have run out would let two leaders overlap (the election sim
    found it so)."""
    state = node("n2", FIVE)
    state.start(0)
    follow(state, "n4", 1)  # n4 claimed; it may yet get its majority
    state.receive(Coordinator("n5", 2), ET - 1)
    assert (state.leader, state.term) == ("n4", 1)
    state.receive(Coordinator("n5", 3), ET)
    assert (state.leader, state.term) == ("n5", 3)


def test_a_follower_that_hears_its_leader_refuses_a_second_one() -> None:
    """Issue 12: a bridge node that switched to the other side's claimant would make
    two leaders overlap, and the two sides take turns for good."""
    state = node("n2", FIVE)
    state.start(0)
    follow(state, "n4", 1)
    out = state.receive(Coordinator("n5", 2), 100)
    assert out.messages == (Envelope("n5", CoordinatorAck("n2", 1, False)),)
    assert (state.role, state.leader, state.term) == (Role.FOLLOWER, "n4", 1)
    # The leader it follows may claim a later term; heartbeats keep it fresh.
    state.receive(Heartbeat("n4", 1), ET - 1)
    assert state.receive(Coordinator("n5", 2), ET).messages[0].message == CoordinatorAck(
        "n2", 1, False
    )
    # An election timeout after n4 was last heard, n5 is followed.
    state.receive(Coordinator("n5", 3), 2 * ET - 1)
    assert (state.leader, state.term) == ("n5", 3)


def test_a_node_that_resumed_a_vote_follows_no_new_leader_for_an_election_timeout() -> None:
    """Cluster sim seed 10609: n1 acked n3, restarted half a second later, and
    made n5's majority while n3's lease, counted on n1's ack, still ran."""
    restarted = ElectionNode("n2", FIVE, CONFIG, random.Random(0), term=7, term_leader="n4")
    assert restarted.start(1_000).messages == ()  # it asks no one yet
    claim = restarted.receive(Coordinator("n5", 8), 1_000 + ET - 1)
    assert claim.messages[0] == Envelope("n5", CoordinatorAck("n2", 7, False))
    heartbeat = restarted.receive(Heartbeat("n4", 7), 1_000 + ET - 1)  # the leader it acked
    assert heartbeat.messages[0] == Envelope("n4", HeartbeatAck("n2", 7, True))
    fresh = ElectionNode("n2", FIVE, CONFIG, random.Random(0), term=7, term_leader="n4")
    fresh.start(1_000)
    later = fresh.receive(Coordinator("n5", 8), 1_000 + ET)
    assert later.messages[0] == Envelope("n5", CoordinatorAck("n2", 8, True))


def test_a_restarted_follower_runs_no_election_for_an_election_timeout() -> None:
    restarted = ElectionNode("n2", THREE, CONFIG, random.Random(0), term=7, term_leader="n3")
    assert restarted.start(1_000).messages == ()
    assert restarted.tick(1_000 + ET - 1).messages == ()
    asked = restarted.tick(1_000 + ET + CONFIG.jitter_ms).messages
    assert asked == (Envelope("n3", Election("n2", 7)),)


def test_a_restarted_node_that_claimed_its_term_claims_again_at_once() -> None:
    """It acknowledged no one since it claimed: it has no promise to keep."""
    restarted = ElectionNode("n3", THREE, CONFIG, random.Random(0), term=7, term_leader="n3")
    claims = restarted.start(1_000).messages
    assert {e.to for e in claims} == {"n1", "n2"}
    assert all(isinstance(e.message, Coordinator) for e in claims)


def test_a_leader_answers_an_election_with_a_heartbeat() -> None:
    state = node("n3")
    state.start(0)
    state.receive(CoordinatorAck("n2", 1, True), 1)
    out = state.receive(Election("n1", 0), 50)
    assert out.messages == (Envelope("n1", Answer("n3", 1)), Envelope("n1", Heartbeat("n3", 1)))
    assert state.role is Role.LEADER


def test_tick_is_idempotent() -> None:
    state = node("n3")
    state.start(0)
    state.receive(CoordinatorAck("n1", 1, True), 1)
    state.receive(HeartbeatAck("n1", 1, True), 2)
    first = state.tick(CONFIG.heartbeat_interval_ms + 1)
    assert len(first.messages) == 2
    for _ in range(3):
        again = state.tick(CONFIG.heartbeat_interval_ms + 1)
        assert again.messages == ()
        assert again.wake_at_ms == first.wake_at_ms
    # A spurious early tick does nothing either.
    follower = node("n1")
    follower.start(0)
    follow(follower, "n3", 1)
    assert follower.tick(1).messages == ()
    assert follower.tick(ET - 1).messages == ()
    assert follower.role is Role.FOLLOWER


def test_lower_term_messages_are_rejected() -> None:
    state = node("n2")
    state.start(0)
    follow(state, "n3", 5)
    out = state.receive(Heartbeat("n3", 4), 10)
    assert out.messages == (Envelope("n3", HeartbeatAck("n2", 5, False)),)
    out = state.receive(Coordinator("n3", 3), 10)
    assert out.messages == (Envelope("n3", CoordinatorAck("n2", 5, False)),)
    assert (state.leader, state.term) == ("n3", 5)


def test_a_node_never_accepts_two_leaders_in_one_term() -> None:
    state = node("n1", FIVE)
    state.start(0)
    follow(state, "n4", 2)
    for claim in (Coordinator("n5", 2), Heartbeat("n5", 2), Coordinator("n3", 2)):
        out = state.receive(claim, 10)
        assert not out.messages[0].message.accepted  # type: ignore[union-attr]
        assert (state.leader, state.term) == ("n4", 2)
    # A later term may have another leader (once n4 has been silent for a while).
    follow(state, "n5", 3, at=ET)


def test_a_candidate_does_not_accept_another_leader_in_its_own_term() -> None:
    state = node("n2")
    state.start(0)
    state.tick(CONFIG.answer_timeout_ms)  # No answer: claims term 1 for itself.
    assert state.term == 1
    out = state.receive(Coordinator("n3", 1), 1600)
    assert out.messages == (Envelope("n3", CoordinatorAck("n2", 1, False)),)
    follow(state, "n3", 2)


def test_a_lower_id_never_leads_a_higher_one() -> None:
    state = node("n3")
    state.start(0)
    state.receive(CoordinatorAck("n1", 1, True), 1)
    out = state.receive(Heartbeat("n2", 7), 10)
    # It takes over: as the highest id it claims a term past the one it saw,
    # and its rejection tells n2 about that term.
    assert out.messages[0] == Envelope("n2", HeartbeatAck("n3", 8, False))
    assert Envelope("n1", Coordinator("n3", 8)) in out.messages
    assert state.role is Role.CANDIDATE


def test_a_claimant_rejected_by_a_higher_id_waits_for_it() -> None:
    state = node("n2")
    state.start(0)
    state.tick(CONFIG.answer_timeout_ms)
    out = state.receive(CoordinatorAck("n3", 1, False), 1600)
    assert out.messages == ()
    assert state.role is Role.CANDIDATE
    assert out.wake_at_ms >= 1600 + ET


def test_a_claimant_rejected_for_its_term_claims_a_later_one() -> None:
    state = node("n3")
    state.start(0)
    out = state.receive(CoordinatorAck("n1", 4, False), 10)
    assert Envelope("n1", Coordinator("n3", 5)) in out.messages
    assert state.term == 5


def test_a_leader_that_sees_a_higher_term_steps_down() -> None:
    state = node("n2", ("n1", "n2"))
    state.start(0)
    assert (state.role, state.term) == (Role.CANDIDATE, 1)
    state.receive(CoordinatorAck("n1", 1, True), 1)
    assert state.role is Role.LEADER
    # n1 now follows someone in a later term (it was told by a higher node).
    out = state.receive(HeartbeatAck("n1", 3, False), 5)
    assert state.role is not Role.LEADER
    assert out.messages == (Envelope("n1", Coordinator("n2", 4)),)


def test_a_leader_steps_down_without_acks_from_a_majority() -> None:
    state = node("n3")
    out = state.start(0)
    out = state.receive(CoordinatorAck("n1", 1, True), 0)
    now = 0
    while now < ET:
        now = out.wake_at_ms
        out = state.tick(now)
    assert now == ET  # Woken exactly when the lease runs out.
    assert (state.role, state.leader) == (Role.FOLLOWER, None)


def test_a_late_ack_extends_the_lease_only_from_when_its_heartbeat_was_sent() -> None:
    """Issue 12: a deposed leader's lease must not outlive its followers' patience.
    An ack that arrives just before the lease ends, answering a heartbeat sent long
    before, vouches only for the moment that heartbeat left."""
    state = node("n3")
    state.start(0)
    state.receive(CoordinatorAck("n1", 1, True, sent_ms=0), 10)
    assert state.role is Role.LEADER
    sent_at = 10 + CONFIG.heartbeat_interval_ms  # the first heartbeat went out on leading
    out = state.tick(sent_at)
    (heartbeat,) = {e.message for e in out.messages if e.to == "n1"}
    assert isinstance(heartbeat, Heartbeat)
    assert heartbeat.sent_ms == sent_at
    # n1 accepted it at once, but its ack is held up until just before the lease ends.
    late = HeartbeatAck("n1", 1, True, sent_ms=heartbeat.sent_ms)
    expiry = sent_at + ET
    state.receive(late, expiry - 1)
    roles = []
    for now in (expiry - 1, expiry):
        state.tick(now)
        roles.append(state.role)
    assert roles == [Role.LEADER, Role.FOLLOWER]


def test_a_follower_echoes_the_send_time_of_what_it_accepts() -> None:
    state = node("n1")
    state.start(0)
    out = state.receive(Heartbeat("n3", 1, sent_ms=1234), 2000)
    (ack,) = (e.message for e in out.messages if e.to == "n3")
    assert ack == HeartbeatAck("n1", 1, True)
    assert isinstance(ack, HeartbeatAck)
    assert ack.sent_ms == 1234


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="must exceed"):
        ElectionConfig(heartbeat_interval_ms=3000, election_timeout_ms=3000)
    with pytest.raises(ValueError, match="positive"):
        ElectionConfig(answer_timeout_ms=0)
    with pytest.raises(ValueError, match="not one of the members"):
        ElectionNode("x", THREE, CONFIG, random.Random(0))


# -- small clusters on a reliable network ---------------------------------------


def test_three_nodes_elect_the_highest_id() -> None:
    net = cluster()
    net.run_until(SETTLE_MS)
    assert leaders(net) == ["n3"]
    assert {n.leader for n in net.nodes.values()} == {"n3"}
    assert len({n.term for n in net.nodes.values()}) == 1
    net.run_until(10 * ET)  # And it stays that way.
    assert leaders(net) == ["n3"]
    assert {n.leader for n in net.nodes.values()} == {"n3"}


def test_when_the_leader_dies_the_next_highest_takes_over() -> None:
    net = cluster()
    net.run_until(SETTLE_MS)
    old_term = net.nodes["n3"].term
    dead_at = net.now_ms
    net.isolate("n3")
    net.run_until(dead_at + ET - 1)
    assert "n2" not in leaders(net)  # Nobody moves before the election timeout.
    net.run_until(dead_at + SETTLE_MS)
    assert net.nodes["n2"].role is Role.LEADER
    assert net.nodes["n1"].leader == "n2"
    assert net.nodes["n2"].term > old_term
    # The cut-off leader lost its majority, so it stepped down.
    assert net.nodes["n3"].role is not Role.LEADER


def test_the_old_leader_returns_and_takes_over_with_a_higher_term() -> None:
    net = cluster()
    net.run_until(SETTLE_MS)
    net.isolate("n3")
    net.run_until(2 * SETTLE_MS)
    assert leaders(net) == ["n2"]
    n2_term = net.nodes["n2"].term
    net.heal()
    net.run_until(3 * SETTLE_MS)
    assert leaders(net) == ["n3"]
    assert net.nodes["n3"].term > n2_term
    assert {n.leader for n in net.nodes.values()} == {"n3"}


def test_a_minority_partition_never_elects_a_leader() -> None:
    net = cluster(FIVE)
    net.partition(("n1", "n2", "n3"), ("n4", "n5"))
    seen_leading: set[str] = set()
    net.observers.append(lambda: seen_leading.update(leaders(net)))
    net.run_until(10 * ET)
    assert seen_leading == {"n3"}
    assert net.nodes["n5"].role is Role.CANDIDATE  # It keeps trying, in vain.


def test_an_isolated_node_never_becomes_leader() -> None:
    net = cluster()
    net.run_until(SETTLE_MS)
    net.isolate("n1")
    was_leader: list[bool] = []
    net.observers.append(lambda: was_leader.append(net.nodes["n1"].role is Role.LEADER))
    net.run_until(10 * ET)
    assert not any(was_leader)
    assert leaders(net) == ["n3"]
    net.heal()  # Its inflated term must not unseat the rightful leader for long.
    net.run_until(10 * ET + SETTLE_MS)
    assert leaders(net) == ["n3"]
    assert {n.leader for n in net.nodes.values()} == {"n3"}


def test_numbers_in_ids_rank_as_numbers() -> None:
    assert priority("n10") > priority("n9")
    assert priority("ringkv-10") > priority("ringkv-2")
    assert priority("node3") > priority("node2")
    assert priority("b") > priority("a10")
    assert priority("n01") != priority("n1")
    ids = ["n10", "n9", "n1", "n100", "n2"]
    assert sorted(ids, key=priority) == ["n1", "n2", "n9", "n10", "n100"]


def test_the_highest_numbered_id_wins_an_election_of_ten() -> None:
    members = [f"n{i}" for i in range(1, 11)]
    config = ElectionConfig()
    nodes = {m: ElectionNode(m, members, config, random.Random(0)) for m in members}
    for member in members[:-1]:
        nodes[member].start(0)
    # n10 has no higher id to ask, so it claims at once; every other member
    # ranks below it (as strings, "n9" would outrank "n10") and accepts.
    claims = nodes["n10"].start(0).messages
    acks = [nodes[e.to].receive(e.message, 1).messages[0].message for e in claims]
    assert all(isinstance(ack, CoordinatorAck) and ack.accepted for ack in acks), acks
    for ack in acks:
        nodes["n10"].receive(ack, 2)
    assert nodes["n10"].role is Role.LEADER
