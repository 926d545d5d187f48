"""The Paxos acceptor rules and the proposer's decision after a prepare round."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from ringkv.core.hlc import Version
from ringkv.core.paxos import (
    AcceptorState,
    Ballot,
    Outbid,
    Prepared,
    Promise,
    Proposal,
    Unfinished,
    after_prepare,
    commit,
    prepare,
    propose,
)
from ringkv.core.records import Record


def rec(timestamp: int) -> Record:
    return Record(b"k", b"v%d" % timestamp, Version(timestamp, "n"))


def ballot(timestamp: int, node: str = "a") -> Ballot:
    return Ballot(timestamp, node)


def test_a_smaller_ballot_than_the_promise_is_refused_and_told_the_winner() -> None:
    state, promise = prepare(AcceptorState(), ballot(5), None)
    assert promise.granted and state.promised == ballot(5)
    again, refused = prepare(state, ballot(4), rec(1))
    assert not refused.granted
    assert refused.promised == ballot(5)
    assert refused.current == rec(1)
    assert again == state
    # The same ballot again (a duplicate message) is granted again.
    assert prepare(state, ballot(5), None)[1].granted


def test_a_proposal_below_the_promise_is_refused() -> None:
    state, _ = prepare(AcceptorState(), ballot(5), None)
    assert propose(state, Proposal(ballot(4), rec(1))) == (state, False)
    accepted, ok = propose(state, Proposal(ballot(5), rec(1)))
    assert ok and accepted.accepted == Proposal(ballot(5), rec(1))


def test_a_commit_clears_what_it_supersedes_but_not_a_newer_acceptance() -> None:
    state = AcceptorState(ballot(7), Proposal(ballot(7), rec(2)), None)
    assert commit(state, Proposal(ballot(6), rec(1))) == AcceptorState(
        ballot(7), Proposal(ballot(7), rec(2)), ballot(6)
    )
    # A late proposal of an older round than the commit is refused.
    late = commit(AcceptorState(), Proposal(ballot(6), rec(1)))
    assert propose(late, Proposal(ballot(5), rec(0)))[1] is False
    assert commit(state, Proposal(ballot(7), rec(2))).accepted is None


def promise(
    granted: bool = True,
    accepted: Proposal | None = None,
    committed: Ballot | None = None,
    current: Record | None = None,
    promised: Ballot | None = None,
) -> Promise:
    return Promise(granted, promised or ballot(9), accepted, committed, current)


def test_after_prepare() -> None:
    assert after_prepare([promise(), promise(False, promised=ballot(12, "b"))]) == Outbid(
        ballot(12, "b")
    )
    unfinished = Proposal(ballot(8), rec(3))
    assert after_prepare(
        [promise(accepted=unfinished, committed=ballot(7)), promise(committed=ballot(7))]
    ) == Unfinished(unfinished)
    # Accepted, but a newer copy exists (the round that wrote it finished or
    # superseded the proposal; a gainer that pulled the copy has no ballots).
    assert after_prepare(
        [promise(accepted=unfinished, current=rec(5)), promise(current=rec(2))]
    ) == Prepared(rec(5))
    # Accepted but already committed (here or on another replica): done.
    assert after_prepare(
        [promise(accepted=unfinished, current=rec(2)), promise(committed=ballot(8), current=rec(3))]
    ) == Prepared(rec(3))


@given(
    st.lists(
        st.tuples(st.sampled_from(["prepare", "propose", "commit"]), st.integers(1, 20)),
        max_size=30,
    )
)
def test_promises_never_go_back_and_commits_never_go_back(steps: list[tuple[str, int]]) -> None:
    state = AcceptorState()
    for kind, number in steps:
        before = state
        chosen = Proposal(ballot(number), rec(number))
        if kind == "prepare":
            state, _ = prepare(state, ballot(number), None)
        elif kind == "propose":
            state, ok = propose(state, chosen)
            assert ok == (before.promised is None or ballot(number) >= before.promised)
        else:
            state = commit(state, chosen)
        if before.promised is not None:
            assert state.promised is not None and state.promised >= before.promised
        if before.committed is not None:
            assert state.committed is not None and state.committed >= before.committed
        if state.accepted is not None and state.committed is not None:
            # Newer than the commit, or a duplicate of it (done, as after_prepare sees it).
            assert state.accepted.ballot >= state.committed
