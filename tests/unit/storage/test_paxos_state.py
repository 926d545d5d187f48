"""Paxos acceptor state in every engine: one atomic, durable step per call."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from ringkv.core.hlc import Version
from ringkv.core.paxos import (
    AcceptorState,
    Ballot,
    Proposal,
    commit_step,
    prepare_step,
    propose_step,
)
from ringkv.core.records import Record
from ringkv.core.validation import MAX_KEY_BYTES
from ringkv.storage.codec import decode_acceptor_state, encode_acceptor_state
from ringkv.storage.engine import Engine, PaxosStep, T
from ringkv.storage.lmdb_engine import LmdbEngine
from ringkv.storage.memory import MemoryEngine

from .helpers import rec


def run(engine: Engine, key: bytes, step: PaxosStep[T]) -> T:
    """One step alone, as ``CommitQueue.paxos`` sends it when nothing else is queued."""
    (answer,) = engine.paxos([(key, step)])
    result: T = answer
    return result


def test_steps_in_one_batch_see_each_others_effects(engine: Engine) -> None:
    proposal = Proposal(Ballot(4, "a"), rec(b"k", 4, b"v"))
    promise, accepted, committed, late = engine.paxos(
        [
            (b"k", prepare_step(Ballot(4, "a"))),
            (b"k", propose_step(proposal)),
            (b"k", commit_step(proposal)),
            (b"k", prepare_step(Ballot(3, "b"))),
        ]
    )
    assert promise.granted and accepted is True and committed is None
    assert not late.granted
    assert late.promised == Ballot(4, "a")
    assert engine.get(b"k") == proposal.record


def test_a_round_persists_its_state_and_a_commit_applies_its_record(engine: Engine) -> None:
    key = b"counter"
    old = rec(key, 5, b"1")
    run(engine, key, lambda state, _: (state, None, old))  # a plain record to start from
    promise = run(engine, key, prepare_step(Ballot(10, "a")))
    assert promise.granted and promise.current == old
    proposal = Proposal(Ballot(10, "a"), rec(key, 11, b"2"))
    assert run(engine, key, propose_step(proposal)) is True
    assert engine.get(key) == old  # accepted is not applied
    refused = run(engine, key, prepare_step(Ballot(9, "b")))
    assert not refused.granted and refused.accepted == proposal
    run(engine, key, commit_step(proposal))
    assert engine.get(key) == proposal.record
    # A stale commit never overwrites a newer record.
    run(engine, key, commit_step(Proposal(Ballot(8, "c"), rec(key, 7, b"x"))))
    assert engine.get(key) == proposal.record


def test_the_acceptor_state_survives_a_restart(tmp_path: Path) -> None:
    key = b"k" * MAX_KEY_BYTES  # stored under its digest
    proposal = Proposal(Ballot(3, "a"), rec(key, 3, b"v"))
    engine = LmdbEngine(tmp_path)
    run(engine, key, prepare_step(Ballot(3, "a")))
    run(engine, key, propose_step(proposal))
    engine.close()
    engine = LmdbEngine(tmp_path)
    try:
        promise = run(engine, key, prepare_step(Ballot(2, "b")))
        assert not promise.granted
        assert promise.promised == Ballot(3, "a")
        assert promise.accepted == proposal
    finally:
        engine.close()


def test_the_memory_engine_keeps_state_per_key() -> None:
    engine = MemoryEngine()
    run(engine, b"a", prepare_step(Ballot(5, "n")))
    assert run(engine, b"b", prepare_step(Ballot(1, "n"))).granted


ballots = st.builds(Ballot, st.integers(0, 2**62), st.text(min_size=1, max_size=8))
records = st.builds(
    Record,
    key=st.just(b"key"),
    value=st.binary(max_size=40),
    version=st.builds(Version, st.integers(0, 2**62), st.text(min_size=1, max_size=8)),
    tombstone=st.booleans(),
    expires_at_ms=st.integers(0, 2**40),
)


@given(
    st.builds(
        AcceptorState,
        st.none() | ballots,
        st.none() | st.builds(Proposal, ballots, records),
        st.none() | ballots,
    )
)
def test_acceptor_state_round_trips_through_its_stored_form(state: AcceptorState) -> None:
    assert decode_acceptor_state(b"key", encode_acceptor_state(state)) == state
