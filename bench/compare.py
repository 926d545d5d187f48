"""ringkv against etcd on the same machine, driven by the same load generator.

    PYTHONPATH=src .venv/bin/python bench/compare.py                  # the full sweep
    PYTHONPATH=src .venv/bin/python bench/compare.py --rounds 1 --duration 2 --concurrency 1,64

Starts three etcd members (Debian's ``etcd-server``; installed with apt-get
when ``etcd`` is missing and this runs as root) and three ringkv nodes (the
seed's command lines: replication factor 3, LMDB, ``--fsync batch``;
``--ringkv-flags`` adds flags to every node), all on
loopback, both clusters up for the whole run. One load generator (grpc.aio on
uvloop, pre-encoded requests sent as raw bytes, round-robin over a system's
three endpoints, so neither client knows who leads or owns a key) drives:

* ``write``: ringkv ``Set`` at QUORUM against etcd ``Put``;
* ``read-strong``: ringkv ``Get`` at QUORUM against etcd's linearizable ``Range``;
* ``read-weak``: ringkv ``Get`` at ONE against etcd's serializable ``Range``;
* ``read-linearizable`` (only when asked for): ringkv ``Get`` at LINEARIZABLE
  against etcd's linearizable ``Range``;

each at every ``--concurrency`` (requests in flight), 100-byte values. Runs
alternate between the systems for each workload and concurrency, the order
reversed every round; the table reports medians over the rounds and ringkv
as a multiple of etcd. QUORUM reads are what issue 14 sets against etcd's
linearizable reads, though they promise less (docs/correctness.md):
``read-linearizable`` is the like-for-like comparison. Node CPU per
operation is the three server processes' user and system time over the run
(``/proc``) divided by the operations completed. A PNG
plot (throughput and p99 against concurrency) goes to ``--plot``; ``--json``
writes every round's numbers. Every process is stopped, and every data dir
removed, on success, failure or Ctrl-C. A benchmark, not a test: numbers
move with the machine's other load; compare ratios from one run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType

import grpc
from cluster import cpu_seconds, free_base_port, local_cluster, spawn, stop
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ringkv.api import kv_pb2
from ringkv.cli.workloads import Histogram

WORKLOADS = ("write", "read-strong", "read-weak", "read-linearizable")
DEFAULT_WORKLOADS = WORKLOADS[:3]
"""Issue 14's three; ``read-linearizable`` (ringkv's LINEARIZABLE reads against
etcd's linearizable ones) is the like-for-like strong read, on request."""
READS = WORKLOADS[1:]
RINGKV_READ_LEVELS = {
    "read-strong": kv_pb2.CONSISTENCY_QUORUM,
    "read-weak": kv_pb2.CONSISTENCY_ONE,
    "read-linearizable": kv_pb2.CONSISTENCY_LINEARIZABLE,
}
VALUE = b"v" * 100
WRITE_KEYS = 10_000
READ_KEYS = 1_000
CALL_TIMEOUT_S = 5.0
STARTUP_TIMEOUT_S = 30.0
MAX_OPS_PER_RUN = 2_000_000
"""A bound on one run's operations, whatever its duration."""


# -- the two systems' requests, as bytes ---------------------------------------


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _bytes_field(number: int, value: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(value)) + value


def etcd_put(key: bytes, value: bytes) -> bytes:
    """etcdserverpb.PutRequest{key, value}."""
    return _bytes_field(1, key) + _bytes_field(2, value)


def etcd_range(key: bytes, *, serializable: bool) -> bytes:
    """etcdserverpb.RangeRequest{key, serializable}: field 7 is the bool."""
    return _bytes_field(1, key) + (_varint(7 << 3) + b"\x01" if serializable else b"")


@dataclass(frozen=True)
class System:
    """How one system's workloads are called: the method and the request for a key."""

    name: str
    endpoints: list[str]
    pids: list[int]
    methods: dict[str, str]
    request: Callable[[str, bytes], bytes]


def etcd_system(endpoints: list[str], pids: list[int]) -> System:
    def request(workload: str, key: bytes) -> bytes:
        if workload == "write":
            return etcd_put(key, VALUE)
        return etcd_range(key, serializable=workload == "read-weak")

    methods = {"write": "/etcdserverpb.KV/Put"} | dict.fromkeys(READS, "/etcdserverpb.KV/Range")
    return System("etcd", endpoints, pids, methods, request)


def ringkv_system(endpoints: list[str], pids: list[int]) -> System:
    def request(workload: str, key: bytes) -> bytes:
        if workload == "write":
            level = kv_pb2.CONSISTENCY_QUORUM
            return kv_pb2.SetRequest(
                key=key.decode(), value=VALUE, consistency=level
            ).SerializeToString()
        level = RINGKV_READ_LEVELS[workload]
        return kv_pb2.GetRequest(key=key.decode(), consistency=level).SerializeToString()

    methods = {"write": "/kv.KeyValue/Set"} | dict.fromkeys(READS, "/kv.KeyValue/Get")
    return System("ringkv", endpoints, pids, methods, request)


# -- the load generator ----------------------------------------------------------

RawCall = grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]


def _raw_call(channel: grpc.aio.Channel, method: str) -> RawCall:
    """A unary method whose requests and answers stay bytes (no serializers)."""
    return channel.unary_unary(method)


@dataclass
class Run:
    system: str
    workload: str
    concurrency: int
    round: int
    ops: int = 0
    errors: int = 0
    seconds: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    cpu_us_per_op: float = 0.0

    @property
    def throughput(self) -> float:
        return self.ops / self.seconds if self.seconds else 0.0


async def drive(
    system: System,
    workload: str,
    concurrency: int,
    duration_s: float,
    round_: int,
    *,
    route: Callable[[bytes], int] | None = None,
) -> Run:
    """``concurrency`` requests in flight for ``duration_s``; latencies of those
    that succeeded. Requests go round-robin over the endpoints, or to the one
    ``route`` names for the key."""
    keys = WRITE_KEYS if workload == "write" else READ_KEYS
    endpoint_of = [route(b"key%06d" % i) if route is not None else None for i in range(keys)]
    requests = [system.request(workload, b"key%06d" % i) for i in range(keys)]
    channels = [grpc.aio.insecure_channel(endpoint) for endpoint in system.endpoints]
    calls = [_raw_call(channel, system.methods[workload]) for channel in channels]
    histogram = Histogram()
    run = Run(system.name, workload, concurrency, round_)
    numbers = itertools.count()
    try:
        await asyncio.gather(*(channel.channel_ready() for channel in channels))
        cpu_before = sum(map(cpu_seconds, system.pids))
        started = time.perf_counter()
        deadline = started + duration_s

        async def worker() -> None:
            while time.perf_counter() < deadline:
                number = next(numbers)
                if number >= MAX_OPS_PER_RUN:
                    return
                routed = endpoint_of[number % keys]
                call = calls[number % len(calls) if routed is None else routed]
                sent = time.perf_counter_ns()
                try:
                    await call(requests[number % keys], timeout=CALL_TIMEOUT_S)
                except grpc.aio.AioRpcError:
                    run.errors += 1
                    continue
                histogram.record(time.perf_counter_ns() - sent)

        async with asyncio.TaskGroup() as workers:  # one failing stops the others
            for _ in range(concurrency):
                workers.create_task(worker())
        run.seconds = time.perf_counter() - started
        cpu_s = sum(map(cpu_seconds, system.pids)) - cpu_before
    finally:
        await asyncio.gather(*(channel.close() for channel in channels))
    run.ops = histogram.count
    if run.ops:
        run.p50_ms = histogram.percentile(50) / 1e6
        run.p99_ms = histogram.percentile(99) / 1e6
        run.cpu_us_per_op = cpu_s * 1e6 / run.ops
    return run


async def preload(system: System) -> None:
    """Every read key written once, so reads find values."""
    requests = [system.request("write", b"key%06d" % i) for i in range(READ_KEYS)]
    async with grpc.aio.insecure_channel(system.endpoints[0]) as channel:
        call = _raw_call(channel, system.methods["write"])
        for first in range(0, len(requests), 64):
            await asyncio.gather(
                *(call(r, timeout=CALL_TIMEOUT_S) for r in requests[first : first + 64])
            )


# -- etcd -------------------------------------------------------------------------


def ensure_etcd() -> str:
    """The etcd binary, installed from Debian's packages when missing (as root)."""
    found = shutil.which("etcd")
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise SystemExit("etcd is not installed: apt-get install etcd-server (as root)")
    print("installing etcd-server with apt-get...", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "etcd-server"], check=True, env=env)
    found = shutil.which("etcd")
    if not found:
        raise SystemExit("apt-get installed etcd-server but no etcd binary is on PATH")
    return found


@contextlib.contextmanager
def etcd_cluster(
    binary: str, workdir: Path, runner: asyncio.Runner
) -> Iterator[tuple[list[str], list[int]]]:
    """Three etcd members on loopback while the block runs: their client endpoints and pids."""
    base = free_base_port(6)
    names = [f"etcd{i + 1}" for i in range(3)]
    peers = [f"http://127.0.0.1:{base + 3 + i}" for i in range(3)]
    clients = [f"127.0.0.1:{base + i}" for i in range(3)]
    initial = ",".join(f"{n}={p}" for n, p in zip(names, peers, strict=True))
    children: list[subprocess.Popen[bytes]] = []
    try:
        for name, peer, client in zip(names, peers, clients, strict=True):
            line = [
                binary, "--name", name, "--data-dir", str(workdir / name),
                "--listen-client-urls", f"http://{client}",
                "--advertise-client-urls", f"http://{client}",
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", initial, "--initial-cluster-state", "new",
                "--initial-cluster-token", "ringkv-bench",
                # Compacted as it goes: a history grown over the sweep would
                # slow etcd's later rounds.
                "--auto-compaction-mode", "revision", "--auto-compaction-retention", "1000",
            ]  # fmt: skip
            children.append(spawn(line, workdir / f"{name}.log"))
        runner.run(_until_etcd_serves(clients, children))
        yield clients, [child.pid for child in children]
    finally:
        stop(children)


async def _until_etcd_serves(clients: list[str], children: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    for client, child in zip(clients, children, strict=True):
        async with grpc.aio.insecure_channel(client) as channel:
            call = _raw_call(channel, "/etcdserverpb.KV/Range")
            while True:
                try:
                    await call(etcd_range(b"ready", serializable=False), timeout=1.0)
                    break
                except grpc.aio.AioRpcError:
                    if child.poll() is not None or time.monotonic() > deadline:
                        raise SystemExit(f"etcd at {client} did not start") from None
                    await asyncio.sleep(0.2)


# -- report -------------------------------------------------------------------------


@dataclass
class Summary:
    workload: str
    concurrency: int
    medians: dict[str, dict[str, float]] = field(default_factory=dict)

    def ratio(self, measure: str) -> float | None:
        etcd, ringkv = self.medians.get("etcd"), self.medians.get("ringkv")
        if not etcd or not ringkv or not etcd[measure]:
            return None
        return ringkv[measure] / etcd[measure]


def summarize(runs: list[Run]) -> list[Summary]:
    summaries: dict[tuple[str, int], Summary] = {}
    groups: dict[tuple[str, int, str], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.workload, run.concurrency, run.system), []).append(run)
    for (workload, concurrency, system), group in groups.items():
        summary = summaries.setdefault((workload, concurrency), Summary(workload, concurrency))
        summary.medians[system] = {
            "throughput": statistics.median(r.throughput for r in group),
            "p50_ms": statistics.median(r.p50_ms for r in group),
            "p99_ms": statistics.median(r.p99_ms for r in group),
            "cpu_us_per_op": statistics.median(r.cpu_us_per_op for r in group),
            "errors": sum(r.errors for r in group),
        }
    return sorted(summaries.values(), key=lambda s: (WORKLOADS.index(s.workload), s.concurrency))


def render(summaries: list[Summary], rounds: int) -> Table:
    table = Table(
        title="ringkv (RF 3) against etcd (3 members), medians of "
        f"{rounds} round{'s' if rounds != 1 else ''}",
        caption="x etcd: ringkv's number as a multiple of etcd's (throughput: higher is "
        "better; latency and CPU: lower is better)",
    )
    table.add_column("workload")
    table.add_column("in flight", justify="right")
    table.add_column("system")
    for measure in ("ops/s", "p50 ms", "p99 ms", "CPU µs/op"):
        table.add_column(measure, justify="right")
    for measure in ("ops/s", "p99", "CPU"):
        table.add_column(f"x etcd\n{measure}", justify="right")
    for summary in summaries:
        for system in ("etcd", "ringkv"):
            m = summary.medians.get(system)
            if m is None:
                continue
            ratios = [summary.ratio(x) for x in ("throughput", "p99_ms", "cpu_us_per_op")]
            table.add_row(
                summary.workload if system == "etcd" else "",
                str(summary.concurrency) if system == "etcd" else "",
                system,
                f"{m['throughput']:,.0f}",
                f"{m['p50_ms']:.2f}",
                f"{m['p99_ms']:.1f}",
                f"{m['cpu_us_per_op']:,.0f}",
                *("" if system == "etcd" or r is None else f"{r:.2f}" for r in ratios),
                end_section=system == "ringkv",
            )
    return table


def plot(summaries: list[Summary], path: Path) -> None:
    import matplotlib  # noqa: PLC0415 - only when a plot is asked for

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    shown = [w for w in WORKLOADS if any(s.workload == w for s in summaries)]
    figure, axes = plt.subplots(2, len(shown), figsize=(5 * len(shown), 8), squeeze=False)
    for column, workload in enumerate(shown):
        mine = [s for s in summaries if s.workload == workload]
        for system, style in (("etcd", "o-"), ("ringkv", "s-")):
            points = [(s.concurrency, s.medians[system]) for s in mine if system in s.medians]
            if not points:
                continue
            xs = [x for x, _ in points]
            axes[0][column].plot(xs, [m["throughput"] for _, m in points], style, label=system)
            axes[1][column].plot(xs, [m["p99_ms"] for _, m in points], style, label=system)
        axes[0][column].set_title(workload)
        axes[0][column].set_ylabel("operations/s")
        axes[1][column].set_ylabel("p99 latency, ms")
        for row in (0, 1):
            axes[row][column].set_xscale("log", base=2)
            axes[row][column].set_xlabel("requests in flight")
            axes[row][column].legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


# -- main ---------------------------------------------------------------------------


def _exit_on_sigterm(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks: all stops


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (medians)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per run")
    parser.add_argument("--concurrency", default="1,16,64,256", help="requests in flight")
    parser.add_argument(
        "--workloads",
        default=",".join(DEFAULT_WORKLOADS),
        help=f"comma-separated, of {', '.join(WORKLOADS)}",
    )
    parser.add_argument("--plot", type=Path, default=Path("compare.png"), help="PNG to write")
    parser.add_argument("--json", type=Path, help="write every run and the medians here")
    parser.add_argument(
        "--ringkv-flags",
        default="",
        help='extra flags for every ringkv node, e.g. "--fsync never"',
    )
    args = parser.parse_args(argv)
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    workloads = [w for w in args.workloads.split(",") if w]
    unknown = set(workloads) - set(WORKLOADS)
    if unknown or args.rounds < 1 or args.duration <= 0 or min(concurrencies) < 1:
        parser.error(f"workloads are {', '.join(WORKLOADS)}; rounds, duration, concurrency > 0")
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    binary = ensure_etcd()
    # A table this wide is cut at 80 columns when the output is not a terminal.
    console = Console(width=None if sys.stdout.isatty() else 130)
    workdir = Path(tempfile.mkdtemp(prefix="ringkv-bench-compare-"))
    runs: list[Run] = []
    try:
        (workdir / "ringkv").mkdir()
        with (
            asyncio.Runner(loop_factory=_uvloop()) as runner,
            etcd_cluster(binary, workdir, runner) as (etcd_endpoints, etcd_pids),
            local_cluster(
                workdir / "ringkv", free_base_port(3), shlex.split(args.ringkv_flags)
            ) as ringkv,
        ):
            systems = [
                etcd_system(etcd_endpoints, etcd_pids),
                ringkv_system(ringkv.addresses, [p.pid for p in ringkv.processes]),
            ]
            for system in systems:
                runner.run(preload(system))
            # Each round reverses the order, so neither system always runs
            # right after the other (whose background work or the machine's
            # drift would otherwise land on one side).
            plan = [
                (round_, workload, concurrency, system)
                for round_ in range(1, args.rounds + 1)
                for workload in workloads
                for concurrency in concurrencies
                for system in (systems if round_ % 2 else systems[::-1])
            ]
            with Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), console=console,
            ) as progress:  # fmt: skip
                task = progress.add_task("runs", total=len(plan))
                for round_, workload, concurrency, system in plan:
                    progress.update(
                        task,
                        description=f"round {round_}: {system.name} {workload} x{concurrency}",
                    )
                    runs.append(
                        runner.run(drive(system, workload, concurrency, args.duration, round_))
                    )
                    progress.advance(task)
    except KeyboardInterrupt:
        print("interrupted; both clusters are stopped", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    summaries = summarize(runs)
    console.print(render(summaries, args.rounds))
    failed = [run for run in runs if run.errors]
    for run in failed:
        # Their CPU per operation counts failed calls' work over the successes,
        # and their percentiles leave the failures out.
        console.print(
            f"[red]round {run.round}: {run.system} {run.workload} x{run.concurrency}: "
            f"{run.errors} calls failed; its numbers are not comparable[/red]"
        )
    plot(summaries, args.plot)
    console.print(f"plot: {args.plot}")
    if args.json is not None:
        document = {
            "runs": [asdict(run) | {"throughput": run.throughput} for run in runs],
            "medians": [asdict(summary) for summary in summaries],
        }
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    return 0


def _uvloop() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop  # noqa: PLC0415 - the node's loop, where it is installed
    except ImportError:  # pragma: no cover
        return None
    return uvloop.new_event_loop


if __name__ == "__main__":
    sys.exit(main())
