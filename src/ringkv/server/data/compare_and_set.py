"""Conditional writes as Paxos rounds among the key's home replicas (``ringkv.core.paxos``).

Any node may coordinate one: the rounds, not a lock on a believed owner,
order the conditional writes of a key, so two coordinators on either side of
a partition cannot both succeed from one version. The cost is four round
trips to a quorum (prepare with the read, propose, commit; a contended or
unfinished round adds more) where an unconditional write takes one.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Collection, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from ringkv.core import quorum
from ringkv.core.consistency import Consistency
from ringkv.core.errors import DeadlineExceeded, PreconditionFailed, StaleMemberTable, Unavailable
from ringkv.core.hlc import HybridLogicalClock, Version
from ringkv.core.paxos import (
    Ballot,
    Outbid,
    Promise,
    Proposal,
    Unfinished,
    after_prepare,
    commit_step,
    prepare_step,
    propose_step,
)
from ringkv.core.quorum import ReplicaSets
from ringkv.core.records import Record, check_precondition
from ringkv.server.cluster.cluster_view import ClusterView
from ringkv.server.data.local_store import LocalStore

T = TypeVar("T")

MAX_BACKOFF_S = 0.2
"""The longest pause before preparing again after losing to another ballot."""


@dataclass(frozen=True, slots=True)
class Swapped:
    """A conditional write that was chosen and committed at a quorum."""

    record: Record
    previous: Record | None
    """The key's newest copy when the write was checked."""


class RoundFailed(Exception):
    """Too few replicas answered a round in time."""


class CompareAndSet:
    """Runs a key's conditional writes as Paxos rounds from this node."""

    def __init__(
        self,
        view: ClusterView,
        store: LocalStore,
        clock: HybridLogicalClock,
        *,
        rng: random.Random,
    ) -> None:
        self._view = view
        self._store = store
        self._clock = clock
        self._rng = rng

    async def write(
        self,
        key: bytes,
        expected: int,
        stamp: Callable[[Record | None], Record],
        now_ms: Callable[[], int],
        deadline: float,
    ) -> Swapped:
        """Write ``stamp(current)`` if the key's newest version is ``expected``
        (``records.check_precondition``).

        Raises PreconditionFailed when it is not (nothing of this write can
        appear), Unavailable when too few home replicas are up and nothing was
        proposed, DeadlineExceeded (``WRITE_UNCERTAIN``) when a proposal was
        sent but the write could not be confirmed in time.
        """
        loop = asyncio.get_running_loop()
        mine: set[Version] = set()
        attempt = 0
        while True:
            if loop.time() >= deadline:
                raise self._gave_up(mine, "the conditional write ran out of time")
            try:
                done = await self._attempt(key, expected, stamp, now_ms, deadline, mine)
            except StaleMemberTable as error:
                if loop.time() >= deadline:
                    raise self._gave_up(mine, error.message) from None
                continue  # The replica's newer table was adopted: plan again.
            except Unavailable as error:  # Too few home replicas up: fails fast.
                raise self._gave_up(mine, error.message) from None
            except RoundFailed as error:
                raise self._gave_up(mine, str(error)) from None
            if done is not None:
                return done
            attempt += 1
            # Lost to another ballot: back off, randomly, so contenders spread out.
            pause = self._rng.uniform(0, min(MAX_BACKOFF_S, 0.01 * 2**attempt))
            await asyncio.sleep(min(pause, max(0.0, deadline - loop.time())))

    async def _attempt(  # noqa: PLR0917 (one round of write's loop)
        self,
        key: bytes,
        expected: int,
        stamp: Callable[[Record | None], Record],
        now_ms: Callable[[], int],
        deadline: float,
        mine: set[Version],
    ) -> Swapped | None:
        """One prepare-read-propose-commit; None when a larger ballot won."""
        sets, targets = self._plan(key)
        ballot = Ballot(self._clock.tick(now_ms()).timestamp, self._view.node_id)
        promises = await self._round(
            sets, targets, lambda node: self._prepare(node, key, ballot), deadline
        )
        decision = after_prepare(list(promises.values()))
        if isinstance(decision, Outbid):
            self._clock.observe(decision.ballot.timestamp)
            return None
        if isinstance(decision, Unfinished):
            # Finish what another round left accepted, under this ballot.
            unfinished = Proposal(ballot, decision.proposal.record)
            if not await self._choose(sets, targets, unfinished, deadline):
                return None
            if unfinished.record.version in mine:
                return Swapped(unfinished.record, None)
            return None
        current = decision.current
        if current is not None:
            await self._spread(promises, current, deadline)
        if current is not None and current.version in mine:
            return Swapped(current, None)  # An earlier attempt's proposal, finished by another.
        try:
            check_precondition(expected, current, now_ms())
        except PreconditionFailed:
            if mine:
                # An earlier round proposed this write: it may have been chosen
                # (and since overwritten), or a later round may still finish
                # it. VERSION_MISMATCH would promise it never shows (matrix
                # seed 64 read such a value).
                raise self._gave_up(
                    mine, "the key moved on after this write was proposed"
                ) from None
            raise
        if current is not None:
            self._clock.observe(current.version.timestamp)
        record = stamp(current)
        mine.add(record.version)
        if not await self._choose(sets, targets, Proposal(ballot, record), deadline):
            return None
        return Swapped(record, current)

    async def _choose(
        self, sets: ReplicaSets, targets: list[str], proposal: Proposal, deadline: float
    ) -> bool:
        """Propose, then commit once a quorum accepted; False if a larger ballot won."""
        accepted = await self._round(
            sets, targets, lambda node: self._propose(node, proposal), deadline
        )
        if not all(accepted.values()):
            return False
        await self._round(sets, targets, lambda node: self._commit(node, proposal), deadline)
        return True

    async def _spread(self, promises: dict[str, Promise], current: Record, deadline: float) -> None:
        """Write ``current`` to the promisers whose copy is older, and wait for all.

        The newest copy may be a round's commit that reached only some
        replicas (its commit round broke off): acknowledged, or built on, as
        it stands, a LINEARIZABLE read of a quorum without those replicas
        would not see it. As Cassandra commits the most recent commit to the
        replicas of the quorum that miss it before it proposes.
        """
        behind = [
            node
            for node, promise in promises.items()
            if promise.current is None or promise.current.version < current.version
        ]
        if not behind:
            return
        loop = asyncio.get_running_loop()
        writes = asyncio.gather(
            *(self._write(node, current) for node in behind), return_exceptions=True
        )
        try:
            results = await asyncio.wait_for(writes, timeout=max(0.0, deadline - loop.time()))
        except TimeoutError:
            raise RoundFailed("the newest copy could not be spread to its quorum in time") from None
        errors = [result for result in results if isinstance(result, BaseException)]
        for error in errors:
            if isinstance(error, StaleMemberTable):
                raise error
        if errors:
            raise RoundFailed(f"the newest copy could not be spread to its quorum: {errors[0]}")

    async def _write(self, node: str, record: Record) -> None:
        if node == self._view.node_id:
            await self._store.apply(record)
            return
        await self._view.peers[node].write(record)

    def _plan(self, key: bytes) -> tuple[ReplicaSets, list[str]]:
        """The key's home replicas (both rings during a change) that are up."""
        sets = self._view.replica_sets(key)
        targets = [node for node in sets.all() if self._view.is_live(node)]
        quorum.check_reachable(Consistency.QUORUM, sets, set(targets))
        return sets, targets

    async def _round(
        self,
        sets: ReplicaSets,
        targets: list[str],
        call: Callable[[str], Coroutine[Any, Any, T]],
        deadline: float,
    ) -> dict[str, T]:
        """Send ``call`` to every target; the answers once a quorum of each set
        answered. The calls still running finish in the background."""
        loop = asyncio.get_running_loop()
        running = {loop.create_task(call(node)): node for node in targets}
        answers: dict[str, T] = {}
        try:
            while running and not quorum.met(Consistency.QUORUM, sets, answers.keys()):
                done, _ = await asyncio.wait(
                    running, timeout=deadline - loop.time(), return_when=asyncio.FIRST_COMPLETED
                )
                if not done:
                    break
                for task in done:
                    node = running.pop(task)
                    error = task.exception()
                    if isinstance(error, StaleMemberTable):
                        raise error
                    if error is None:
                        answers[node] = task.result()
        finally:
            for task in running:
                task.add_done_callback(_retrieve)
        if not quorum.met(Consistency.QUORUM, sets, answers.keys()):
            raise RoundFailed(f"{len(answers)} of {len(targets)} home replicas answered in time")
        return answers

    async def _prepare(self, node: str, key: bytes, ballot: Ballot) -> Promise:
        if node == self._view.node_id:
            return await self._store.paxos(key, prepare_step(ballot))
        return await self._view.peers[node].prepare(key, ballot)

    async def _propose(self, node: str, proposal: Proposal) -> bool:
        if node == self._view.node_id:
            return await self._store.paxos(proposal.record.key, propose_step(proposal))
        return await self._view.peers[node].propose(proposal)

    async def _commit(self, node: str, proposal: Proposal) -> None:
        if node == self._view.node_id:
            await self._store.paxos(proposal.record.key, commit_step(proposal))
            return
        await self._view.peers[node].commit(proposal)

    @staticmethod
    def _gave_up(mine: Collection[Version], why: str) -> Unavailable | DeadlineExceeded:
        if not mine:
            return Unavailable(f"{why}; nothing was proposed", reason="NOT_ENOUGH_REPLICAS")
        return DeadlineExceeded(
            f"{why}; the conditional write may or may not become visible",
            reason="WRITE_UNCERTAIN",
        )


def _retrieve(task: asyncio.Task[object]) -> None:
    if not task.cancelled():
        task.exception()
