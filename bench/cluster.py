"""YCSB workloads (A, B and C by default) against a local 3-node cluster with
replication factor 3.

Starts the seed's three ``ringkv node`` command lines on three consecutive
free ports with their data in a temporary directory, waits until each serves,
then runs ``ringkv bench --workload A,B,C --baseline --consistency quorum``
(``--workload`` and ``--consistency`` change those two) against all three
endpoints and prints its table and the exact command. The cluster is always
stopped (SIGTERM, then SIGKILL after a timeout) and the
data removed, on success, failure or Ctrl-C.

    PYTHONPATH=src .venv/bin/python bench/cluster.py --duration 5
    PYTHONPATH=src .venv/bin/python bench/cluster.py --workload A,F --consistency linearizable
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from ringkv.cli.local_cluster import node_command_lines, stop_processes
from ringkv.client.admin import cluster_state
from ringkv.client.health import wait_until_serving
from ringkv.core.errors import RingkvError

NODES = 3
REPLICAS = 3
STARTUP_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
# Below Linux's ephemeral range (32768-60999), where outgoing connections take ports.
PORT_RANGE = range(20_000, 32_000)


def free_base_port(count: int, attempts: int = 100) -> int:
    """A port p such that p..p+count-1 can all be bound on every interface now."""
    rng = random.Random()
    for _ in range(attempts):
        base = rng.randrange(PORT_RANGE.start, PORT_RANGE.stop - count)
        if all(_can_bind(base + offset) for offset in range(count)):
            return base
    raise SystemExit(f"no {count} consecutive free ports found in {PORT_RANGE}")


def cpu_seconds(pid: int) -> float:
    """User and system CPU a process has used, from ``/proc``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def _can_bind(port: int) -> bool:
    # The nodes listen on 0.0.0.0 (the seed's command lines), so check that.
    with socket.socket() as probe:
        try:
            probe.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    # The children import ringkv from this checkout even without an install.
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    return env


@dataclass(frozen=True)
class LocalCluster:
    addresses: list[str]
    processes: list[subprocess.Popen[bytes]]
    data_dir: Path


@contextlib.contextmanager
def local_cluster(
    workdir: Path, base_port: int, extra_flags: Sequence[str] = (), *, replicas: int = REPLICAS
) -> Iterator[LocalCluster]:
    """Run the cluster while the block runs (``extra_flags`` go to every node)."""
    lines = node_command_lines(
        NODES, base_port, replicas, workdir / "data", "lmdb", extra_flags=extra_flags
    )
    addresses = [f"127.0.0.1:{base_port + index}" for index in range(NODES)]
    logs = [workdir / f"node{index + 1}.log" for index in range(NODES)]
    children: list[subprocess.Popen[bytes]] = []
    try:
        for line, log_path in zip(lines, logs, strict=True):
            children.append(spawn(line, log_path))
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        for child, address, log_path in zip(children, addresses, logs, strict=True):
            if child.poll() is not None or not wait_until_serving(
                address, timeout=deadline - time.monotonic()
            ):
                tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-20:])
                raise SystemExit(f"the node at {address} did not start:\n{tail}")
        if not _agree_on_a_leader(addresses, deadline):
            raise SystemExit("the nodes did not agree on a leader and a member table in time")
        yield LocalCluster(addresses, children, workdir / "data")
    finally:
        stop(children)


def _agree_on_a_leader(addresses: Sequence[str], deadline: float) -> bool:
    """Wait until every node follows one leader on one member table: a node
    serves before it has heard from the others, and requests it coordinates
    on its provisional table (epoch 0) are refused by replicas on the real one."""
    while time.monotonic() < deadline:
        try:
            states = [cluster_state(address, timeout=2.0) for address in addresses]
        except RingkvError:
            states = []
        if (
            states
            and states[0].leader_id
            and states[0].epoch >= 1
            and all(
                (s.leader_id, s.epoch) == (states[0].leader_id, states[0].epoch) for s in states
            )
        ):
            return True
        time.sleep(0.1)
    return False


def spawn(line: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start a node process logging to ``log_path``."""
    with log_path.open("wb") as log:
        # A session of its own: Ctrl-C reaches this script, which then stops
        # the nodes in order, rather than every process at once.
        return subprocess.Popen(
            line, stdout=log, stderr=subprocess.STDOUT, env=_child_env(), start_new_session=True
        )


def stop(children: list[subprocess.Popen[bytes]]) -> None:
    # A second Ctrl-C (or a SIGTERM) must not cut the shutdown short and
    # leave nodes running; after it, the script that goes on (a benchmark
    # that starts the next cluster) can be stopped again.
    interrupt = signal.signal(signal.SIGINT, signal.SIG_IGN)
    terminate = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        stop_processes(children, STOP_TIMEOUT_S)
    finally:
        signal.signal(signal.SIGINT, interrupt)
        signal.signal(signal.SIGTERM, terminate)


def bench_command(addresses: list[str], args: argparse.Namespace) -> list[str]:
    """The ``ringkv bench`` command line this script runs."""
    return [
        sys.executable, "-m", "ringkv", "bench",
        "--endpoints", ",".join(addresses),
        "--workload", args.workload,
        "--baseline",
        "--consistency", args.consistency,
        "--duration", f"{args.duration:g}",
        "--records", str(args.records),
        "--concurrency", str(args.concurrency),
    ]  # fmt: skip


def _exit_on_sigterm(signum: int, _frame: FrameType | None) -> None:
    # Unwinds through the finally blocks, so the cluster still stops.
    raise SystemExit(128 + signum)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per workload")
    parser.add_argument("--workload", default="A,B,C", help="YCSB workloads, comma-separated")
    parser.add_argument(
        "--consistency", default="quorum", help="level of every request (F at linearizable: CAS)"
    )
    parser.add_argument("--records", type=int, default=10_000, help="records loaded")
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _exit_on_sigterm)

    workdir = Path(tempfile.mkdtemp(prefix="ringkv-bench-cluster-"))
    try:
        base_port = free_base_port(NODES)
        with local_cluster(workdir, base_port) as cluster:
            addresses = cluster.addresses
            print(f"cluster: {NODES} nodes, replication factor {REPLICAS}, {', '.join(addresses)}")
            command = bench_command(addresses, args)
            env = _child_env()
            shown = shlex.join(command)
            print(f"command: PYTHONPATH={shlex.quote(env['PYTHONPATH'])} {shown}", flush=True)
            return subprocess.run(command, env=env, check=False).returncode
    except KeyboardInterrupt:
        print("interrupted; the cluster is stopped", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
