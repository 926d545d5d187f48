"""The node CPU of one QUORUM write, hop by hop, from differences between workloads.

    PYTHONPATH=src .venv/bin/python bench/budget.py

Starts a local 3-node RF 3 cluster and a 3-node RF 1 cluster (LMDB, `--fsync
batch`) one after the other, and drives each with ``bench/compare.py``'s load
generator at ``--concurrency`` requests in flight, measuring the three node
processes' CPU (user and system, from ``/proc``) per completed request:

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

Beside them, the floor: three ``bench/bare_grpc.py`` servers, grpc.aio
answering empty messages and nothing else, driven the same way: a unary
answer, a stream of one (how a node answers a client, so that an unread
answer can be given up), and a unary answer from grpc's synchronous server on
``FLOOR_THREADS`` threads. No Python node's client call costs less; etcd's
whole replicated write is in ``bench/compare.py``'s CPU column.

Workloads alternate round by round (``--rounds``) and
medians are reported. A benchmark, not a test: the numbers move with the
machine's load.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import bare_grpc
from cluster import NODES, free_base_port, local_cluster, spawn, stop
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


RUNS = (
    ("ping", "ping", None),
    ("write-owner", "write", "owner"),
    ("write-any", "write", None),
)


def measure(
    replicas: int, runs: tuple[tuple[str, str, str | None], ...], args: argparse.Namespace
) -> dict[str, list[float]]:
    """CPU µs per request of each run, one sample per round."""
    samples: dict[str, list[float]] = {name: [] for name, _, _ in runs}
    workdir = Path(tempfile.mkdtemp(prefix="ringkv-bench-budget-"))
    try:
        with local_cluster(workdir, free_base_port(NODES), replicas=replicas) as cluster:
            system = with_ping(ringkv_system(cluster.addresses, [p.pid for p in cluster.processes]))
            with Progress(console=Console(stderr=True), transient=True) as progress:
                task = progress.add_task(f"RF {replicas}", total=args.rounds * len(runs))
                for round_ in range(args.rounds):
                    for name, workload, routing in runs:
                        route = owner_route(replicas) if routing == "owner" else None
                        run = asyncio.run(
                            drive(
                                system,
                                workload,
                                args.concurrency,
                                args.duration,
                                round_,
                                route=route,
                            )
                        )
                        if run.errors:
                            print(f"{name}: {run.errors} errors", file=sys.stderr)
                        samples[name].append(run.cpu_us_per_op)
                        progress.advance(task)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return samples


def measure_floor(
    args: argparse.Namespace, runs: dict[str, str], server_flags: list[str]
) -> dict[str, list[float]]:
    """CPU µs per call of three ``bench/bare_grpc.py`` servers started with
    ``server_flags``, for each of ``runs`` (name: method), one sample per round."""
    samples: dict[str, list[float]] = {name: [] for name in runs}
    workdir = Path(tempfile.mkdtemp(prefix="ringkv-bench-floor-"))
    base = free_base_port(NODES)
    server = str(Path(__file__).with_name("bare_grpc.py"))
    children: list[subprocess.Popen[bytes]] = []
    try:
        for index in range(NODES):
            line = [sys.executable, server, str(base + index), *server_flags]
            children.append(spawn(line, workdir / f"bare{index + 1}.log"))
        endpoints = [f"127.0.0.1:{base + index}" for index in range(NODES)]
        system = System("bare", endpoints, [c.pid for c in children], runs, lambda _w, _k: b"")
        with Progress(console=Console(stderr=True), transient=True) as progress:
            label = " ".join(["bare grpc", *server_flags])
            task = progress.add_task(label, total=args.rounds * len(runs))
            for round_ in range(args.rounds):
                for name in runs:
                    run = asyncio.run(drive(system, name, args.concurrency, args.duration, round_))
                    if run.errors:
                        print(f"bare {name}: {run.errors} errors", file=sys.stderr)
                    samples[name].append(run.cpu_us_per_op)
                    progress.advance(task)
    finally:
        stop(children)
        shutil.rmtree(workdir, ignore_errors=True)
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per run")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every run")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda signum, _: sys.exit(128 + signum))
    rf3 = {k: statistics.median(v) for k, v in measure(3, RUNS, args).items()}
    rf1 = {k: statistics.median(v) for k, v in measure(1, RUNS[1:2], args).items()}
    aio_runs = {"unary": bare_grpc.UNARY, "stream of one": bare_grpc.STREAM_OF_ONE}
    floor = {k: statistics.median(v) for k, v in measure_floor(args, aio_runs, []).items()}
    threaded_runs = {"unary": bare_grpc.UNARY}
    threaded = measure_floor(args, threaded_runs, ["--threads", str(FLOOR_THREADS)])
    threaded_unary = statistics.median(threaded["unary"])
    client_call = rf3["ping"]
    coordinate_and_commit = rf1["write-owner"] - client_call
    replica_writes = rf3["write-owner"] - rf1["write-owner"]
    forward = (rf3["write-any"] - rf3["write-owner"]) / FORWARDED_SHARE
    table = Table(
        title=f"node CPU of one QUORUM write (RF 3, 3 nodes, {args.concurrency} in flight), "
        f"medians of {args.rounds} rounds"
    )
    table.add_column("hop")
    table.add_column("µs, summed over the nodes", justify="right")
    table.add_column("measured as")
    rows = [
        ("the floor: a bare grpc.aio unary call", floor["unary"], "bench/bare_grpc.py"),
        (
            "the floor: a bare grpc.aio stream of one answer",
            floor["stream of one"],
            "bench/bare_grpc.py",
        ),
        (
            "the floor: a bare synchronous grpc unary call",
            threaded_unary,
            f"bench/bare_grpc.py --threads {FLOOR_THREADS}",
        ),
        ("the client call (grpc, gate, parsing)", client_call, "Ping"),
        (
            "coordinating and committing on the owner",
            coordinate_and_commit,
            "RF 1 owner write - Ping",
        ),
        ("two replica writes (both ends, both commits)", replica_writes, "RF 3 - RF 1 owner write"),
        ("a write sent to its owner", rf3["write-owner"], "RF 3 owner write"),
        ("one forwarding hop (per forwarded write)", forward, "(any - owner) / (2/3)"),
        ("a write from a client that does not know the ring", rf3["write-any"], "RF 3 round-robin"),
    ]
    for hop, micros, how in rows:
        table.add_row(hop, f"{micros:,.0f}", how)
    Console(width=None if sys.stdout.isatty() else 120).print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
