"""A flame graph of one ringkv node under load (py-spy, native frames included).

    PYTHONPATH=src .venv/bin/python bench/flame.py --out docs/flame-write.svg

Starts the three-node cluster of ``bench/cluster.py`` (RF 3, LMDB), drives
QUORUM writes at ``--concurrency`` with ``bench/compare.py``'s load generator
(round-robin over the three nodes, as a client that does not know the ring),
and records node1 with ``py-spy record --native`` for ``--duration`` seconds.
Writes the SVG, then records again for the table of the functions where the
event loop's thread spent its samples (self time, and with what they call):
native stacks need the process stopped while sampled, so the two recordings
run one after the other, under the same load. py-spy comes with the dev dependencies; it
needs root, or ptrace allowed, to read another process. Every process is
stopped on the way out.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from types import FrameType

from cluster import free_base_port, local_cluster
from compare import READS, WORKLOADS, drive, preload, ringkv_system
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


class Recorders(threading.Thread):
    """The flame graph, then the collapsed stacks, each while the load runs."""

    def __init__(self, record: list[str], svg: Path, raw: Path, duration: int) -> None:
        super().__init__(daemon=True)
        self._record, self._svg, self._raw, self._duration = record, svg, raw, duration
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for output, kind in ((self._svg, "flamegraph"), (self._raw, "raw")):
                subprocess.run(
                    [*self._record, "--format", kind, "--output", str(output)],
                    check=True,
                    timeout=self._duration + 60,
                    stdout=subprocess.DEVNULL,
                )
        except BaseException as error:  # reported by main(), not lost in the thread
            self.error = error

    def finish(self, timeout_s: float) -> None:
        self.join(timeout=timeout_s)
        if self.is_alive():
            raise SystemExit("py-spy did not finish recording")
        if self.error is not None:
            raise SystemExit(f"py-spy failed (root, or ptrace allowed, is needed): {self.error}")


def _exit_on_sigterm(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks: all stops


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("flame-write.svg"), help="SVG to write")
    parser.add_argument("--duration", type=int, default=20, help="seconds recorded")
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight")
    parser.add_argument(
        "--workload", choices=WORKLOADS, default="write", help="what the load generator sends"
    )
    parser.add_argument("--top", type=int, default=25, help="functions listed")
    args = parser.parse_args()
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        raise SystemExit("py-spy is not installed: scripts/bootstrap installs the dev tools")
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
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
            recorders = Recorders(record, args.out, raw, args.duration)
            recorders.start()
            if args.workload in READS:
                asyncio.run(preload(system))
            run = asyncio.run(
                drive(system, args.workload, args.concurrency, 2 * args.duration + 2, 1)
            )
            recorders.finish(timeout_s=60)
            console.print(
                f"while sampled: {run.throughput:,.0f} {args.workload} ops/s, "
                f"p50 {run.p50_ms:.1f} ms, p99 {run.p99_ms:.1f} ms, "
                f"{run.cpu_us_per_op:,.0f} µs of node CPU (3 nodes) per operation, "
                f"{run.errors} errors"
            )
            console.print(top_functions(raw, args.top))
            console.print(f"flame graph: {args.out}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
