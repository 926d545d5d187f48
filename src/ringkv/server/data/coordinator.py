"""Coordinating a request across a key's replicas: the shell around
``ringkv.core.coordination``.

The rules (who is called, when the level is met, restamping past newer
versions, hints, read repair, ABD write-back) are the pure request machines
of ``ringkv.core.coordination``; this module drives them with real calls to
the local store and the peers, holds the hints they ask for, and runs what
needs this node's state: the leader lease, the clock guard, the key locks of
conditional writes. Conditional writes are Paxos rounds (``compare_and_set``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from ringkv.core.consistency import Consistency
from ringkv.core.coordination import (
    Plan,
    PlanDiverged,
    Planner,
    ReadRequest,
    Ready,
    Repair,
    Request,
    Restamper,
    WriteOutcome,
    WritePlanner,
    WriteRequest,
    Written,
    group_by_plan,
    key_planner,
    plan,
    shared_planner,
    stamp,
)
from ringkv.core.errors import RingkvError, StorageFull
from ringkv.core.hlc import HybridLogicalClock
from ringkv.core.quorum import ReplicaSets
from ringkv.core.records import Record
from ringkv.server.cluster.clock_guard import ClockGuard
from ringkv.server.cluster.clock_mark import ClockMark
from ringkv.server.cluster.cluster_view import ClusterView
from ringkv.server.cluster.leader_lease import LeaderLease
from ringkv.server.counters import Counters
from ringkv.server.data.compare_and_set import CompareAndSet
from ringkv.server.data.local_store import LocalStore
from ringkv.server.data.replica_calls import ReplicaCalls

log = logging.getLogger(__name__)

T = TypeVar("T")


_CLOSE_TIMEOUT_S = 5.0
"""How long close() lets background replica calls run before it cancels them."""


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
        clock_mark: ClockMark,
    ) -> None:
        self._counters = counters
        self._clock_mark = clock_mark
        self._clock_guard = clock_guard
        self._lease = lease
        self._view = view
        self._store = store
        self._clock = clock
        self._now_ms = now_ms
        self._background: set[asyncio.Task[Any]] = set()
        self._closed = False
        self._calls = ReplicaCalls(
            view, store, now_ms, lambda batch, then: self._spawn(batch, then=then)
        )
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
        elif self._answers_alone(key):
            # What the request's one call, to this replica, would answer.
            winner = self._store.read(key)
        else:
            winner = await self._read_newest(key, level, deadline)
        return winner if winner is not None and winner.is_live(self._now_ms()) else None

    def _answers_alone(self, key: bytes) -> bool:
        """Whether a read of ``key`` at ONE would call this node's replica
        and no other: it is a live replica of the key and no membership
        change is under way (which would ask the next ring's replicas too)."""
        try:
            read_plan = self._plan_for(Consistency.ONE, local_first=True)(key)
        except RingkvError:
            return False  # the request fails the same way, with its own words
        first = read_plan.targets[0]
        return (
            read_plan.sets.upcoming is None
            and first.node_id == self._view.node_id
            and first.stands_in_for is None
        )

    async def _read_newest(self, key: bytes, level: Consistency, deadline: float) -> Record | None:
        """The newest version a quorum at ``level`` holds, tombstones included."""
        request = ReadRequest(
            key, level, self._planner(key, level, local_first=True), node_id=self._view.node_id
        )
        return await self._run(request, deadline)

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
        await self._clock_mark.stay_ahead()
        conditional = expected is not None or level is Consistency.LINEARIZABLE
        if not conditional and not self._key_locks.held(key):
            record = self._stamp(key, value, ttl_ms, tombstone)
            return await self._replicate(record, level, deadline)
        # Conditional writes are Paxos rounds (compare_and_set); this node runs
        # its own one key at a time, and plain writes queue behind them and
        # linearizable ones here.
        async with self._key_locks.hold(key):
            if expected is not None:
                swapped = await self._compare_and_set.write(
                    key,
                    expected,
                    lambda _: self._stamp(key, value, ttl_ms, tombstone),
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
            record = self._stamp(key, value, ttl_ms, tombstone)
            return await self._replicate(record, level, deadline)

    async def write_many(
        self,
        entries: Sequence[tuple[bytes, bytes, int]],
        *,
        level: Consistency,
        timeout_s: float,
        clock_wait_s: float = 0.0,
    ) -> list[WriteOutcome]:
        """Plain writes of many keys (key, value, ttl_ms): each one's outcome.

        The keys are stamped together, under the same rules as ``write``, and
        those with the same replicas go in one write request: one call per
        replica carries them all, and the level is counted once for them.
        The requests are driven together, so the calls they make at one moment
        go out as one commit here and one batch per peer. Keys a conditional
        write holds, LINEARIZABLE writes, and keys a new member table moved
        apart mid-request go one by one through ``write``.
        """
        loop = asyncio.get_running_loop()
        deadline = _deadline(timeout_s)
        batched = level is not Consistency.LINEARIZABLE
        if batched and entries:
            try:
                await self._require_lease(entries[0][0], level, clock_wait_s)
                await self._clock_guard.require_soon(clock_wait_s)
                await self._clock_mark.stay_ahead()
            except RingkvError as not_now:  # nothing was sent
                return [not_now] * len(entries)
        # From here to the stamps, no await: a key a conditional write takes
        # meanwhile would otherwise be stamped beside its Paxos round.
        together = [
            i for i, (key, _, _) in enumerate(entries) if batched and not self._key_locks.held(key)
        ]
        batch = set(together)
        alone = [i for i in range(len(entries)) if i not in batch]
        records: list[Record] = []
        outcomes: dict[int, WriteOutcome] = {}
        try:
            records = self._stamp_many([entries[i] for i in together])
        except RingkvError as refused:  # nothing was sent
            outcomes.update((i, refused) for i in together)
        groups, unplanned = group_by_plan([r.key for r in records], self._plans_for(level))
        outcomes.update((together[i], error) for i, error in unplanned.items())
        requests = [
            self._write_request(
                [records[i] for i in members],
                level,
                shared_planner(self._plan_for(level), first_plan),
            )
            for first_plan, members in groups
        ]

        async def one_by_one(key: bytes, value: bytes, ttl: int) -> WriteOutcome:
            try:
                return await self.write(
                    key,
                    value,
                    level=level,
                    timeout_s=max(deadline - loop.time(), 0.0),
                    ttl_ms=ttl,
                    clock_wait_s=clock_wait_s,
                )
            except RingkvError as failed:
                return failed

        driven, singles = await asyncio.gather(
            self._run_many(requests, deadline),
            asyncio.gather(*(one_by_one(*entries[i]) for i in alone)),
        )
        outcomes.update(zip(alone, singles, strict=True))
        for (_, members), group_outcome in zip(groups, driven, strict=True):
            written = (
                [group_outcome] * len(members)
                if isinstance(group_outcome, RingkvError)
                else group_outcome
            )
            outcomes.update((together[i], o) for i, o in zip(members, written, strict=True))
        again = [i for i, outcome in outcomes.items() if isinstance(outcome, PlanDiverged)]
        outcomes.update(
            zip(again, await asyncio.gather(*(one_by_one(*entries[i]) for i in again)), strict=True)
        )
        return [outcomes[i] for i in range(len(entries))]

    def _stamp(self, key: bytes, value: bytes, ttl_ms: int, tombstone: bool) -> Record:
        (record,) = self._stamp_many([(key, value, ttl_ms)], tombstone=tombstone)
        return record

    def _stamp_many(
        self, entries: Sequence[tuple[bytes, bytes, int]], *, tombstone: bool = False
    ) -> list[Record]:
        """New versions of keys (key, value, ttl_ms), each past this node's copy."""
        # Asked again at the moment of stamping: a lock wait or a read may have
        # passed since the write began, and the verdict with it.
        self._clock_guard.require()
        held = self._store.read_each([key for key, _, _ in entries])
        records = []
        for (key, value, ttl_ms), local in zip(entries, held, strict=True):
            if local is not None:
                self._clock.observe(local.version.timestamp)
            # The local copy (or a Paxos round) may have moved the clock up.
            if not self._clock_mark.allows_next():
                raise StorageFull("cannot save the clock mark: the disk is full")
            stamped = stamp(
                self._clock,
                self._now_ms(),
                key,
                value,
                tombstone=tombstone,
                ttl_ms=ttl_ms,
                local=local,
            )
            records.append(stamped)
        return records

    async def _replicate(self, record: Record, level: Consistency, deadline: float) -> Written:
        """Send a stamped record to the key's targets; return once the level is met.

        During a membership change the key's replicas in the next ring are
        written too, and the level must be met among them as well as among
        the current ones (joint quorums, ``ringkv.core.quorum.ReplicaSets``):
        once the change settles, a quorum of the new replicas holds every
        acknowledged write.
        """
        planner = key_planner(self._planner(record.key, level))
        request = self._write_request([record], level, planner)
        (outcome,) = await self._run(request, deadline)
        if isinstance(outcome, RingkvError):
            raise outcome
        return outcome

    def _write_request(
        self, records: Sequence[Record], level: Consistency, planner: WritePlanner
    ) -> WriteRequest:
        return WriteRequest(
            records,
            level,
            planner,
            node_id=self._view.node_id,
            # A LINEARIZABLE write is stamped past the newest version a quorum
            # held when it began (ABD), so a newer one it meets is a concurrent
            # write, ordered after it. Stamped again, its value would take
            # effect a second time, after writes that overwrote its first
            # version on some replicas (matrix seed 91).
            restamper=None
            if level is Consistency.LINEARIZABLE
            else Restamper(
                self._clock,
                self._now_ms,
                lambda: self._clock_guard.check().may_stamp and self._clock_mark.allows_next(),
            ),
        )

    # -- shared ----------------------------------------------------------------

    async def _require_lease(self, key: bytes, level: Consistency, wait_s: float) -> None:
        if not self._lease.held:
            # Too few replicas reachable says more, and needs no wait.
            self._planner(key, level)()
            await self._lease.require(wait_s)

    def _planner(self, key: bytes, level: Consistency, *, local_first: bool = False) -> Planner:
        """Plans a request for ``key`` on the member table current when it is called."""
        plan_for = self._plan_for(level, local_first=local_first)
        return lambda: plan_for(key)

    def _plan_for(
        self, level: Consistency, *, local_first: bool = False
    ) -> Callable[[bytes], Plan]:
        """Plans a request for a key on the member table current when it is called."""
        first = self._view.node_id if local_first else None

        def plan_now(key: bytes) -> Plan:
            view = self._view
            return self._plan(level, view.replica_sets(key), view.clockwise(key), first)

        return plan_now

    def _plans_for(self, level: Consistency) -> Callable[[bytes], Plan]:
        """``_plan_for``, planning once per replica order on the table
        current now: many keys of a batch share one."""
        view = self._view
        plans: dict[tuple[ReplicaSets, tuple[str, ...]], Plan] = {}

        def plan_once(key: bytes) -> Plan:
            sets, clockwise = view.replica_sets(key), view.clockwise(key)
            known = plans.get((sets, clockwise))
            if known is None:
                known = plans[sets, clockwise] = self._plan(level, sets, clockwise, None)
            return known

        return plan_once

    def _plan(
        self, level: Consistency, sets: ReplicaSets, clockwise: tuple[str, ...], first: str | None
    ) -> Plan:
        view = self._view
        return plan(level, sets, clockwise, view.is_live, first=first, fence=view.membership.fence)

    async def _run(self, request: Request[T], deadline: float) -> T:
        """Drive one request with real calls until it finishes or the deadline passes."""
        (outcome,) = await self._run_many([request], deadline)
        if isinstance(outcome, RingkvError):
            raise outcome
        return outcome

    async def _run_many(
        self, requests: Sequence[Request[T]], deadline: float
    ) -> list[T | RingkvError]:
        """Drive requests with real calls until each finishes or the deadline
        passes; each one's outcome or error.

        The calls they ask for join the calls of every other running request
        in one batch per target (``ReplicaCalls``: one commit for this node's
        replica, one call per peer, once per turn of the event loop). Calls
        still running at the deadline (or orphaned
        by a cancelled request) go on in the background and are still fed to
        their request: a late failure may leave a hint, a late stale answer a
        repair. close() waits for them.
        """
        loop = asyncio.get_running_loop()
        all_finished = loop.create_future()
        started_errors: dict[int, RingkvError] = {}
        open_requests = set(range(len(requests)))

        def act(readies: Iterable[tuple[int, Ready]]) -> None:
            for index, ready in readies:
                for call in ready.calls:
                    self._calls.submit(call, functools.partial(settle, index, call.id))
                for hint in ready.hints:
                    self._hint_for(hint.record, hint.node_id)
                if ready.repairs:
                    self._counters.read_repairs += len(ready.repairs)
                for repair in ready.repairs:
                    self._spawn(self._repair(repair))
                if requests[index].finished:
                    open_requests.discard(index)
            if not open_requests and not all_finished.done():
                all_finished.set_result(None)

        def settle(index: int, call_id: int, answer: object) -> None:
            request = requests[index]
            if isinstance(answer, BaseException):
                act([(index, request.failed(call_id, answer))])
            else:
                act([(index, request.answered(call_id, answer))])

        def start(index: int, request: Request[T]) -> Ready:
            try:
                return request.start()
            except RingkvError as refused:  # nothing was sent for it
                started_errors[index] = refused
                open_requests.discard(index)
                return Ready()

        act([(i, start(i, request)) for i, request in enumerate(requests)])
        done, _ = await asyncio.wait({all_finished}, timeout=deadline - loop.time())
        if not done:
            act((i, requests[i].expired()) for i in sorted(open_requests))
        outcomes: list[T | RingkvError] = []
        for index, request in enumerate(requests):
            if index in started_errors:
                outcomes.append(started_errors[index])
                continue
            try:
                outcomes.append(request.result())
            except RingkvError as failed:
                outcomes.append(failed)
        return outcomes

    async def _repair(self, repair: Repair) -> None:
        # A repair sends a version some replica already holds: it needs no fence.
        if repair.node_id == self._view.node_id:
            await self._store.apply(repair.record)
        else:
            await self._view.peers[repair.node_id].write(repair.record)

    def _hint_for(self, record: Record, node: str) -> None:
        """Hold a hint here for a replica the write missed, as Cassandra does.

        Without it the replica would lack the write until a read or
        anti-entropy repaired it. Hints do not count toward the level.
        """
        if not self._closed:
            self._spawn(self._hold_hint(record, node))

    async def _hold_hint(self, record: Record, node: str) -> None:
        await self._store.apply(record, hint_for=node)

    def _spawn(
        self,
        work: Coroutine[Any, Any, T],
        *,
        then: Callable[[asyncio.Task[T]], object] | None = None,
    ) -> None:
        """Run ``work`` in the background (close() waits for it), then ``then``."""
        task = asyncio.get_running_loop().create_task(work)
        self._track(task)
        if then is not None:
            task.add_done_callback(then)

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
        self._calls.flush()  # calls queued for this turn become tasks to wait for
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _CLOSE_TIMEOUT_S
        # A finished call may start another (a hint, a repair, the next round).
        while self._background and (left := deadline - loop.time()) > 0:
            await asyncio.wait(set(self._background), timeout=left)
        for task in list(self._background):
            task.cancel()


def _deadline(timeout_s: float) -> float:
    """The event loop time by which a request must be done."""
    return asyncio.get_running_loop().time() + timeout_s


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
