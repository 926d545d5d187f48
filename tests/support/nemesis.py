"""Seeded fault schedules, and the nemesis that applies one to a running cluster.

A schedule is a pure function of its seed: ``make_schedule(seed, duration)``
lists faults, each with a start time, how long it is held and a random
``pick`` that chooses its targets when it starts (the leader or a key's
owner is only known then). Faults overlap: a kill may start while a
partition holds, so they compose as they would in production.

The ``Nemesis`` runs a schedule in its own thread against a ``ChaosCluster``
(``tests.support.chaos``), keeping to two limits so that a majority of
replicas can stay up: at most two nodes down (killed or paused) at once, and
one network partition at a time. A fault that would break a limit when its
turn comes is skipped and logged as such. Every fault applied is recorded as
a ``FaultWindow`` for the availability table, and ``heal_all`` undoes every
fault still in force.
"""

from __future__ import annotations

import heapq
import math
import random
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ringkv.core.history import FaultWindow

if TYPE_CHECKING:
    from tests.support.chaos import ChaosCluster

PROCESS_FAULTS = ("kill", "pause", "kill-leader", "kill-two", "clock-skew", "skew-kill-two")
SKEWED_FAULTS = frozenset({"clock-skew", "skew-kill-two"})
"""Faults that restart a node with its clock off."""
NETWORK_FAULTS = (
    "partition-leader",
    "partition-owner",
    "partition-halves",
    "partition-bridge",
    "flapping",
)
OTHER_FAULTS = ("membership", "disk-full")
FAULT_KINDS = PROCESS_FAULTS + NETWORK_FAULTS + OTHER_FAULTS
MAX_DOWN = 2
"""Nodes that may be killed or paused at once: a minority of five."""


@dataclass(frozen=True, slots=True)
class PlannedFault:
    """One fault of a schedule."""

    at: float
    """Seconds after the run starts."""
    kind: str
    hold: float
    """Seconds it stays in force."""
    pick: int
    """Chooses the targets when the fault starts (node, key, groups)."""
    clock_offset_ms: int = 0
    """For the skewed faults: how far the restarted node's clock is off."""

    def describe(self) -> str:
        extra = f" offset={self.clock_offset_ms:+d}ms" if self.kind in SKEWED_FAULTS else ""
        return f"{self.at:6.2f}s {self.kind} for {self.hold:.1f}s{extra}"


def make_schedule(
    seed: int, duration: float, kinds: Sequence[str] = FAULT_KINDS
) -> list[PlannedFault]:
    """The faults of seed ``seed`` for a run of ``duration`` seconds; all heal before it ends.

    The first fault starts after a second of calm, gaps are 0.5-4 s so faults
    overlap, and each holds 1.5-6 s (cut short so that the last second of
    the run is calm again).
    """
    unknown = set(kinds) - set(FAULT_KINDS)
    if unknown:
        raise ValueError(f"unknown fault kinds: {sorted(unknown)}")
    rng = random.Random(seed)
    faults: list[PlannedFault] = []
    at = 1.0 + rng.uniform(0.0, 1.0)
    while at < duration - 2.5:
        kind = rng.choice(list(kinds))
        start = round(at, 3)
        # Rounded down, so the fault always ends a second before the run.
        hold = math.floor(min(rng.uniform(1.5, 6.0), duration - 1.0 - start) * 1000) / 1000
        offset = 0
        if kind in SKEWED_FAULTS:
            offset = rng.choice((-1, 1)) * rng.randint(10_000, 30_000)
        faults.append(PlannedFault(start, kind, hold, rng.randrange(1 << 30), offset))
        at += rng.uniform(0.5, 4.0)
    return faults


@dataclass
class NemesisLog:
    """What the nemesis did: faults applied (as windows) and faults skipped."""

    windows: list[FaultWindow] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    """Faults that could not be undone."""


Undo = Callable[[], None]


class Nemesis:
    """Applies a schedule to a cluster from its own thread, on the run's clock."""

    def __init__(
        self,
        cluster: ChaosCluster,
        schedule: Sequence[PlannedFault],
        now: Callable[[], float],
    ) -> None:
        self.cluster = cluster
        self.schedule = list(schedule)
        self.now = now
        self.log = NemesisLog()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="nemesis", daemon=True)
        self._down: set[int] = set()
        """Nodes killed, paused, or restarted and not yet serving."""
        self._restarting: set[int] = set()
        self._lock = threading.Lock()
        self._partitioned = False
        self._disk_full = False
        self._undo: dict[int, tuple[float, str, str, Undo]] = {}
        self.error: BaseException | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 120.0) -> None:
        """Stop applying faults (those in force stay until ``heal_all``)."""
        self._stop.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        # (time, order, fault number, start?) events; the undo of a fault is
        # queued when the fault starts.
        queue: list[tuple[float, int, int, bool]] = [
            (fault.at, n, n, True) for n, fault in enumerate(self.schedule)
        ]
        heapq.heapify(queue)
        order = len(queue)
        try:
            while queue and not self._stop.is_set():
                when, _, number, starting = queue[0]
                if self._stop.wait(max(0.0, when - self.now())):
                    return
                heapq.heappop(queue)
                fault = self.schedule[number]
                if starting:
                    if self._begin(number, fault):
                        heapq.heappush(queue, (fault.at + fault.hold, order, number, False))
                        order += 1
                else:
                    self._end(number)
        except BaseException as error:  # reported by the run, after heal_all
            self.error = error

    def _begin(self, number: int, fault: PlannedFault) -> bool:
        rng = random.Random(fault.pick)
        began = self.now()
        try:
            with self._lock:
                self._count_restarted_up()
                applied = self._apply(fault, rng)
        except Exception as error:  # a fault that cannot be applied now is skipped
            self.log.skipped.append(f"{fault.describe()}: {type(error).__name__}: {error}")
            return False
        if applied is None:
            self.log.skipped.append(f"{fault.describe()}: limits")
            return False
        detail, undo = applied
        self._undo[number] = (began, fault.kind, detail, undo)
        self.log.events.append(f"{began:7.2f}s start {fault.kind} {detail}")
        return True

    def _end(self, number: int) -> None:
        began, kind, detail, undo = self._undo.pop(number)
        try:
            with self._lock:
                undo()
        except Exception as error:  # reported with the run's problems; the run goes on
            self.log.errors.append(f"ending {kind} {detail}: {type(error).__name__}: {error}")
        ended = self.now()
        self.log.windows.append(FaultWindow(kind, began, ended, detail))
        self.log.events.append(f"{ended:7.2f}s end   {kind} {detail}")

    def heal_all(self) -> None:
        """Undo every fault still in force, oldest first."""
        for number in sorted(self._undo):
            self._end(number)

    def _count_restarted_up(self) -> None:
        """A restarted node counts as down until it serves."""
        for i in list(self._restarting):
            if self.cluster.serving(i):
                self._restarting.discard(i)
                self._down.discard(i)

    def _restarted(self, i: int) -> None:
        self._restarting.add(i)
        self._down.add(i)

    # The faults. Each returns (detail, undo), or None when a limit forbids it.

    def _apply(self, fault: PlannedFault, rng: random.Random) -> tuple[str, Undo] | None:
        cluster = self.cluster
        up = [i for i in range(cluster.size) if i not in self._down]
        kind = fault.kind
        if kind in ("kill", "pause", "clock-skew", "kill-leader", "disk-full"):
            if len(self._down) >= MAX_DOWN and kind != "disk-full":
                return None
            if kind == "disk-full" and self._disk_full:
                return None
            if kind == "kill-leader":
                target = cluster.leader_index()
                if target is None or target in self._down:
                    return None
            elif kind == "disk-full":
                target = cluster.disk_node
            else:
                target = rng.choice(up)
            return self._process_fault(kind, target, fault.clock_offset_ms)
        if kind == "kill-two":
            if len(self._down) > MAX_DOWN - 2:
                return None
            targets = rng.sample(up, 2)
            return "+".join(cluster.name(i) for i in targets), self._kill(targets)
        if kind == "skew-kill-two":
            return self._skew_kill_two(rng, fault.clock_offset_ms)
        if kind == "membership":
            joiner = cluster.join_spare()
            return joiner, lambda: cluster.leave(joiner)
        return self._network_fault(kind, fault, rng)

    def _skew_kill_two(self, rng: random.Random, offset_ms: int) -> tuple[str, Undo] | None:
        """The lost write of issue 10, composed: one node restarts with a skewed
        clock and, as soon as it serves (before its hints reach it), two others
        die, so for the keys the three replicate it coordinates alone with
        stand-ins."""
        if self._down:
            return None
        cluster = self.cluster
        skewed = rng.randrange(cluster.size)
        true_clock = self._restart_skewed(skewed, offset_ms)
        cluster.wait_serving(skewed)
        self._count_restarted_up()
        others = rng.sample([i for i in range(cluster.size) if i != skewed], 2)
        restart_others = self._kill(others)

        def undo() -> None:
            restart_others()
            true_clock()

        names = "+".join(cluster.name(i) for i in others)
        return f"{cluster.name(skewed)} {offset_ms:+d}ms, {names} down", undo

    def _kill(self, targets: Sequence[int]) -> Undo:
        """``kill -9`` each target; the undo restarts them on the same data dirs."""
        for i in targets:
            self.cluster.kill(i)
            self._down.add(i)

        def restart() -> None:
            for i in targets:
                self.cluster.restart(i)
                self._restarted(i)

        return restart

    def _restart_skewed(self, target: int, offset_ms: int) -> Undo:
        """Restart a node at once with a skewed clock; the undo restarts it on a true one."""
        self.cluster.restart(target, clock_offset_ms=offset_ms)
        self._restarted(target)

        def true_clock() -> None:
            self.cluster.restart(target)
            self._restarted(target)

        return true_clock

    def _process_fault(self, kind: str, target: int, offset_ms: int) -> tuple[str, Undo]:
        cluster = self.cluster
        name = cluster.name(target)
        if kind == "disk-full":
            cluster.fill_disk()
            self._disk_full = True

            def free() -> None:
                cluster.free_disk()
                self._disk_full = False

            return name, free
        if kind == "clock-skew":
            # It serves at once (the lost write of issue 10 needed exactly
            # this) and keeps the skew until the fault ends.
            return f"{name} {offset_ms:+d}ms", self._restart_skewed(target, offset_ms)
        if kind != "pause":
            return name, self._kill([target])
        self._down.add(target)
        cluster.pause(target)

        def resume() -> None:
            cluster.resume(target)
            self._down.discard(target)

        return name, resume

    def _network_fault(
        self, kind: str, fault: PlannedFault, rng: random.Random
    ) -> tuple[str, Undo] | None:
        if self._partitioned:
            return None
        cluster = self.cluster
        nodes = list(range(cluster.size))
        if kind == "partition-leader":
            leader = cluster.leader_index()
            if leader is None:
                return None
            groups = [[leader], [i for i in nodes if i != leader]]
        elif kind == "partition-owner":
            owner = cluster.owner_index(rng.randrange(1 << 30))
            groups = [[owner], [i for i in nodes if i != owner]]
        elif kind == "partition-bridge":
            rng.shuffle(nodes)
            # The fifth node keeps its links to both sides.
            groups = [nodes[:2], nodes[2:4]]
        else:
            rng.shuffle(nodes)
            groups = [nodes[:2], nodes[2:]]
        detail = "|".join(",".join(cluster.name(i) for i in sorted(g)) for g in groups)
        self._partitioned = True
        if kind == "flapping":
            flapper = _Flapper(cluster, groups, rng)
            flapper.start()

            def stop_flapping() -> None:
                flapper.stop()
                self._partitioned = False

            return f"{detail} every {flapper.period:.1f}s", stop_flapping
        cluster.lab.partition(*groups)

        def heal() -> None:
            cluster.lab.heal()
            self._partitioned = False

        return detail, heal


class _Flapper:
    """Cuts and heals one partition over and over until stopped."""

    def __init__(self, cluster: ChaosCluster, groups: list[list[int]], rng: random.Random) -> None:
        self.cluster = cluster
        self.groups = groups
        self.period = rng.uniform(0.3, 1.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="flapping", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        self.cluster.lab.heal()

    def _run(self) -> None:
        cut = False
        while not self._stop.wait(self.period):
            if cut:
                self.cluster.lab.heal()
            else:
                self.cluster.lab.partition(*self.groups)
            cut = not cut
