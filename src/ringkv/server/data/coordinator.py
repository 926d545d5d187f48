"""Coordinating a request across a key's replicas.

Reads go to the key's live replicas (stand-ins too, at sloppy levels) and
return once the level's quorum answered; the newest version wins and stale
replicas are repaired. Writes are stamped here with this node's hybrid
logical clock and return once the level's quorum stored them; the remaining
replicas keep receiving them in the background. LINEARIZABLE follows ABD:
a write first learns the newest version from a quorum and writes a larger
one; a read whose quorum disagrees writes the winner back before answering.
Conditional writes are Paxos rounds (``compare_and_set``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from ringkv.core import quorum
from ringkv.core.consistency import Consistency
from ringkv.core.errors import (
    DeadlineExceeded,
    InternalError,
    ResourceExhausted,
    RingkvError,
    StaleMemberTable,
    Unavailable,
)
from ringkv.core.hlc import HybridLogicalClock, physical_ms
from ringkv.core.quorum import ReplicaSets, Target
from ringkv.core.records import NO_EXPIRY, Record, ReplicaAck, ack
from ringkv.server.cluster.clock_guard import ClockGuard
from ringkv.server.cluster.cluster_view import ClusterView
from ringkv.server.cluster.leader_lease import LeaderLease
from ringkv.server.counters import Counters
from ringkv.server.data.compare_and_set import CompareAndSet
from ringkv.server.data.local_store import LocalStore

log = logging.getLogger(__name__)

T = TypeVar("T")
_MAX_STAMPS = 3
"""Rounds a write is stamped again past newer versions before giving up."""
_MAX_REPLANS = 3
"""Times a request is planned again after a replica refused its member table."""
StandInFinder = Callable[[Target, set[str]], Target | None]
"""Given a failed target and the nodes in use, the node to try in its place."""


@dataclass(frozen=True, slots=True)
class Written:
    """A write that reached its consistency level."""

    record: Record
    replaced_live: bool
    """Whether a replica that acknowledged held a live value before."""


class Coordinator:
    """Runs reads and writes at a consistency level over the cluster view."""

    def __init__(
        self,
        view: ClusterView,
        store: LocalStore,
        clock: HybridLogicalClock,
        now_ms: Callable[[], int],
        counters: Counters,
        *,
        clock_guard: ClockGuard,
        lease: LeaderLease,
    ) -> None:
        self._counters = counters
        self._clock_guard = clock_guard
        self._lease = lease
        self._view = view
        self._store = store
        self._clock = clock
        self._now_ms = now_ms
        self._background: set[asyncio.Task[Any]] = set()
        self._closed = False
        # Conditional and linearizable writes of one key run one at a time on
        # this node (their coordinator, the key's owner), so read-check-write
        # is not interleaved with another such write.
        self._key_locks = KeyLocks()
        self._compare_and_set = CompareAndSet(view, store, clock, rng=random.Random())

    # -- reads ---------------------------------------------------------------

    async def read(self, key: bytes, level: Consistency, timeout_s: float) -> Record | None:
        """The key's live value at ``level``, or None.

        Above ONE only while this node holds its leader lease (waiting up to
        half the timeout for one): its member table might be out of date.
        """
        deadline = _deadline(timeout_s)
        if level is not Consistency.ONE:
            await self._require_lease(key, level, timeout_s / 2)
        winner = await self._read_newest(key, level, deadline)
        return winner if winner is not None and winner.is_live(self._now_ms()) else None

    async def _read_newest(self, key: bytes, level: Consistency, deadline: float) -> Record | None:
        """The newest version a quorum at ``level`` holds, tombstones included."""
        return await _replanned(lambda: self._read_newest_once(key, level, deadline))

    async def _read_newest_once(
        self, key: bytes, level: Consistency, deadline: float
    ) -> Record | None:
        sets, targets = self._plan(key, level)
        # Ask just enough replicas, this node first (its answer is local);
        # each failure brings in the next one. During a membership change ask
        # every replica of both rings: the level must be met in each.
        targets.sort(key=lambda target: target.node_id != self._view.node_id)
        launch = (
            quorum.required_replies(level, len(sets.current))
            if sets.upcoming is None
            else len(targets)
        )
        replies, late = await self._gather(
            targets,
            lambda target: self._read_one(target, key),
            _LevelMet(level, sets),
            deadline,
            "read",
            launch=launch,
            stand_in=self._stand_in_finder(key, level),
        )
        winner = quorum.newest(replies.values())
        replicas_replies = {t.node_id: r for t, r in replies.items() if t.stands_in_for is None}
        stale = quorum.stale_replicas(replicas_replies, winner)
        if winner is not None and stale:
            if level is Consistency.LINEARIZABLE:
                # ABD: make the winner durable at a quorum before anyone sees it.
                await self._send(winner, level, deadline)
            else:
                self._spawn(self._repair(winner, stale))
        if winner is not None and late:
            self._spawn(self._repair_late(winner, late))
        return winner

    async def _read_one(self, target: Target, key: bytes) -> Record | None:
        if target.node_id == self._view.node_id:
            return self._store.read(key)
        return await self._view.peers[target.node_id].read(key)

    async def _repair(self, winner: Record, nodes: list[str]) -> None:
        self._counters.read_repairs += len(nodes)
        await asyncio.gather(
            *(self._write_one(Target(node), winner) for node in nodes), return_exceptions=True
        )

    async def _repair_late(
        self, winner: Record, late: dict[asyncio.Task[Record | None], Target]
    ) -> None:
        done, _ = await asyncio.wait(late, timeout=5.0)
        replies = {
            late[task].node_id: task.result()
            for task in done
            if late[task].stands_in_for is None and task.exception() is None
        }
        stale = quorum.stale_replicas(replies, winner)
        if stale:
            await self._repair(winner, stale)

    # -- writes --------------------------------------------------------------

    async def write(
        self,
        key: bytes,
        value: bytes,
        *,
        level: Consistency,
        timeout_s: float,
        tombstone: bool = False,
        ttl_ms: int = 0,
        expected: int | None = None,
        clock_wait_s: float = 0.0,
    ) -> Written:
        """Write a new version of a key at ``level``.

        Raises Unavailable when the level cannot be met, this node's clock
        may not stamp versions or it holds no leader lease, and nothing was
        sent (safe to retry);
        DeadlineExceeded when the write was sent but too few replicas
        confirmed it in time (it may or may not become visible).
        """
        # A clock far behind its peers' would stamp below writes they already
        # acknowledged; one far ahead would bury the writes that follow. A
        # member table out of date would send it to the wrong replicas.
        deadline = _deadline(timeout_s)
        await self._require_lease(key, level, clock_wait_s)
        await self._clock_guard.require_soon(clock_wait_s)
        conditional = expected is not None or level is Consistency.LINEARIZABLE
        if not conditional and not self._key_locks.held(key):
            record = self._stamp(key, value, tombstone, ttl_ms)
            return await self._replicate(record, level, deadline)
        # Conditional writes are Paxos rounds (compare_and_set); this node runs
        # its own one key at a time, and plain writes queue behind them and
        # linearizable ones here.
        async with self._key_locks.hold(key):
            if expected is not None:
                swapped = await self._compare_and_set.write(
                    key,
                    expected,
                    lambda _: self._stamp(key, value, tombstone, ttl_ms),
                    self._now_ms,
                    deadline,
                )
                previous = swapped.previous
                return Written(
                    swapped.record, previous is not None and previous.is_live(self._now_ms())
                )
            if conditional:
                current = await self._read_newest(key, level, deadline)
                if current is not None:
                    self._clock.observe(current.version.timestamp)
            record = self._stamp(key, value, tombstone, ttl_ms)
            return await self._replicate(record, level, deadline)

    def _stamp(self, key: bytes, value: bytes, tombstone: bool, ttl_ms: int) -> Record:
        # Asked again at the moment of stamping: a lock wait or a read may have
        # passed since the write began, and the verdict with it.
        self._clock_guard.require()
        # Past the local copy first: the clock restarts at 0 with the process.
        local = self._store.read(key)
        if local is not None:
            self._clock.observe(local.version.timestamp)
        version = self._clock.tick(self._now_ms())
        # Expiry counts from the version's time, not this node's wall clock:
        # the clock has caught up with the peers it heard from (up to the
        # maximum offset), so a lagging wall clock writes no value born expired.
        expires_at_ms = physical_ms(version.timestamp) + ttl_ms if ttl_ms else NO_EXPIRY
        return Record(key, value, version, tombstone=tombstone, expires_at_ms=expires_at_ms)

    async def _replicate(self, record: Record, level: Consistency, deadline: float) -> Written:
        """Send a stamped record to the key's targets; return once the level is met.

        A replica holding a newer version (a coordinator whose clock ran
        ahead) answers with its timestamp: the record is stamped again past it
        and resent, so an acknowledged write is never silently lost to skew.
        """
        for _ in range(_MAX_STAMPS):
            acks = await self._send(record, level, deadline)
            newer = max(answer.newer for answer in acks)
            if not newer:
                return Written(record, any(answer.replaced_live for answer in acks))
            self._clock.observe(newer)
            if not self._clock_guard.check().may_stamp:
                raise DeadlineExceeded(
                    "the write met a newer version and this node may no longer stamp a "
                    "later one; it may or may not become visible",
                    reason="WRITE_UNCERTAIN",
                )
            record = replace(record, version=self._clock.tick(self._now_ms()))
        raise InternalError(f"could not write past newer versions in {_MAX_STAMPS} rounds")

    async def _send(self, record: Record, level: Consistency, deadline: float) -> list[ReplicaAck]:
        """The answers of a quorum at ``level`` to one record.

        During a membership change the key's replicas in the next ring are
        written too, and the level must be met among them as well as among
        the current ones (joint quorums, ``ringkv.core.quorum.ReplicaSets``):
        once the change settles, a quorum of the new replicas holds every
        acknowledged write.
        """
        try:
            return await _replanned(lambda: self._send_once(record, level, deadline))
        except StaleMemberTable as error:
            # Replicas on the tables planned before may have stored it.
            raise DeadlineExceeded(
                f"{error.message}; the write may or may not become visible",
                reason="WRITE_UNCERTAIN",
            ) from None

    async def _send_once(
        self, record: Record, level: Consistency, deadline: float
    ) -> list[ReplicaAck]:
        sets, targets = self._plan(record.key, level)
        try:
            acks, running = await self._gather(
                targets,
                lambda target: self._write_one(target, record),
                _LevelMet(level, sets),
                deadline,
                "write",
                launch=len(targets),
                stand_in=self._stand_in_finder(record.key, level),
            )
            self._hint_missed(record, sets, acks, running)
        except QuorumFailed as failure:
            if (
                not failure.answered
                and failure.errors
                and all(isinstance(error, ResourceExhausted) for error in failure.errors)
            ):
                # Every replica refused it (full disks): it is stored nowhere.
                raise failure.errors[0] from None
            raise DeadlineExceeded(
                f"{failure.message}; the write may or may not become visible",
                reason="WRITE_UNCERTAIN",
                metadata=failure.metadata,
            ) from None
        return list(acks.values())

    def _hint_missed(
        self,
        record: Record,
        sets: ReplicaSets,
        acks: dict[Target, ReplicaAck],
        running: dict[asyncio.Task[ReplicaAck], Target],
    ) -> None:
        """Hold a hint here for each replica the write missed, as Cassandra does.

        Missed: a replica that was down with no stand-in (none exists when the
        cluster has no more nodes than copies), whose call failed with no
        stand-in to replace it, or whose call fails after the level was met.
        Without the hint it would lack the write until a read or anti-entropy
        repaired it. Hints do not count toward the level; the usual case, every
        replica written or still being written, costs one callback per call.
        """
        covered = _covered((*acks, *running.values()))
        for node in sets.all():
            if node not in covered:
                self._hint_for(record, node)
        for task, target in running.items():
            task.add_done_callback(
                functools.partial(
                    self._hint_if_failed, record, target.stands_in_for or target.node_id
                )
            )

    def _hint_if_failed(self, record: Record, node: str, call: asyncio.Task[ReplicaAck]) -> None:
        if not call.cancelled() and call.exception() is not None:
            self._hint_for(record, node)

    def _hint_for(self, record: Record, node: str) -> None:
        if node != self._view.node_id and not self._closed:
            self._spawn(self._hold_hint(record, node))

    async def _hold_hint(self, record: Record, node: str) -> None:
        await self._store.apply(record, hint_for=node)

    async def _write_one(self, target: Target, record: Record) -> ReplicaAck:
        if target.node_id == self._view.node_id:
            result = await self._store.apply(record, hint_for=target.stands_in_for)
            return ack(record, result, self._now_ms())
        peer = self._view.peers[target.node_id]
        return await peer.write(record, hint_for=target.stands_in_for)

    # -- shared ----------------------------------------------------------------

    async def _require_lease(self, key: bytes, level: Consistency, wait_s: float) -> None:
        if not self._lease.held:
            # Too few replicas reachable says more, and needs no wait.
            self._plan(key, level)
            await self._lease.require(wait_s)

    def _plan(self, key: bytes, level: Consistency) -> tuple[ReplicaSets, list[Target]]:
        """The key's replica sets and the live nodes to ask: its replicas (with
        stand-ins for the down ones at sloppy levels) and, during a membership
        change, its replicas after the change.

        Raises Unavailable, before anything is sent, when too few are live.
        """
        sets = self._view.replica_sets(key)
        targets = quorum.targets(
            self._view.clockwise(key), len(sets.current), self._view.is_live, level
        )
        targets += [Target(node) for node in sets.pending() if self._view.is_live(node)]
        quorum.check_reachable(level, sets, _covered(targets))
        return sets, targets

    async def _gather(
        self,
        targets: list[Target],
        call: Callable[[Target], Coroutine[Any, Any, T]],
        enough: _LevelMet,
        deadline: float,
        what: str,
        *,
        launch: int,
        stand_in: StandInFinder | None,
    ) -> tuple[dict[Target, T], dict[asyncio.Task[T], Target]]:
        """Call the first ``launch`` targets, and one more for each failure,
        until the targets that succeeded are ``enough``; calls still running go
        on in the background.

        When the targets run out, a failed replica is replaced by a stand-in
        (at sloppy levels), so the call that finds a node down need not fail.
        A replica that refused the request's member table ends it at once
        (StaleMemberTable): it must be planned again on the newer table.
        Returns the successful results and the calls still running.
        """
        loop = asyncio.get_running_loop()
        waiting = iter(targets)
        running: dict[asyncio.Task[T], Target] = {}
        used = {target.node_id for target in targets}

        def start(target: Target) -> None:
            used.add(target.node_id)
            running[loop.create_task(call(target))] = target

        def start_next(failed: Target | None = None) -> None:
            target = next(waiting, None)
            if target is None and failed is not None and stand_in is not None:
                target = stand_in(failed, used)
            if target is not None:
                start(target)

        for _ in range(launch):
            start_next()
        results: dict[Target, T] = {}
        errors: list[BaseException] = []
        try:
            while running and not enough(results.keys()):
                done, _ = await asyncio.wait(
                    running, timeout=deadline - loop.time(), return_when=asyncio.FIRST_COMPLETED
                )
                if not done:
                    break
                for task in done:
                    target = running.pop(task)
                    error = task.exception()
                    if isinstance(error, StaleMemberTable):
                        raise error
                    if error is None:
                        results[target] = task.result()
                    else:
                        errors.append(error)
                        start_next(failed=target)
                if not running and not enough(results.keys()):
                    start_next()
        finally:
            # Calls still running (or orphaned by a cancelled request) finish
            # in the background; close() waits for them.
            for task in running:
                self._track(task)
        if not enough(results.keys()):
            raise QuorumFailed(what, enough.needed, len(results), errors)
        return results, running

    def _stand_in_finder(self, key: bytes, level: Consistency) -> StandInFinder | None:
        """How to replace a replica that failed a call, at levels that allow it."""
        if not quorum.sloppy(level, self._view.replicas):
            return None
        past_preference = self._view.clockwise(key)[self._view.replicas :]

        def find(failed: Target, used: set[str]) -> Target | None:
            for node in past_preference:
                if node not in used and self._view.is_live(node):
                    return Target(node, stands_in_for=failed.stands_in_for or failed.node_id)
            return None

        return find

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        self._track(asyncio.get_running_loop().create_task(work))

    def _track(self, task: asyncio.Task[Any]) -> None:
        self._background.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.debug("background replica call failed", extra={"error": str(task.exception())})

    async def close(self) -> None:
        """Let background replica calls finish (bounded), then drop them."""
        self._closed = True
        if self._background:
            await asyncio.wait(set(self._background), timeout=5.0)
        for task in list(self._background):
            task.cancel()


def _covered(targets: Collection[Target]) -> set[str]:
    """The replicas these targets answer for (a stand-in for the one it replaces)."""
    return {target.stands_in_for or target.node_id for target in targets}


@dataclass(frozen=True, slots=True)
class _LevelMet:
    """Whether the targets that answered meet a level in every replica set."""

    level: Consistency
    sets: ReplicaSets

    def __call__(self, answered: Collection[Target]) -> bool:
        return quorum.met(self.level, self.sets, _covered(answered))

    @property
    def needed(self) -> int:
        """Answers the level needs from the current replicas (for messages)."""
        return quorum.required_replies(self.level, len(self.sets.current))


async def _replanned(attempt: Callable[[], Awaitable[T]]) -> T:
    """Run a request, planning it again each time a replica refuses its member
    table (the refusal brought the newer table, so the next plan uses it)."""
    for _ in range(_MAX_REPLANS):
        try:
            return await attempt()
        except StaleMemberTable:
            continue
    return await attempt()


def _deadline(timeout_s: float) -> float:
    """The event loop time by which a request must be done."""
    return asyncio.get_running_loop().time() + timeout_s


class QuorumFailed(Unavailable):
    """Too few replicas answered a request in time."""

    def __init__(self, what: str, needed: int, answered: int, errors: list[BaseException]) -> None:
        reasons = "; ".join(str(e) for e in errors if isinstance(e, RingkvError))
        super().__init__(
            f"{what}: {answered} of {needed} required replicas answered"
            + (f" ({reasons})" if reasons else ""),
            reason="NOT_ENOUGH_REPLICAS",
            metadata={"needed": str(needed), "answered": str(answered)},
        )
        self.answered = answered
        self.errors = errors


class KeyLocks:
    """One asyncio lock per key, kept only while someone holds or awaits it."""

    def __init__(self) -> None:
        self._locks: dict[bytes, tuple[asyncio.Lock, int]] = {}

    def held(self, key: bytes) -> bool:
        """Whether someone holds or awaits the key's lock."""
        return key in self._locks

    @asynccontextmanager
    async def hold(self, key: bytes) -> AsyncIterator[None]:
        held = self._locks.get(key)
        lock, users = held if held is not None else (asyncio.Lock(), 0)
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)
