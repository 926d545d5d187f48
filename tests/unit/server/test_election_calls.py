"""The election's messages on the wire (ringkv.server.cluster.election_calls):
what the Cluster service reads from a call and answers with."""

from __future__ import annotations

import pytest

from ringkv.api import kv_pb2
from ringkv.core.election import Coordinator, Heartbeat
from ringkv.core.errors import InvalidArgument
from ringkv.core.membership import Liveness, Member, Membership
from ringkv.server.cluster.election_calls import (
    HeartbeatAnswer,
    VoteAnswer,
    heartbeat_answer_to_wire,
    heartbeat_from_wire,
    vote_answer_to_wire,
)
from ringkv.server.transport.wire import membership_from_wire, membership_to_wire

TABLE = Membership(4, (Member("a", "127.0.0.1:1"), Member("b", "127.0.0.1:2")), 3)
LIVENESS = {"a": Liveness.ALIVE, "b": Liveness.SUSPECT}


def test_a_heartbeat_or_claim_is_read_with_its_table_liveness_and_send_time() -> None:
    request = kv_pb2.HeartbeatRequest(
        node_id="b",
        address="127.0.0.1:2",
        term=7,
        is_leader=True,
        members=membership_to_wire(TABLE, LIVENESS),
        sent_wall_ms=123,
    )
    heartbeat = heartbeat_from_wire(request)
    assert (heartbeat.sender, heartbeat.term, heartbeat.sent_wall_ms) == ("b", 7, 123)
    assert heartbeat.table == TABLE
    assert heartbeat.liveness == LIVENESS
    assert heartbeat.message == Heartbeat("b", 7)

    request.claim = True
    assert heartbeat_from_wire(request).message == Coordinator("b", 7)


def test_a_heartbeat_with_no_table_reads_as_none() -> None:
    assert heartbeat_from_wire(kv_pb2.HeartbeatRequest(node_id="b", term=1)).table is None


def test_answers_carry_a_table_only_when_there_is_one_to_send() -> None:
    answer = HeartbeatAnswer("a", 7, True, synced_epoch=3, epoch=4, table=None)
    response = heartbeat_answer_to_wire(answer)
    assert (response.node_id, response.term, response.accepted) == ("a", 7, True)
    assert (response.synced_epoch, response.epoch) == (3, 4)
    assert membership_from_wire(response.members) is None

    newer = heartbeat_answer_to_wire(
        HeartbeatAnswer("a", 7, False, 3, 4, table=TABLE, liveness=LIVENESS)
    )
    assert membership_from_wire(newer.members) == TABLE

    vote = vote_answer_to_wire(VoteAnswer("a", 7, granted=False, table=TABLE, liveness=LIVENESS))
    assert (vote.node_id, vote.term, vote.vote_granted) == ("a", 7, False)
    assert membership_from_wire(vote.members) == TABLE
    assert not vote_answer_to_wire(VoteAnswer("a", 7, True, table=None)).HasField("members")


def test_a_table_names_its_removed_joiners_on_the_wire_and_checks_them() -> None:
    table = TABLE.with_joining("d", "127.0.0.1:4", term=TABLE.term).with_leaving(
        "d", term=TABLE.term
    )
    wire = membership_to_wire(table, LIVENESS)
    assert membership_from_wire(wire) == table
    wire.removed.append(TABLE.members[0].node_id)  # a member cannot also be removed
    with pytest.raises(InvalidArgument):
        membership_from_wire(wire)
    del wire.removed[:]
    wire.removed.append("bad id,=")
    with pytest.raises(InvalidArgument):
        membership_from_wire(wire)
