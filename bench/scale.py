"""Bulk load, repair and join at scale on a local 3-node cluster (RF 3, LMDB).

Loads ``--keys`` keys (``--value-bytes`` each) with MultiSet calls of
``--batch`` keys, ``--concurrency`` calls in flight; then runs one
anti-entropy round on every node with the replicas in sync (what
``ringkv cluster repair`` does), twice (the second finds the trees kept),
and once more after a tenth of the keys were written again (the kept trees
followed the writes);
then measures the nodes' CPU while idle for ``--idle-seconds``; then starts a
fourth node that joins and waits until it is a normal member. Reports the
load rate and the nodes' CPU per key loaded (summed over the three), the
nodes' RSS and disk, the repair time and the CPU it took, the idle CPU and
the join time, as a table and, with ``--json``, as JSON.
A node runs an anti-entropy round every ``--anti-entropy-interval`` (600 s):
its share of a core when idle is about ``repair_cpu_s`` / 3 / 600 plus
``idle_cpu_percent``. The cluster is always stopped and its data removed.

    PYTHONPATH=src .venv/bin/python bench/scale.py --keys 1000000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cluster import NODES, LocalCluster, cpu_seconds, free_base_port, local_cluster, spawn, stop
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

import ringkv
from ringkv.client.admin import RepairReport, cluster_state, repair
from ringkv.core.errors import RingkvError

JOIN_TIMEOUT_S = 1800.0
SETTLE_S = 2.0
"""After a load, for the writes still on their way to a third replica (QUORUM
answers after two) to land before a repair measures the trees."""
KIB = 1024


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * KIB
    return 0


def disk_bytes(path: Path) -> int:
    """Bytes the files under ``path`` take on disk (allocated blocks)."""
    return sum(f.stat().st_blocks * 512 for f in path.rglob("*") if f.is_file())


async def load(endpoints: Sequence[str], args: argparse.Namespace, keys: int) -> float:
    """Write the first ``keys`` keys (again); the seconds it took."""
    value = b"v" * args.value_bytes
    batches = range(0, keys, args.batch)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for first in batches:
        queue.put_nowait(first)
    retry = ringkv.RetryPolicy(attempts=20, initial_backoff_s=0.05, max_backoff_s=1.0)
    with Progress(
        TextColumn("load"), BarColumn(), TextColumn("{task.completed:,}/{task.total:,} keys"),
        TimeElapsedColumn(), console=Console(stderr=True), transient=True,
    ) as progress:  # fmt: skip
        task = progress.add_task("load", total=keys)
        async with ringkv.AsyncClient(list(endpoints), timeout=30.0, retry=retry) as client:

            async def worker() -> None:
                while not queue.empty():
                    first = queue.get_nowait()
                    batch = range(first, min(first + args.batch, keys))
                    await client.set_many({f"key/{i:08d}": value for i in batch})
                    progress.advance(task, len(batch))

            started = time.monotonic()
            await asyncio.gather(*(worker() for _ in range(args.concurrency)))
            return time.monotonic() - started


def wait_for_normal(address: str, node_id: str, timeout: float) -> float:
    """Seconds until ``node_id`` is a normal member in ``address``'s table."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            state = cluster_state(address, timeout=2.0)
        except RingkvError:
            state = None
        if state is not None and any(
            m.node_id == node_id and m.status == "normal" for m in state.members
        ):
            return time.monotonic() - started
        time.sleep(0.5)
    raise SystemExit(f"{node_id} did not become a normal member within {timeout:.0f} s")


def repair_all(cluster: LocalCluster) -> tuple[float, float, list[RepairReport]]:
    """One anti-entropy round on every node in turn: seconds, the nodes' CPU
    seconds, and the reports."""
    started = time.monotonic()
    cpu_before = sum(cpu_seconds(p.pid) for p in cluster.processes)
    reports = [repair(address, timeout=600.0) for address in cluster.addresses]
    cpu_s = sum(cpu_seconds(p.pid) for p in cluster.processes) - cpu_before
    return round(time.monotonic() - started, 1), round(cpu_s, 1), reports


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    base_port = free_base_port(NODES + 1)
    results: dict[str, Any] = {"keys": args.keys, "value_bytes": args.value_bytes}
    with local_cluster(workdir, base_port, shlex.split(args.ringkv_flags)) as cluster:
        cpu_before = sum(cpu_seconds(p.pid) for p in cluster.processes)
        seconds = asyncio.run(load(cluster.addresses, args, args.keys))
        load_cpu = sum(cpu_seconds(p.pid) for p in cluster.processes) - cpu_before
        results["load_seconds"] = round(seconds, 1)
        results["load_keys_per_s"] = round(args.keys / seconds)
        results["load_cpu_us_per_key"] = round(load_cpu / args.keys * 1e6)
        results["rss_mib"] = [round(rss_bytes(p.pid) / KIB**2) for p in cluster.processes]
        results["disk_mib"] = round(disk_bytes(cluster.data_dir) / KIB**2)
        if args.load_only:
            return results

        results["repair_seconds"], results["repair_cpu_s"], reports = repair_all(cluster)
        results["repair_failed"] = sorted({n for r in reports for n in r.failed})
        results["repair_leaves_differing"] = sum(r.leaves_differing for r in reports)
        # Again, with nothing written since: the nodes' kept trees answer.
        results["repair_again_seconds"], _, _ = repair_all(cluster)
        # A tenth of the keys written again: the kept trees follow the writes,
        # so this round scans nothing either.
        asyncio.run(load(cluster.addresses, args, args.keys // 10))
        time.sleep(SETTLE_S)
        seconds, cpu_s, reports = repair_all(cluster)
        results["repair_after_writes_seconds"] = seconds
        results["repair_after_writes_leaves_differing"] = sum(r.leaves_differing for r in reports)
        results["repair_after_writes_cpu_s"] = cpu_s

        cpu_before = sum(cpu_seconds(p.pid) for p in cluster.processes)
        time.sleep(args.idle_seconds)
        idle_cpu = sum(cpu_seconds(p.pid) for p in cluster.processes) - cpu_before
        results["idle_cpu_percent"] = round(100 * idle_cpu / NODES / args.idle_seconds, 2)

        joiner_port = base_port + NODES
        line = [
            sys.executable, "-m", "ringkv", "node", "-id", "node4",
            "-addr", f"127.0.0.1:{joiner_port}",
            "-peers", f"node1={cluster.addresses[0]}",
            "--data-dir", str(cluster.data_dir / "node4"),
            *shlex.split(args.ringkv_flags),
        ]  # fmt: skip
        joiner = spawn(line, workdir / "node4.log")
        try:
            results["join_seconds"] = round(
                wait_for_normal(cluster.addresses[0], "node4", JOIN_TIMEOUT_S), 1
            )
            results["disk_mib_after_join"] = round(disk_bytes(cluster.data_dir) / KIB**2)
        finally:
            stop([joiner])
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--value-bytes", type=int, default=100)
    parser.add_argument("--batch", type=int, default=100, help="keys per MultiSet")
    parser.add_argument("--concurrency", type=int, default=8, help="MultiSet calls in flight")
    parser.add_argument(
        "--idle-seconds", type=float, default=20.0, help="how long to measure idle CPU"
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument(
        "--ringkv-flags", default="", help='extra flags for every node, e.g. "--fsync never"'
    )
    parser.add_argument(
        "--load-only", action="store_true", help="stop after the load: no repair, idle or join"
    )
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda signum, _: sys.exit(128 + signum))
    workdir = Path(tempfile.mkdtemp(prefix="ringkv-bench-scale-"))
    try:
        results = run(args, workdir)
    except KeyboardInterrupt:
        print("interrupted; the cluster is stopped", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        print(json.dumps(results, indent=1))
        return 0
    table = Table(title=f"{args.keys:,} keys, 3 nodes, RF 3, LMDB")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for name, value in results.items():
        table.add_row(name, f"{value:,}" if isinstance(value, int) else str(value))
    Console().print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
