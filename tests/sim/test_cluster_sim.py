"""Seeded fault schedules run through the real ``MembershipManager`` (``cluster_sim.py``).

Each schedule starts 3-5 nodes as the seed's command lines do (every node
names the others), then for thirty simulated seconds partitions them
(random splits, the leader alone, one-way cuts, a bridge node that sees both
halves, and flapping between them), drops and delays messages (some past the
election timeout), crashes and restarts nodes, admits joiners and removes
members; then it heals everything and waits for agreement. The invariants
are listed in ``cluster_sim.py``; a failure names its seed and the events
that led to it.

Replay one with ``RINGKV_SIM_SEED=<seed> pytest tests/sim/test_cluster_sim.py -k replay``;
explore fresh seeds with ``RINGKV_SIM_SEED_BASE=<n>``, or run thousands with
``python -m tests.sim.cluster_sim --seeds 10000``.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

import pytest

from ringkv.api import kv_pb2
from tests.sim.cluster_sim import ET_MS, SETTLE_S, ClusterSim, Outcome, SimNode, run_schedule

ET_S = ET_MS / 1000
SCHEDULES = 200
CHUNKS = 4
SEED_BASE = int(os.environ.get("RINGKV_SIM_SEED_BASE", "0"))


def checked(outcome: Outcome) -> Outcome:
    if outcome.violations:
        raise AssertionError(
            f"seed {outcome.seed}: {outcome.violations[0]}\n"
            + "\n".join(outcome.events[-60:])
            + f"\n  replay: RINGKV_SIM_SEED={outcome.seed} pytest {__file__} -k replay"
        )
    return outcome


@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_random_schedules_keep_the_invariants(chunk: int) -> None:
    per_chunk = SCHEDULES // CHUNKS
    first = SEED_BASE + chunk * per_chunk
    outcomes = [checked(run_schedule(seed)) for seed in range(first, first + per_chunk)]
    # The schedules really exercised the nodes: leaders came and went, and
    # leaders changed the table (joins, departures, their settling).
    assert sum(o.elections for o in outcomes) > 3 * per_chunk
    assert sum(o.tables_made for o in outcomes) > per_chunk


def test_replay_seed() -> None:
    """RINGKV_SIM_SEED=<n> replays the schedule a failure named (seed 0 otherwise)."""
    checked(run_schedule(int(os.environ.get("RINGKV_SIM_SEED", "0"))))


def test_the_simulation_is_deterministic() -> None:
    """A seed replays the same events, or a replayed failure would not recur."""
    seven = run_schedule(7).events
    assert run_schedule(7).events == seven
    assert run_schedule(8).events != seven


async def until(sim: ClusterSim, done: Callable[[], bool], within_s: float) -> None:
    deadline = sim.loop.time() + within_s
    while not done():
        assert sim.loop.time() < deadline, "the scenario went off script:\n" + "\n".join(sim.events)
        await asyncio.sleep(0.01)


def leader(sim: ClusterSim) -> SimNode | None:
    leading = [n for n in sim.running if n.manager is not None and n.manager.leads]
    return leading[0] if len(leading) == 1 else None


def test_a_cut_off_leader_whose_messages_arrive_late_never_overlaps_its_successor() -> None:
    """Issue 12: every message between the leader and the others is held past
    the election timeout (its heartbeats and their acks), and an operator on
    its side asks it to admit a node, then another once the others elected a
    new leader. Checked at every event: never two leaders, and no
    table made by the old leader once a newer term has one."""

    async def scenario(sim: ClusterSim) -> None:
        nodes = [sim.add_node(f"n{i}") for i in (1, 2, 3)]
        for node in nodes:
            seeds = {n.node_id: n.address for n in nodes if n is not node}
            sim.start(node, seeds, joins_existing=False)
        await until(sim, lambda: sim.disagreement() is None, SETTLE_S)
        old = leader(sim)
        assert old is not None and old.view is not None
        old_term = old.view.term
        others = [n.node_id for n in nodes if n is not old]

        network = sim.network
        network.held = {(old.node_id, n) for n in others} | {(n, old.node_id) for n in others}
        network.held_ms = (1.2 * ET_MS, 2 * ET_MS)

        def admit(joiner: SimNode) -> None:
            request = kv_pb2.JoinRequest(node_id=joiner.node_id, address=joiner.address)
            sim.call_in_background(sim.operator(old).Join(request, timeout=5.0))

        admit(sim.add_node("x1"))
        await until(sim, lambda: leader(sim) not in (None, old), 3 * ET_S)
        new = leader(sim)
        assert new is not None and new.view is not None
        new_term = new.view.term
        assert new_term > old_term
        admit(sim.add_node("x2"))  # to a leader that no longer leads
        # The held messages land: the old leader learns of its successor.
        await until(sim, lambda: old.view is not None and old.view.term >= new_term, 3 * ET_S)
        network.held = set()
        await sim.heal_and_settle()

        by_old = [table for maker, table in sim.made if maker == old.node_id]
        assert all(table.term == old_term for table in by_old)
        assert not any(table.get("x2") for table in by_old)  # it admitted no one once deposed
        assert any(table.get("x2") for _, table in sim.made)  # its successor did

    checked(run_schedule(1, scenario))
