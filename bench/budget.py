"""The node CPU of one QUORUM write, hop by hop, from differences between workloads.

    PYTHONPATH=src .venv/bin/python bench/budget.py
    PYTHONPATH=src .venv/bin/python bench/budget.py --concurrency 1 --ringkv-flags "--fsync never"

Starts a local 3-node RF 3 cluster and a 3-node RF 1 cluster (LMDB, `--fsync
batch`, or ``--ringkv-flags``) one after the other, and drives each with
``bench/compare.py``'s load generator at ``--concurrency`` requests in
flight, measuring the three node processes' CPU (user and system, from
``/proc``) per completed request, and its median latency:

- ``ping``: ``Ping``, round-robin. What any client call costs the node that
  answers it: grpc, the gate, the metrics, parsing.
- ``write-owner``: ``Set`` at QUORUM sent to the key's owner (as the SDK,
  which knows the ring, does): no forwarding hop.
- ``write-any``: ``Set`` at QUORUM round-robin, as a client that does not
  know the ring: two writes in three are forwarded to the owner.
- ``write-owner`` on the RF 1 cluster: the owner coordinates and commits
  alone, with no replica calls.

The hops are the differences: the client call (``ping``); coordinating and
committing a write on the owner (RF 1 ``write-owner`` less ``ping``); the two
replica writes, both ends and both replicas' commits (RF 3 ``write-owner``
less RF 1's); a forwarding hop (``write-any`` less ``write-owner``, per
forwarded write).

Beside them, the floor under a node's client call with Python's grpc: three
``bench/bare_grpc.py`` grpc.aio servers answering empty messages and doing
nothing else, driven the same way, for a unary answer and for a stream of
one (how a node answers a client, so that an unread answer can be given
up); then three of grpc's synchronous servers on ``FLOOR_THREADS`` threads.
etcd's whole replicated write is in ``bench/compare.py``'s CPU column.

Workloads alternate round by round (``--rounds``) and medians are reported.
A benchmark, not a test: the numbers move with the machine's load, and the
load generator shares the machine, so compare rows within one table.
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import bare_grpc
import compare
import grpc
from cluster import NODES, STARTUP_TIMEOUT_S, free_base_port, local_cluster, spawn, stop
from compare import System, drive, ringkv_system
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from ringkv.api import kv_pb2
from ringkv.core.ring import Ring

FORWARDED_SHARE = (NODES - 1) / NODES
"""Of round-robin writes, those that land on a node other than the owner."""
FLOOR_THREADS = 16
"""Handler threads of the synchronous floor server."""


def with_ping(system: System) -> System:
    """``system`` with a ``ping`` workload."""
    ping = kv_pb2.PingRequest().SerializeToString()

    def request(workload: str, key: bytes) -> bytes:
        return ping if workload == "ping" else system.request(workload, key)

    methods = system.methods | {"ping": "/kv.KeyValue/Ping"}
    return System(system.name, system.endpoints, system.pids, methods, request)


def owner_route(replicas: int) -> Callable[[bytes], int]:
    """The endpoint of each key's owner: the first of its replicas on the ring
    of ``node1``..``nodeN`` (the local clusters' ids, default vnodes)."""
    ring = Ring(tuple(f"node{i + 1}" for i in range(NODES)))
    return lambda key: int(ring.replicas(key, replicas)[0].removeprefix("node")) - 1


RUNS = [
    ("ping", "ping", False),
    ("write-owner", "write", True),
    ("write-any", "write", False),
]
"""(name, workload, sent to the key's owner)."""


Run = tuple[str, str, Callable[[bytes], int] | None]
"""(name, workload, the endpoint of each key or None for round-robin)."""


@dataclass(frozen=True)
class Measured:
    cpu_us: float
    """Node CPU per request, summed over the processes."""
    p50_ms: float


def drive_rounds(
    system: System, runs: list[Run], label: str, args: argparse.Namespace
) -> dict[str, Measured]:
    """Each run once per round, alternating; the medians over the rounds."""
    results: dict[str, list[compare.Run]] = {name: [] for name, _, _ in runs}
    with Progress(console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task(label, total=args.rounds * len(runs))
        for round_ in range(args.rounds):
            for name, workload, route in runs:
                run = asyncio.run(
                    drive(system, workload, args.concurrency, args.duration, round_, route=route)
                )
                if run.errors:
                    print(f"{label} {name}: {run.errors} errors", file=sys.stderr)
                results[name].append(run)
                progress.advance(task)
    return {
        name: Measured(
            statistics.median(r.cpu_us_per_op for r in taken),
            statistics.median(r.p50_ms for r in taken),
        )
        for name, taken in results.items()
    }


def measure(
    replicas: int, workloads: list[tuple[str, str, bool]], args: argparse.Namespace
) -> dict[str, Measured]:
    """Each of ``workloads`` (name, workload, sent to the owner) on a local cluster."""
    workdir = Path(tempfile.mkdtemp(prefix="ringkv-bench-budget-"))
    try:
        flags = shlex.split(args.ringkv_flags)
        with local_cluster(workdir, free_base_port(NODES), flags, replicas=replicas) as cluster:
            system = with_ping(ringkv_system(cluster.addresses, [p.pid for p in cluster.processes]))
            runs: list[Run] = [
                (name, workload, owner_route(replicas) if to_owner else None)
                for name, workload, to_owner in workloads
            ]
            return drive_rounds(system, runs, f"RF {replicas}", args)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def measure_floor(
    methods: dict[str, str], server_flags: list[str], args: argparse.Namespace
) -> dict[str, Measured]:
    """Each of ``methods`` (name: method) on three ``bench/bare_grpc.py``
    servers started with ``server_flags``."""
    workdir = Path(tempfile.mkdtemp(prefix="ringkv-bench-floor-"))
    server = str(Path(__file__).with_name("bare_grpc.py"))
    children: list[subprocess.Popen[bytes]] = []
    try:
        base = free_base_port(NODES)
        endpoints = [f"127.0.0.1:{base + index}" for index in range(NODES)]
        logs = [workdir / f"bare{index + 1}.log" for index in range(NODES)]
        for endpoint, log_path in zip(endpoints, logs, strict=True):
            port = endpoint.rsplit(":", 1)[1]
            children.append(spawn([sys.executable, server, port, *server_flags], log_path))
        _until_serving(children, endpoints, logs)
        system = System("bare", endpoints, [c.pid for c in children], methods, lambda _w, _k: b"")
        runs: list[Run] = [(name, name, None) for name in methods]
        return drive_rounds(system, runs, " ".join(["bare grpc", *server_flags]), args)
    finally:
        stop(children)
        shutil.rmtree(workdir, ignore_errors=True)


def _until_serving(
    children: list[subprocess.Popen[bytes]], endpoints: list[str], logs: list[Path]
) -> None:
    """Wait until every server accepts calls; exit with its log if one stops or
    does not in ``STARTUP_TIMEOUT_S`` (the load generator would wait for good)."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    for child, endpoint, log_path in zip(children, endpoints, logs, strict=True):
        with grpc.insecure_channel(endpoint) as channel:
            ready = grpc.channel_ready_future(channel)
            while child.poll() is None and time.monotonic() < deadline:
                try:
                    ready.result(timeout=0.2)
                except grpc.FutureTimeoutError:
                    continue
                break
            else:
                tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-20:])
                raise SystemExit(f"the floor server at {endpoint} did not start:\n{tail}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per run")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every run")
    parser.add_argument("--ringkv-flags", default="", help="flags for every ringkv node")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda signum, _: sys.exit(128 + signum))
    rf3 = measure(3, RUNS, args)
    rf1 = measure(1, [r for r in RUNS if r[0] == "write-owner"], args)
    both = {"unary": bare_grpc.UNARY, "stream of one": bare_grpc.STREAM_OF_ONE}
    aio = measure_floor(both, [], args)
    threaded = measure_floor(both, ["--threads", str(FLOOR_THREADS)], args)
    client_call = rf3["ping"].cpu_us
    owner_write = rf3["write-owner"].cpu_us
    table = Table(
        title=f"node CPU per call and per QUORUM write (3 processes, {args.concurrency} "
        f"in flight), medians of {args.rounds} rounds"
    )
    table.add_column("hop")
    table.add_column("µs, summed over the processes", justify="right")
    table.add_column("p50 ms", justify="right")
    table.add_column("measured as")
    threads = f"--threads {FLOOR_THREADS}"
    rows: list[tuple[str, float, Measured | None, str]] = [
        (
            "the floor: a bare grpc.aio unary call",
            aio["unary"].cpu_us,
            aio["unary"],
            "bench/bare_grpc.py",
        ),
        (
            "the floor: a bare grpc.aio stream of one answer",
            aio["stream of one"].cpu_us,
            aio["stream of one"],
            "bench/bare_grpc.py",
        ),
        (
            "the floor: a bare synchronous grpc unary call",
            threaded["unary"].cpu_us,
            threaded["unary"],
            f"bench/bare_grpc.py {threads}",
        ),
        (
            "the floor: a bare synchronous grpc stream of one",
            threaded["stream of one"].cpu_us,
            threaded["stream of one"],
            f"bench/bare_grpc.py {threads}",
        ),
        ("the client call (grpc, gate, parsing)", client_call, rf3["ping"], "Ping"),
        (
            "coordinating and committing on the owner",
            rf1["write-owner"].cpu_us - client_call,
            None,
            "RF 1 owner write - Ping",
        ),
        (
            "two replica writes (both ends, both commits)",
            owner_write - rf1["write-owner"].cpu_us,
            None,
            "RF 3 - RF 1 owner write",
        ),
        (
            "a write sent to its owner, RF 1",
            rf1["write-owner"].cpu_us,
            rf1["write-owner"],
            "RF 1 owner write",
        ),
        ("a write sent to its owner", owner_write, rf3["write-owner"], "RF 3 owner write"),
        (
            "one forwarding hop (per forwarded write)",
            (rf3["write-any"].cpu_us - owner_write) / FORWARDED_SHARE,
            None,
            "(any - owner) / (2/3)",
        ),
        (
            "a write from a client that does not know the ring",
            rf3["write-any"].cpu_us,
            rf3["write-any"],
            "RF 3 round-robin",
        ),
    ]
    for hop, micros, measured, how in rows:
        latency = f"{measured.p50_ms:.2f}" if measured is not None else ""
        table.add_row(hop, f"{micros:,.0f}", latency, how)
    Console(width=None if sys.stdout.isatty() else 140).print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
