"""One fault-injection run: real nodes in network namespaces, workloads, a nemesis, checkers.

``run_schedule(seed, duration, workdir)`` starts five ``ringkv node``
processes (RF 3), each in its own namespace of a ``NetnsLab`` with a sixth
namespace kept for joiners, runs the mixed workloads of
``ringkv.cli.check_workloads`` from the host while a ``Nemesis`` applies the
seed's schedule, then heals everything, runs one repair on every node, reads
every key's replicas and final values, and hands the lot to the checkers.
Everything it starts is gone when it returns, pass or fail.

The workloads, on disjoint keys:

=============  ============  ======  =========================================
workload       level         keys    checked by
=============  ============  ======  =========================================
register       linearizable  5       linearizable, version-order
counter        linearizable  3       lost-cas, linearizable, version-order
writes         quorum        100     lost-writes, version-order, convergence
writes         all           40      lost-writes, version-order, convergence
multiset       quorum        60      lost-writes, version-order, convergence
=============  ============  ======  =========================================
"""

from __future__ import annotations

import contextlib
import errno
import functools
import shutil
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from ringkv.api import replica_pb2, replica_pb2_grpc
from ringkv.cli.check_workloads import (
    CallRecorder,
    RunLimits,
    WorkloadSpec,
    final_reads,
    run_workloads,
)
from ringkv.client.admin import cluster_state, remove_node, repair
from ringkv.client.health import check
from ringkv.core.checkers import NO_FAULT, Analysis, RunEvidence, analyse
from ringkv.core.errors import NotFound, RingkvError
from ringkv.core.history import HistoryOp, ReplicaCopy, dump_lines
from ringkv.core.ring import Ring
from tests.support.leader_watch import LeaderWatcher
from tests.support.nemesis import FAULT_KINDS, Nemesis, PlannedFault, make_schedule
from tests.support.netns import NetnsLab
from tests.support.nodes import NodeProcess, wait_for
from tests.support.tmpfs import small_tmpfs
from tests.support.watch_observer import WatchObserver, WatchReport

PORT = 50051
"""Every namespace has its own ports: all nodes use the seed's first port."""
SIZE = 5
REPLICAS = 3
DISK_NODE = 4
"""The node whose data dir is a small tmpfs, for the disk-full fault."""
DISK_SIZE = "96m"
TIMINGS = (
    "--heartbeat-interval", "0.3",
    "--election-timeout", "1.5",
    "--peer-timeout", "0.5",
    "--request-timeout", "2",
    "--hint-replay-interval", "0.5",
    "--anti-entropy-interval", "0",
    "--dead-after", "120",
)  # fmt: skip


@dataclass
class NamespacedNode(NodeProcess):
    """A node process inside one namespace of a lab, listening on its lab IP."""

    lab: NetnsLab | None = None
    index: int = 0
    disk: Path | None = None
    """Where its data dir lives when not under ``workdir`` (a small tmpfs)."""

    @property
    def host(self) -> str:
        assert self.lab is not None
        return self.lab.ips[self.index]

    @property
    def data_dir(self) -> Path:
        return (self.disk or self.workdir) / "data"

    def command(self) -> list[str]:
        assert self.lab is not None
        return self.lab.command(self.index, super().command())

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


@dataclass(frozen=True)
class ChaosWorkloads:
    """The mixed workloads of a fault run (see the module docstring)."""

    registers: WorkloadSpec
    counters: WorkloadSpec
    writes: tuple[WorkloadSpec, ...]
    """The unique-value writes whose keys the final reads and replica reads judge."""

    @classmethod
    def under(cls, prefix: str) -> ChaosWorkloads:
        return cls(
            WorkloadSpec("register", "linearizable", 5, 3, prefix),
            WorkloadSpec("counter", "linearizable", 3, 3, prefix),
            (
                WorkloadSpec("writes", "quorum", 100, 2, prefix + "q/"),
                WorkloadSpec("writes", "all", 40, 1, prefix + "a/"),
                WorkloadSpec("multiset", "quorum", 60, 1, prefix),
            ),
        )

    def specs(self) -> list[WorkloadSpec]:
        return [self.registers, self.counters, *self.writes]


class ChaosCluster:
    """Five nodes (RF 3) in a lab of six namespaces; the sixth hosts joiners."""

    def __init__(
        self,
        lab: NetnsLab,
        workdir: Path,
        disk: Path | None,
        owner_keys: Sequence[str],
        node_args: Sequence[str] = (),
    ):
        self.lab = lab
        self.node_args = list(node_args)
        """Extra flags for every node (``scripts/chaos --node-arg``)."""
        self.workdir = workdir
        self.size = SIZE
        self.disk_node = DISK_NODE
        self.disk = disk
        self.owner_keys = list(owner_keys)
        self.killed: set[int] = set()
        """Nodes the nemesis killed and has not restarted: not crashes."""
        self.spares: list[NamespacedNode] = []
        self.pending_removals: list[str] = []
        self.nodes = [self._node(i, f"node{i + 1}", self._peers(i)) for i in range(SIZE)]
        self._lock = threading.Lock()

    def _peers(self, i: int) -> str:
        return ",".join(f"node{j + 1}={self.lab.ips[j]}:{PORT}" for j in range(SIZE) if j != i)

    def _node(self, index: int, node_id: str, peers: str) -> NamespacedNode:
        return NamespacedNode(
            node_id,
            self.workdir / node_id,
            self.base_args(peers),
            port=PORT,
            lab=self.lab,
            index=index,
            disk=self.disk if index == DISK_NODE else None,
        )

    def base_args(self, peers: str) -> list[str]:
        return ["-peers", peers, "-replicas", str(REPLICAS), *TIMINGS, *self.node_args]

    @property
    def endpoints(self) -> list[str]:
        return [node.address for node in self.nodes]

    def name(self, i: int) -> str:
        return self.nodes[i].node_id

    def start(self) -> None:
        for node in self.nodes:
            node.launch()
        for node in self.nodes:
            node.wait_serving()

    # Process faults

    def kill(self, i: int) -> None:
        with self._lock:
            self.killed.add(i)
            self.nodes[i].kill()

    def restart(self, i: int, *, clock_offset_ms: int = 0) -> None:
        node = self.nodes[i]
        with self._lock:
            node.kill()
            node.extra_args = self.base_args(self._peers(i))
            if clock_offset_ms:
                node.extra_args += ["--clock-offset-ms", str(clock_offset_ms)]
            node.launch()
            self.killed.discard(i)

    def serving(self, i: int) -> bool:
        return self.nodes[i].running and check(self.nodes[i].address, timeout=0.5)

    def wait_serving(self, i: int, timeout: float = 20.0) -> None:
        wait_for(lambda: self.serving(i), timeout=timeout, what=f"{self.name(i)} to serve")

    def kill_all(self) -> None:
        for node in [*self.nodes, *self.spares]:
            node.kill()

    def pause(self, i: int) -> None:
        self.nodes[i].signal(signal.SIGSTOP)

    def resume(self, i: int) -> None:
        self.nodes[i].signal(signal.SIGCONT)

    def crashed(self) -> list[str]:
        """Nodes that exited without the nemesis killing them."""
        with self._lock:
            return [
                f"{node.node_id} (exit {node.process.returncode})"
                for i, node in enumerate(self.nodes)
                if node.process is not None
                and node.process.poll() is not None
                and i not in self.killed
            ]

    # What the nemesis targets

    def leader_index(self) -> int | None:
        try:
            state = cluster_state(
                [self.nodes[i].address for i in range(SIZE) if i not in self.killed],
                timeout=1.0,
            )
        except RingkvError:
            return None
        ids = [node.node_id for node in self.nodes]
        return ids.index(state.leader_id) if state.leader_id in ids else None

    def ring(self) -> Ring:
        state = cluster_state(self.endpoints, timeout=2.0)
        members = [m.node_id for m in state.members if m.status != "joining"]
        return Ring(tuple(members), vnodes_per_node=state.vnodes)

    def owner_index(self, pick: int) -> int:
        """The index of the first replica of one of the register keys."""
        key = self.owner_keys[pick % len(self.owner_keys)]
        owner = self.ring().replicas(key.encode(), REPLICAS)[0]
        ids = [node.node_id for node in self.nodes]
        return ids.index(owner) if owner in ids else pick % SIZE

    # Membership

    def join_spare(self) -> str:
        if any(spare.running for spare in self.spares):
            raise RuntimeError("a joiner is still a member")
        # "aux" ranks below "node" in bully order, so a joiner never leads.
        node_id = f"aux{len(self.spares) + 1}"
        spare = self._node(
            SIZE, node_id, ",".join(f"node{j + 1}={self.lab.ips[j]}:{PORT}" for j in range(SIZE))
        )
        self.spares.append(spare)
        spare.launch()
        return node_id

    def leave(self, node_id: str) -> None:
        """End a membership fault: decommission the joiner now, or, when no leader
        can be had (other faults hold a majority down), once everything healed."""
        try:
            self.remove_spare(node_id, timeout=10.0)
        except RingkvError:
            self.pending_removals.append(node_id)

    def remove_spare(self, node_id: str, timeout: float = 30.0) -> None:
        """Decommission a joiner; one that never became a member is just stopped."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                remove_node(self.endpoints, node_id, timeout=5.0)
            except NotFound:
                if time.monotonic() > deadline:
                    self.spares[-1].kill()  # never admitted: nothing to hand back
                    return
            except RingkvError:
                if time.monotonic() > deadline:
                    raise
            else:
                return
            # Not admitted yet, a change in progress or no leader: ask again.
            time.sleep(0.5)

    # Disk

    def fill_disk(self) -> None:
        assert self.disk is not None
        with (self.disk / "ballast").open("ab") as ballast:
            chunk = b"\0" * (1 << 20)
            try:
                while True:
                    ballast.write(chunk)
                    ballast.flush()
            except OSError as error:
                if error.errno != errno.ENOSPC:
                    raise

    def free_disk(self) -> None:
        assert self.disk is not None
        (self.disk / "ballast").unlink(missing_ok=True)

    # After the faults

    def replica_copies(self, keys: Sequence[str]) -> dict[str, dict[str, ReplicaCopy | None]]:
        """What each replica of each key stores, read from the node itself."""
        ring = self.ring()
        by_id = {node.node_id: node for node in [*self.nodes, *self.spares]}
        replicas = {key: ring.replicas(key.encode(), REPLICAS) for key in keys}
        copies: dict[str, dict[str, ReplicaCopy | None]] = {key: {} for key in keys}
        for node_id in ring.nodes:
            mine = [key for key in keys if node_id in replicas[key]]
            with grpc.insecure_channel(by_id[node_id].address) as channel:
                stub = replica_pb2_grpc.ReplicaStub(channel)
                request = replica_pb2.ReadRequest(keys=[key.encode() for key in mine])
                response = stub.Read(request, timeout=10.0)
                if response.HasField("newer_table"):
                    # Replica reads are fenced by member table: the first call
                    # learns the node's, the second is planned on it.
                    table = response.newer_table
                    request.fence.CopyFrom(replica_pb2.Fence(epoch=table.epoch, term=table.term))
                    response = stub.Read(request, timeout=10.0)
            for key, result in zip(mine, response.results, strict=True):
                copies[key][node_id] = (
                    ReplicaCopy(
                        result.record.version.timestamp,
                        result.record.version.node_id,
                        result.record.value,
                        result.record.tombstone,
                    )
                    if result.found
                    else None
                )
        return copies


@dataclass
class ScheduleResult:
    """What one seed's run found."""

    seed: int
    schedule: list[PlannedFault]
    analysis: Analysis
    history: list[HistoryOp]
    windows: int
    skipped: list[str]
    events: list[str]
    crashes: list[str]
    problems: list[str] = field(default_factory=list)
    """Things that went wrong outside the checkers (no leader after heal...)."""
    watch: WatchReport | None = None
    """What the watch kept open through the run delivered."""

    @property
    def acknowledged_writes(self) -> int:
        return sum(1 for op in self.history if op.is_write and op.ok)

    def violated(self) -> bool:
        return self.analysis.violated or bool(self.crashes) or bool(self.problems)

    def availability_under_faults(self) -> tuple[int, int]:
        rows = [row for row in self.analysis.availability if row.kind != NO_FAULT]
        return sum(r.succeeded for r in rows), sum(r.calls for r in rows)


def run_schedule(
    seed: int,
    duration: float,
    workdir: Path,
    *,
    kinds: Sequence[str] = FAULT_KINDS,
    max_configurations: int = 200_000,
    node_args: Sequence[str] = (),
) -> ScheduleResult:
    """Run seed ``seed``'s schedule for ``duration`` seconds; see the module docstring."""
    schedule = make_schedule(seed, duration, kinds)
    workloads = ChaosWorkloads.under(f"chaos/{seed}/")
    with contextlib.ExitStack() as stack:
        lab = stack.enter_context(NetnsLab(SIZE + 1))
        disk = stack.enter_context(small_tmpfs(workdir / "disk", size=DISK_SIZE))
        cluster = ChaosCluster(lab, workdir, disk, workloads.registers.all_keys(), node_args)
        # Kill every node before the disk is unmounted and the lab removed.
        stack.callback(cluster.kill_all)
        cluster.start()
        observer = WatchObserver(cluster.endpoints, f"chaos/{seed}/")
        stack.callback(observer.stop)
        observer.start()
        recorder = CallRecorder()
        watcher = LeaderWatcher(lambda: [*cluster.nodes, *cluster.spares], recorder.now)
        watcher.start()
        nemesis = Nemesis(cluster, schedule, recorder.now)
        nemesis.start()
        try:
            history = run_workloads(
                cluster.endpoints,
                workloads.specs(),
                RunLimits(duration, max_calls_per_process=20_000, op_timeout=3.0),
                recorder=recorder,
                seed=seed,
            )
        finally:
            nemesis.stop()
            leaders = watcher.stop()
            crashes = cluster.crashed()
            nemesis.heal_all()
            cluster.lab.heal()
        problems = [*nemesis.log.errors, *recorder.process_errors]
        if nemesis.error is not None:
            problems.append(f"nemesis failed: {nemesis.error!r}")
        problems += settle(cluster)
        keys = [key for spec in workloads.writes for key in spec.all_keys()]
        counters = workloads.counters.all_keys()
        copies = None
        with contextlib.suppress(RingkvError, grpc.RpcError):
            copies = cluster.replica_copies(keys)
        if copies is None:
            problems.append("could not read every replica after the heal")
        final = final_reads(cluster.endpoints, [*keys, *counters])
        unread = len(keys) + len(counters) - len(final)
        if unread:
            problems.append(f"{unread} keys could not be read at ALL after the heal")
        watch = observer.check(history, final)
        problems += watch.problems
        analysis = analyse(
            history,
            RunEvidence(final=final, replicas=copies, faults=nemesis.log.windows, leaders=leaders),
            max_configurations=max_configurations,
        )
        crashes = sorted({*crashes, *cluster.crashed()})
        return ScheduleResult(
            seed,
            schedule,
            analysis,
            history,
            len(nemesis.log.windows),
            nemesis.log.skipped,
            nemesis.log.events,
            crashes,
            problems,
            watch,
        )
    raise AssertionError("unreachable")


def settle(cluster: ChaosCluster, timeout: float = 60.0) -> list[str]:
    """After the heal: every node serving and agreeing on a leader, then one repair each."""
    problems: list[str] = []
    for node in cluster.nodes:
        if node.running:
            try:
                node.wait_serving()
            except AssertionError as error:
                problems.append(f"{node.node_id} did not serve again: {str(error)[:200]}")
    agreed = functools.partial(_agreed, cluster)
    try:
        wait_for(agreed, timeout=timeout, interval=0.2, what="one leader after heal")
        for node_id in cluster.pending_removals:
            cluster.remove_spare(node_id, timeout=timeout)
        wait_for(agreed, timeout=timeout, interval=0.2, what="the joiner's removal to settle")
    except (AssertionError, RingkvError) as error:
        problems.append(str(error))
    for node in cluster.nodes:
        problem = _repair_fully(node, deadline=time.monotonic() + timeout)
        if problem is not None:
            problems.append(problem)
    return problems


def _repair_fully(node: NodeProcess, deadline: float) -> str | None:
    """One repair of ``node`` against every peer, or what kept it from one.

    A node that restarted just before the heal may still count some peers
    down (it probes them every 0.5 s) and skip them: such a round is run
    again, or the convergence check would judge replicas nobody compared.
    """
    while True:
        try:
            report = repair(node.address, timeout=120.0)
        except RingkvError as error:
            return f"repair on {node.node_id} failed: {error.reason}: {error.message}"
        missed = [*report.skipped, *report.failed]
        if not missed:
            return None
        if time.monotonic() > deadline:
            return f"repair on {node.node_id} could not reach {', '.join(missed)}"
        time.sleep(0.5)  # the node's peer probe interval: until it sees them again


def _agreed(cluster: ChaosCluster) -> bool:
    seen = set()
    for node in cluster.nodes:
        try:
            state = cluster_state(node.address, timeout=1.0)
        except RingkvError:
            return False
        if not state.leader_id or any(m.status != "normal" for m in state.members):
            return False
        seen.add((state.leader_id, state.term, state.epoch))
    return len(seen) == 1


def save_artifacts(result: ScheduleResult, workdir: Path, out: Path) -> Path:
    """Keep a failing run's history, schedule, fault log and node logs under ``out/seed-N``."""
    target = out / f"seed-{result.seed}"
    target.mkdir(parents=True, exist_ok=True)
    (target / "history.jsonl").write_text(
        "".join(line + "\n" for line in dump_lines(result.history))
    )
    lines = [fault.describe() for fault in result.schedule]
    lines += ["", "applied:", *result.events, "", "skipped:", *result.skipped]
    lines += ["", "problems:", *result.problems, *result.crashes]
    (target / "faults.txt").write_text("\n".join(lines) + "\n")
    for log in sorted(workdir.glob("*/node-*.log")):
        shutil.copy(log, target / f"{log.parent.name}-{log.name}")
    return target


@contextlib.contextmanager
def scratch(root: Path, seed: int) -> Iterator[Path]:
    """A fresh work dir for one seed, removed afterwards."""
    workdir = root / f"run-{seed}"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    try:
        yield workdir
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
