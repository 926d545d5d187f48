"""The real ``MembershipManager`` of several nodes, on virtual time and a simulated network.

Each node is the production membership stack: ``MembershipManager`` with its
election, leader duties, lease, seeds and saved state, a ``ClusterView``
with real ``Peer`` objects and generated stubs. Only the edges are
simulated: channels (``tests/sim/rpc_network.py``), the clock
(``tests/sim/virtual_time.py``), the data dir (a ``MembershipFile`` kept in
memory, so a restarted node resumes what it saved), the data movement of a
membership change (``SimRangeMover``: a node reports a table synced a random
while after adopting it) and the wall clocks' skew with the clock prober's
measurement of it.

After every turn of the event loop, and at every table a node adopts, the
simulation checks:

* at most one node leads (``MembershipManager.leads``: a leader's lease
  running on its own clock) at any instant, and one node per term;
* no two different tables share an ``(epoch, term)``, over the whole run;
* no node's ``(epoch, term)`` goes back, across restarts;
* a node makes a new table only while it leads, stamped with its own term,
  and never while its term is older than the newest a leader was elected in;
* nothing a node serves raises anything but a domain error, and no
  membership task fails;

and, once the network heals and every crashed node is back, that within
``SETTLE_S`` every node holds one settled table naming it, one node leads,
and every node follows it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import multiprocessing
import os
import random
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Sized
from dataclasses import dataclass, field
from typing import Any, cast

import grpc
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from ringkv.api import kv_pb2, kv_pb2_grpc
from ringkv.core.clock_offset import OffsetSample
from ringkv.core.election import ElectionConfig
from ringkv.core.errors import PreconditionFailed
from ringkv.core.hlc import HybridLogicalClock
from ringkv.core.membership import Membership, RingMaker
from ringkv.server.cluster.cluster_view import ClusterView
from ringkv.server.cluster.leader_lease import LeaderLease
from ringkv.server.cluster.membership import MembershipManager
from ringkv.server.cluster.membership_file import MembershipFile, SavedState
from ringkv.server.counters import Counters
from ringkv.server.data.anti_entropy import RepairSchedule
from ringkv.server.services.cluster_service import ClusterService
from ringkv.server.transport.peers import ChannelOpener, Peer
from ringkv.server.transport.rpc import Context, Method
from ringkv.storage.memory import MemoryEngine
from tests.sim.rpc_network import LinkFaults, Route, RpcNetwork
from tests.sim.virtual_time import VirtualTimeLoop, run_in_virtual_time

CONFIG = ElectionConfig(
    heartbeat_interval_ms=1_000, election_timeout_ms=3_000, answer_timeout_ms=500, jitter_ms=200
)
"""A node's default timings (``ringkv node``'s flags)."""
ET_MS = CONFIG.election_timeout_ms
PEER_TIMEOUT_S = 2.0
REPLICATION_FACTOR = 2
VNODES = 4
WALL_EPOCH_MS = 1_700_000_000_000
CHAOS_S = 30.0
SETTLE_S = 2 * (7 * ET_MS / 1000) + 3 * CONFIG.heartbeat_interval_ms / 1000 + 2 * PEER_TIMEOUT_S
"""Fault-free time after which every node must agree. Up to two leaders in
turn may settle a change after the heal (a node that restarts leaving takes
over, settles its own departure and goes; then a joiner of a higher id takes
over): each needs up to four election timeouts to be elected (two, and two
more for a candidate that learns of a higher id late) and three more before
it settles a change it cannot prove every lease has moved past. Then a few
heartbeats to spread the table, and calls that time out on the way."""
MAX_CHANGES_AFTER_HEAL = 6
"""The most changes the heal can leave to make (joiners, departures), each
within ``SETTLE_S`` of the one before: more is churn, not convergence."""
CLUSTER = "/kv.Cluster/"
NO_CONTEXT = cast(Context, None)
"""The Cluster handlers simulated here never touch their call's context."""
CLOCK_UNCERTAINTY_MS = 10.0
"""How far off the clock prober's measurement of a peer's clock may be."""


class MemoryFile(MembershipFile):
    """``cluster.json`` kept in memory: it outlives the node's incarnations."""

    def __init__(self) -> None:
        super().__init__(None)
        self.state: SavedState | None = None

    def load(self) -> SavedState | None:
        return self.state

    def save(self, state: SavedState) -> None:
        self.state = state


@dataclass
class SimNode:
    node_id: str
    address: str
    skew_ms: int
    """This node's wall clock minus true time."""
    file: MemoryFile = field(default_factory=MemoryFile)
    manager: MembershipManager | None = None
    view: ClusterView | None = None
    lease: LeaderLease | None = None
    seeds: tuple[str, ...] = ()
    heartbeat_sent_ms: int = 0
    """When (true time) the newest heartbeat this node accepted was sent."""
    decommissioned: bool = False


class SimRangeMover:
    """A node's data movement: it holds each table's ranges a random while after adopting it."""

    def __init__(self, sim: ClusterSim) -> None:
        self._sim = sim
        self._synced = 0

    @property
    def synced_epoch(self) -> int:
        return self._synced

    def adopted(self, membership: Membership) -> None:
        self._sim.loop.call_later(self._sim.rng.uniform(0.0, 1.5), self._sync, membership.epoch)

    def _sync(self, epoch: int) -> None:
        self._synced = max(self._synced, epoch)

    async def hand_off(self) -> Sized:
        await asyncio.sleep(self._sim.rng.uniform(0.1, 2.0))
        return ()


class RecordingView(ClusterView):
    """A node's view that shows the simulation every table before the node adopts it."""

    def __init__(self, sim: ClusterSim, node: SimNode, *args: Any) -> None:
        self._sim = sim
        self._node = node
        super().__init__(*args)

    def adopt(self, membership: Membership) -> None:
        if membership.epoch:
            self._sim.adopting(self._node, membership)
        super().adopt(membership)


class RenewalLog(LeaderLease):
    """A node's lease, counting the heartbeats that renewed it."""

    renewals = 0

    def renew(self) -> None:
        self.renewals += 1
        super().renew()


class _ErrorLog(logging.Handler):
    """Collects what the nodes log as errors (a failed step or task is a bug)."""

    def __init__(self, sink: list[str]) -> None:
        super().__init__(logging.ERROR)
        self._sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        self._sink.append(f"logged: {record.getMessage()} {record.exc_info!r}")


class ClusterSim:
    """One seeded run: the nodes, the network, and what was checked."""

    def __init__(self, seed: int, loop: VirtualTimeLoop) -> None:
        self.seed = seed
        self.loop = loop
        self.rng = random.Random(seed)
        self.network = RpcNetwork(self.rng)
        self.nodes: dict[str, SimNode] = {}
        self.violations: list[str] = []
        self.events: list[str] = []
        self._tables: dict[tuple[int, int], Membership] = {}
        self._highest: dict[str, tuple[int, int]] = {}
        self._led_by: dict[int, str] = {}
        self.newest_led_term = 0
        self.dead_after_ms = self.rng.choice([6_000, 12_000, 60_000])
        self._tasks: set[asyncio.Task[Any]] = set()
        self._joiners = 0
        self.elections = 0
        self.tables_made = 0
        self.made: list[tuple[str, Membership]] = []
        """Every table a leader made (not the bootstrap), with its maker."""
        loop.after_step = self.check
        loop.set_exception_handler(self._loop_error)

    # -- time and bookkeeping ---------------------------------------------------

    def now_ms(self) -> int:
        return int(self.loop.time() * 1000)

    def note(self, what: str) -> None:
        self.events.append(f"{self.loop.time() - 1000:8.3f} {what}")

    def fail(self, what: str) -> None:
        self.note(f"VIOLATION {what}")
        self.violations.append(what)

    def spawn(self, work: Coroutine[Any, Any, Any]) -> None:
        task = self.loop.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(self._failed_if_raised)

    def _failed_if_raised(self, task: asyncio.Task[Any]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self.fail(f"{task.get_coro()!r} raised {task.exception()!r}")

    def _loop_error(self, _: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """An error asyncio could only log (a callback's, an unretrieved task's)."""
        self.fail(f"event loop: {context.get('message')} {context.get('exception')!r}")

    def call_in_background(self, call: Awaitable[Any]) -> None:
        """Make an operator's call; under faults it may fail: only its effects count."""

        async def ignoring_errors() -> None:
            with contextlib.suppress(grpc.aio.AioRpcError):
                await call

        self.spawn(ignoring_errors())

    @property
    def running(self) -> list[SimNode]:
        return [node for node in self.nodes.values() if node.manager is not None]

    # -- nodes --------------------------------------------------------------------

    def add_node(self, node_id: str) -> SimNode:
        node = SimNode(node_id, f"{node_id}.sim:7000", self.rng.randint(-3_000, 3_000))
        self.nodes[node_id] = node
        return node

    def start(self, node: SimNode, seeds: dict[str, str], *, joins_existing: bool) -> None:
        self.note(f"start {node.node_id} seeds={sorted(seeds)}")
        rings = RingMaker(VNODES)
        provisional = Membership(
            0, Membership.bootstrap({node.node_id: node.address, **seeds}).members
        )
        clock = HybridLogicalClock(node.node_id, now_ms=self.now_ms)
        opener = cast(ChannelOpener, self.network.opener(node.node_id))

        def open_peer(peer: str, address: str) -> Peer:
            return Peer(peer, address, clock, PEER_TIMEOUT_S, open_channel=opener)

        lease = RenewalLog(ET_MS, self.now_ms)
        view = RecordingView(
            self, node, node.node_id, provisional, REPLICATION_FACTOR, rings, open_peer
        )
        manager = MembershipManager(
            view,
            address=node.address,
            seeds=seeds,
            saved=node.file,
            election=CONFIG,
            remove_dead_after_ms=self.dead_after_ms,
            rings=rings,
            on_removed=lambda: self.spawn(self.stop(node, decommissioned=True)),
            lease=lease,
            joins_existing=joins_existing,
            now_ms=self.now_ms,
            wall_ms=lambda: self.now_ms() + WALL_EPOCH_MS + node.skew_ms,
            clock_of=lambda peer: self.measured_offset(node, peer),
            rng=random.Random(self.rng.random()),
            open_channel=opener,
        )
        manager.rebalancer = SimRangeMover(self)
        try:
            manager.start()
        except PreconditionFailed:
            # Crashed while handing its records off: it refuses to start again.
            self.note(f"{node.node_id} refuses to start: it was decommissioned")
            node.decommissioned = True
            return
        node.manager, node.view, node.lease, node.seeds = manager, view, lease, tuple(seeds)
        self.network.serve(node.node_id, node.address, self.routes(node, manager, view))

    async def stop(self, node: SimNode, *, decommissioned: bool = False) -> None:
        manager, view = node.manager, node.view
        if manager is None or view is None:
            return
        self.note(f"{'decommissioned' if decommissioned else 'crash'} {node.node_id}")
        node.manager = node.view = node.lease = None
        node.decommissioned |= decommissioned
        self.network.stop_serving(node.node_id, node.address)
        await manager.close()
        await view.close()

    def measured_offset(self, node: SimNode, peer_id: str) -> OffsetSample | None:
        """The clock prober's latest sample of a peer's clock: the true offset,
        within a round trip's uncertainty."""
        peer = self.nodes.get(peer_id)
        if peer is None:
            return None
        error = self.rng.uniform(-CLOCK_UNCERTAINTY_MS, CLOCK_UNCERTAINTY_MS)
        offset = peer.skew_ms - node.skew_ms + error
        return OffsetSample(offset, CLOCK_UNCERTAINTY_MS, self.loop.time())

    def routes(
        self, node: SimNode, manager: MembershipManager, view: ClusterView
    ) -> dict[str, Route]:
        """A node's kv.Cluster handlers: the real ``ClusterService``'s."""
        service = ClusterService(
            view,
            MemoryEngine(),
            Counters(),
            manager,
            cast(RepairSchedule, None),  # Repair is not simulated
        )
        methods = service.methods()
        lease = cast(RenewalLog, node.lease)

        def served(name: str) -> Route:
            method = methods[name]
            assert isinstance(method, Method)
            return Route(method.request_type, lambda request: method.handler(request, NO_CONTEXT))

        async def heartbeat(request: kv_pb2.HeartbeatRequest) -> kv_pb2.HeartbeatResponse:
            renewals = lease.renewals
            response = await service.heartbeat(request, NO_CONTEXT)
            sender = self.nodes.get(request.node_id)
            if lease.renewals > renewals and sender is not None:
                sent_ms = request.sent_wall_ms - WALL_EPOCH_MS - sender.skew_ms
                node.heartbeat_sent_ms = max(node.heartbeat_sent_ms, sent_ms)
            return response

        routes = {
            CLUSTER + name: served(name)
            for name in ("RequestVote", "GetClusterState", "Join", "RemoveNode")
        }
        routes[CLUSTER + "Heartbeat"] = Route(kv_pb2.HeartbeatRequest, heartbeat)
        return routes

    def operator(self, node: SimNode) -> kv_pb2_grpc.ClusterAsyncStub:
        """The Cluster API of a node, as ``ringkv cluster`` reaches it."""
        channel = cast(grpc.aio.Channel, self.network.opener("operator")(node.address))
        return kv_pb2_grpc.ClusterStub(channel)

    # -- invariants ---------------------------------------------------------------

    def check(self) -> None:
        """After every turn of the loop: one leader at most, and one per term."""
        leading = [node for node in self.running if cast(MembershipManager, node.manager).leads]
        for node in leading:
            term = cast(ClusterView, node.view).term
            if term > self.newest_led_term:
                self.newest_led_term = term
                self.elections += 1
                self.note(f"{node.node_id} leads term {term}")
            first = self._led_by.setdefault(term, node.node_id)
            if first != node.node_id:
                self.fail(f"term {term} led by {first} and {node.node_id}")
        for node in self.running:
            self._check_lease(node)
        self._check_coordinators()
        if len(leading) > 1:
            both = ", ".join(
                f"{n.node_id} (term {cast(ClusterView, n.view).term})" for n in leading
            )
            self.fail(f"{len(leading)} nodes lead at once: {both}")
        if self.network.bugs:
            self.violations.extend(self.network.bugs)
            self.network.bugs.clear()

    def _check_lease(self, node: SimNode) -> None:
        """A follower's lease ends within two election timeouts of when the
        heartbeat that renewed it was sent, as leaders count on: one for the
        heartbeat to arrive, one for the lease."""
        view, lease = cast(ClusterView, node.view), cast(LeaderLease, node.lease)
        exempt = view.epoch == 0 or view.membership.node_ids == (node.node_id,)
        if exempt or not lease.held or cast(MembershipManager, node.manager).leads:
            return
        age_ms = self.now_ms() - node.heartbeat_sent_ms
        if age_ms > 2 * ET_MS + CLOCK_UNCERTAINTY_MS:
            self.fail(f"{node.node_id} holds a lease {age_ms} ms after its heartbeat was sent")

    def _check_coordinators(self) -> None:
        """Any two nodes that may coordinate requests (they hold a lease) plan
        on tables that share a ring, so their quorums meet: the leader leaves a
        change only once every member has it or every lease granted before it
        has run out."""
        tables = {
            view.membership.fence: view.membership
            for node in self.running
            if (view := cast(ClusterView, node.view)).epoch > 0
            and len(view.membership.members) > 1  # a lone node has nothing to miss
            and cast(LeaderLease, node.lease).held
        }
        if len(tables) < 2:
            return
        held = sorted(tables.values(), key=lambda t: t.fence)
        for i, older in enumerate(held):
            for newer in held[i + 1 :]:
                if not rings_of(older) & rings_of(newer):
                    holders = [
                        n.node_id
                        for n in self.running
                        if cast(ClusterView, n.view).membership in (older, newer)
                        and cast(LeaderLease, n.lease).held
                    ]
                    self.fail(
                        f"leases on {show(older)} and {show(newer)} at once, "
                        f"which share no ring (held by {holders})"
                    )

    def adopting(self, node: SimNode, table: Membership) -> None:
        """Before ``node`` adopts ``table``: tables are unique, never go back,
        and only a current leader makes one."""
        fence = table.fence
        seen = self._tables.get(fence)
        if seen is None:
            self._tables[fence] = table
            self._made(node, table)
        elif seen != table:
            self.fail(f"two tables share {fence}: {show(seen)} and {show(table)}")
        highest = self._highest.get(node.node_id, (0, 0))
        if fence < highest:
            self.fail(f"{node.node_id} went back from {highest} to {fence}")
        self._highest[node.node_id] = max(highest, fence)

    def _made(self, node: SimNode, table: Membership) -> None:
        self.note(f"{node.node_id} makes {table.fence}: {show(table)}")
        manager = node.manager
        if table.fence == (1, 0) or manager is None:
            return  # every node of a new cluster bootstraps the same epoch 1
        self.tables_made += 1
        self.made.append((node.node_id, table))
        term = cast(ClusterView, node.view).term
        if not manager.leads:
            self.fail(f"{node.node_id} made {table.fence} without leading")
        if table.term != term:
            self.fail(f"{node.node_id} stamped {table.fence} while on term {term}")
        # Leaders elected in this turn of the loop, not yet seen by check().
        leading_now = [
            cast(ClusterView, n.view).term
            for n in self.running
            if n is not node and cast(MembershipManager, n.manager).leads
        ]
        newest = max([self.newest_led_term, *leading_now])
        if term < newest:
            self.fail(
                f"{node.node_id} made {table.fence} on term {term}, "
                f"after a leader was elected in term {newest}"
            )

    def disagreement(self) -> str | None:
        """Why the running nodes do not (yet) agree on one table and one leader."""
        nodes = self.running
        views = {n.node_id: cast(ClusterView, n.view) for n in nodes}
        tables = {view.membership for view in views.values()}
        if len(tables) != 1:
            return "tables differ: " + "; ".join(
                f"{n}={v.membership.fence}" for n, v in sorted(views.items())
            )
        (table,) = tables
        if table.changing:
            return f"a change is still in flight: {show(table)}"
        if set(table.node_ids) != set(views):
            return f"the table {show(table)} does not name exactly the running nodes"
        leading = [n.node_id for n in nodes if cast(MembershipManager, n.manager).leads]
        if len(leading) != 1:
            return f"{len(leading)} nodes lead: {leading}"
        followed = {n: v.leader_id for n, v in views.items() if v.leader_id != leading[0]}
        if followed:
            return f"{leading[0]} leads, but some follow another: {followed}"
        return None

    # -- faults -------------------------------------------------------------------

    def isolate(self, groups: list[list[str]], bridges: tuple[str, ...] = ()) -> None:
        """Cut every link between groups; a bridge stays connected to everyone."""
        self.network.cut = {
            (a, b)
            for one in groups
            for other in groups
            if one is not other
            for a in one
            for b in other
            if a not in bridges and b not in bridges
        }

    def node_ids(self) -> list[str]:
        return sorted(self.nodes)

    async def chaos(self, seconds: float) -> None:
        """Random faults and membership changes for ``seconds``."""
        rng = self.rng
        end = self.loop.time() + seconds
        while self.loop.time() < end:
            action = rng.choices(
                [
                    self._partition,
                    self._isolate_leader,
                    self._asymmetric,
                    self._bridge,
                    self._heal,
                    self._links,
                    self._hold,
                    self._crash,
                    self._restart,
                    self._join,
                    self._remove,
                ],
                weights=[3, 3, 2, 2, 3, 2, 2, 2, 2, 1, 1],
            )[0]
            action()
            await asyncio.sleep(rng.uniform(0.2, 4.0))

    def _partition(self) -> None:
        ids = self.node_ids()
        self.rng.shuffle(ids)
        cut = self.rng.randint(1, len(ids) - 1)
        self.note(f"partition {sorted(ids[:cut])} | {sorted(ids[cut:])}")
        self.isolate([ids[:cut], ids[cut:]])

    def _isolate_leader(self) -> None:
        leading = [n.node_id for n in self.running if cast(MembershipManager, n.manager).leads]
        if not leading:
            return
        others = [n for n in self.node_ids() if n != leading[0]]
        self.note(f"isolate the leader {leading[0]}")
        self.isolate([[leading[0]], others])

    def _asymmetric(self) -> None:
        ids = self.node_ids()
        links = [(a, b) for a in ids for b in ids if a != b]
        self.network.cut = set(self.rng.sample(links, self.rng.randint(1, len(links) // 2)))
        self.note(f"cut one way: {sorted(self.network.cut)}")

    def _bridge(self) -> None:
        ids = self.node_ids()
        if len(ids) < 3:
            return
        self.rng.shuffle(ids)
        bridge, rest = ids[0], ids[1:]
        cut = self.rng.randint(1, len(rest) - 1)
        self.note(f"bridge {bridge} between {sorted(rest[:cut])} | {sorted(rest[cut:])}")
        self.isolate([[bridge, *rest[:cut]], rest[cut:]], bridges=(bridge,))

    def _heal(self) -> None:
        self.note("heal")
        self.network.cut = set()

    def _links(self) -> None:
        rng = self.rng
        self.network.faults = rng.choice(
            [
                LinkFaults(),
                LinkFaults(drop=rng.uniform(0.05, 0.4)),
                LinkFaults(min_delay_ms=1, max_delay_ms=rng.uniform(10, 800)),
                LinkFaults(
                    long_delay_chance=rng.uniform(0.02, 0.3), long_delay_ms=(ET_MS, 2.5 * ET_MS)
                ),
            ]
        )
        self.note(f"links: {self.network.faults}")

    def _hold(self) -> None:
        """Hold some links' messages past the election timeout (none, at times)."""
        ids = self.node_ids()
        links = [(a, b) for a in ids for b in ids if a != b]
        network = self.network
        network.held = set(self.rng.sample(links, self.rng.randint(0, len(links) // 2)))
        network.held_ms = (ET_MS, 2.5 * ET_MS)
        self.note(f"held past the election timeout: {sorted(network.held)}")

    def _crash(self) -> None:
        running = self.running
        if len(running) > 1:
            self.spawn(self.stop(self.rng.choice(running)))

    def _restart(self) -> None:
        down = [n for n in self.nodes.values() if n.manager is None and not n.decommissioned]
        if down:
            node = self.rng.choice(down)
            self._rejoin(node)

    def _rejoin(self, node: SimNode) -> None:
        """Start a node again, or a joiner for the first time, with members as seeds.

        Not a node that was never admitted while no member is known yet: with
        no seeds it would found a cluster of its own, as it is told to.
        """
        seeds = self._seeds_for(node)
        if seeds or node.file.state is not None:
            self.start(node, seeds, joins_existing=True)

    def _seeds_for(self, node: SimNode) -> dict[str, str]:
        """One or two members to start from, as an operator would name them."""
        others = [
            n
            for n in self.nodes.values()
            if n is not node and not n.decommissioned and n.node_id in self._highest
        ]
        chosen = self.rng.sample(others, min(len(others), self.rng.randint(1, 2)))
        return {n.node_id: n.address for n in chosen}

    def _join(self) -> None:
        if len(self.nodes) >= 7:
            return
        self._joiners += 1
        self._rejoin(self.add_node(f"x{self._joiners}"))

    def _remove(self) -> None:
        members = [n for n in self.nodes.values() if not n.decommissioned]
        running = self.running
        if len(members) <= 3 or not running:
            return
        leaver = self.rng.choice(members)
        via = self.rng.choice(running)
        self.note(f"remove {leaver.node_id} via {via.node_id}")
        self.call_in_background(
            self.operator(via).RemoveNode(
                kv_pb2.RemoveNodeRequest(node_id=leaver.node_id), timeout=5.0
            )
        )

    async def heal_and_settle(self) -> None:
        """Heal everything, bring back every crashed node, and wait for agreement."""
        self.note("final heal")
        self.network.cut = set()
        self.network.held = set()
        self.network.faults = LinkFaults()
        for node in list(self.nodes.values()):
            if node.view is not None and node.view.epoch == 0:
                # Still looking for its cluster, perhaps through seeds that
                # have all left since: started again with others, as an
                # operator would.
                await self.stop(node)
            if node.manager is None and not node.decommissioned:
                self._rejoin(node)
        # Joiners waiting at the heal are admitted one change at a time, and
        # each of a higher id takes over and waits out the lease bound again:
        # the bound is per change, from the last table made.
        healed = self.loop.time()
        last_change, made = healed, len(self._tables)
        while (problem := self.disagreement()) is not None:
            if len(self._tables) > made:
                last_change, made = self.loop.time(), len(self._tables)
            stalled = self.loop.time() > last_change + SETTLE_S
            if stalled or self.loop.time() > healed + MAX_CHANGES_AFTER_HEAL * SETTLE_S:
                self.fail(
                    f"no agreement {SETTLE_S:.0f} s after the last change "
                    f"({self.loop.time() - healed:.0f} s after the heal): {problem}"
                )
                return
            await self._restart_the_stranded()
            await asyncio.sleep(0.1)
        self.note("agreed")

    async def _restart_the_stranded(self) -> None:
        """Start again, with other seeds, a node that is not in its own table
        (still looking for its cluster, or removed and joining again) whose
        every seed has left since."""
        for node in self.running:
            view = cast(ClusterView, node.view)
            outside = view.epoch == 0 or node.node_id not in view.membership.addresses
            if outside and all(self.nodes[seed].decommissioned for seed in node.seeds):
                await self.stop(node)
                self._rejoin(node)

    async def close(self) -> None:
        for node in list(self.nodes.values()):
            await self.stop(node)


def rings_of(table: Membership) -> set[frozenset[str]]:
    """The node sets of the rings requests planned on ``table`` must meet their level in."""
    return {frozenset(table.current_nodes()), frozenset(table.next_nodes())}


def show(table: Membership) -> str:
    members = ",".join(
        m.node_id + ("" if m.status == "normal" else f"({m.status})") for m in table.members
    )
    return f"e{table.epoch}t{table.term}[{members}]"


@dataclass(frozen=True, slots=True)
class Outcome:
    seed: int
    violations: tuple[str, ...]
    events: tuple[str, ...]
    elections: int
    tables_made: int
    calls: int


def run_schedule(
    seed: int, scenario: Callable[[ClusterSim], Coroutine[Any, Any, None]] | None = None
) -> Outcome:
    """Run one seeded schedule (or a scripted ``scenario``) with its checks."""
    errors: list[str] = []
    handler = _ErrorLog(errors)
    logger = logging.getLogger("ringkv")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.ERROR)

    sims: list[ClusterSim] = []

    async def main(loop: VirtualTimeLoop) -> None:
        sim = ClusterSim(seed, loop)
        sims.append(sim)
        try:
            await (scenario or random_schedule)(sim)
        except Exception as error:  # reported with the seed and the events
            sim.fail(f"the schedule raised {error!r}")
        finally:
            await sim.close()

    try:
        run_in_virtual_time(main)
    except RuntimeError as error:  # stuck: no task could make progress
        sims[0].fail(str(error))
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    (sim,) = sims
    return Outcome(
        seed,
        tuple(sim.violations + errors),
        tuple(sim.events),
        sim.elections,
        sim.tables_made,
        sim.network.calls,
    )


async def random_schedule(sim: ClusterSim) -> None:
    """3-5 nodes started as the seed's command lines start them, then chaos, then the heal."""
    count = sim.rng.randint(3, 5)
    nodes = [sim.add_node(f"n{i}") for i in range(1, count + 1)]
    for node in nodes:
        seeds = {n.node_id: n.address for n in nodes if n is not node}
        sim.start(node, seeds, joins_existing=False)
        await asyncio.sleep(sim.rng.uniform(0.0, 0.5))
    await asyncio.sleep(sim.rng.uniform(0.0, 6.0))
    await sim.chaos(CHAOS_S)
    await sim.heal_and_settle()


def main() -> None:
    """Run many seeded schedules on every core, with a progress bar and a summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=1_000, help="how many schedules")
    parser.add_argument("--first", type=int, default=10_000, help="the first seed")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    console = Console()
    failed: list[Outcome] = []
    elections = tables = calls = 0
    started = time.monotonic()
    seeds = range(args.first, args.first + args.seeds)
    with multiprocessing.Pool(args.jobs) as pool, Progress(console=console) as progress:
        bar = progress.add_task("schedules", total=len(seeds))
        for outcome in pool.imap_unordered(run_schedule, seeds, chunksize=8):
            progress.advance(bar)
            elections += outcome.elections
            tables += outcome.tables_made
            calls += outcome.calls
            if outcome.violations:
                failed.append(outcome)
                progress.console.print(f"seed {outcome.seed}: {outcome.violations[0]}")
    summary = Table(title=f"cluster sim, seeds {seeds.start}..{seeds.stop - 1}")
    for column in ("schedules", "failed", "leaders elected", "tables made", "calls", "seconds"):
        summary.add_column(column, justify="right")
    summary.add_row(
        str(len(seeds)),
        str(len(failed)),
        str(elections),
        str(tables),
        str(calls),
        f"{time.monotonic() - started:.0f}",
    )
    console.print(summary)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
