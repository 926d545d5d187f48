"""A flame graph of one ringkv node under write load (py-spy, native frames included).

    PYTHONPATH=src .venv/bin/python bench/flame.py --out docs/flame-write.svg

Starts the three-node cluster of ``bench/cluster.py`` (RF 3, LMDB), drives
QUORUM writes at ``--concurrency`` with ``bench/compare.py``'s load generator
(round-robin over the three nodes, as a client that does not know the ring),
and records node1 with ``py-spy record --native`` for ``--duration`` seconds.
Writes the SVG and prints the functions where most samples were taken (self
time, and with what they call). py-spy comes with the dev dependencies; it
needs root, or ptrace allowed, to read another process. Every process is
stopped on the way out.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from cluster import free_base_port, local_cluster
from compare import drive, ringkv_system
from rich.console import Console
from rich.table import Table


def top_functions(raw: Path, limit: int) -> Table:
    """The functions the event loop's thread spent its samples in, from py-spy's
    raw (collapsed) output. Other threads (grpc's pollers, the commit thread)
    mostly wait, and their waits would fill the list."""
    own: collections.Counter[str] = collections.Counter()
    under: collections.Counter[str] = collections.Counter()
    total = on_loop = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        count = int(count_text)
        total += count
        if "run_forever" not in stack:
            continue
        on_loop += count
        frames = stack.split(";")
        own[frames[-1]] += count
        for frame in set(frames):
            under[frame] += count
    table = Table(
        title=f"node1 under write load: {total:,} samples, {on_loop:,} on the event loop's thread"
    )
    table.add_column("function (file:line)")
    table.add_column("self % of the loop's", justify="right")
    table.add_column("with callees %", justify="right")
    for frame, count in own.most_common(limit):
        table.add_row(
            frame[:90], f"{100 * count / on_loop:.1f}", f"{100 * under[frame] / on_loop:.1f}"
        )
    return table


def _record_both(record: list[str], svg: Path, raw: Path, duration: int) -> None:
    for output, kind in ((svg, "flamegraph"), (raw, "raw")):
        subprocess.run(
            [*record, "--format", kind, "--output", str(output)],
            check=True,
            timeout=duration + 60,
            stdout=subprocess.DEVNULL,
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("flame-write.svg"), help="SVG to write")
    parser.add_argument("--duration", type=int, default=20, help="seconds recorded")
    parser.add_argument("--concurrency", type=int, default=64, help="writes in flight")
    parser.add_argument("--top", type=int, default=25, help="functions listed")
    args = parser.parse_args()
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        raise SystemExit("py-spy is not installed: scripts/bootstrap installs the dev tools")
    workdir = Path(tempfile.mkdtemp(prefix="ringkv-bench-flame-"))
    console = Console(width=None if sys.stdout.isatty() else 130)
    try:
        with local_cluster(workdir, free_base_port(3)) as cluster:
            system = ringkv_system(cluster.addresses, [p.pid for p in cluster.processes])
            node1 = cluster.processes[0].pid
            raw = workdir / "profile.txt"
            record = [py_spy, "record", "--native", "--pid", str(node1), "--rate", "100",
                      "--duration", str(args.duration)]  # fmt: skip
            # One recorder at a time (native stacks need the process stopped
            # while sampled): the flame graph, then the collapsed stacks.
            recorders = threading.Thread(
                target=_record_both,
                args=(record, args.out, raw, args.duration),
                daemon=True,
            )
            recorders.start()
            run = asyncio.run(drive(system, "write", args.concurrency, 2 * args.duration + 2, 1))
            recorders.join(timeout=60)
            console.print(
                f"while sampled: {run.throughput:,.0f} writes/s, p50 {run.p50_ms:.1f} ms, "
                f"p99 {run.p99_ms:.1f} ms, "
                f"{run.cpu_us_per_op:,.0f} µs of node CPU (3 nodes) per write, "
                f"{run.errors} errors"
            )
            console.print(top_functions(raw, args.top))
            console.print(f"flame graph: {args.out}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
