"""Rough single-node throughput: set and get next to a no-op RPC (Ping).

Starts one ``ringkv node`` (LMDB, the chosen --fsync) on a free loopback port,
then drives it from this one process with an AsyncClient keeping
``--concurrency`` requests in flight. Every number is also given as a ratio to
Ping measured in the same run, since the machine is shared and noisy.

    .venv/bin/python bench/single_node.py --duration 5 --concurrency 64
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

import ringkv
from ringkv.client.health import wait_until_serving

Operation = Callable[[ringkv.AsyncClient, int], Awaitable[object]]


async def run_phase(
    client: ringkv.AsyncClient, op: Operation, concurrency: int, duration: float, limit: int
) -> tuple[int, list[float]]:
    latencies: list[float] = []
    deadline = time.monotonic() + duration
    issued = 0

    async def worker() -> None:
        nonlocal issued
        while time.monotonic() < deadline and issued < limit:
            issued += 1
            start = time.perf_counter()
            await op(client, issued)
            latencies.append(time.perf_counter() - start)

    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return len(latencies), [time.monotonic() - started, *latencies]


async def bench(address: str, args: argparse.Namespace) -> list[tuple[str, float, float, float]]:
    value = b"x" * args.value_size
    ops: dict[str, Operation] = {
        "ping (no-op)": lambda c, i: c.ping(),
        "set": lambda c, i: c.set(f"key{i % args.records}", value),
        "get": lambda c, i: c.get(f"key{i % args.records}"),
    }
    results = []
    async with ringkv.AsyncClient(address) as client:
        with Progress(console=Console(stderr=True), transient=True) as progress:
            for name, op in ops.items():
                progress.add_task(f"{name} for {args.duration}s", total=None)
                count, (elapsed, *latencies) = await run_phase(
                    client, op, args.concurrency, args.duration, args.max_ops
                )
                latencies.sort()
                p50 = statistics.median(latencies) * 1e3
                p99 = latencies[int(len(latencies) * 0.99) - 1] * 1e3
                results.append((name, count / elapsed, p50, p99))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per operation")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--value-size", type=int, default=100)
    parser.add_argument("--max-ops", type=int, default=2_000_000, help="bound per operation")
    parser.add_argument("--fsync", default="batch", choices=["always", "batch", "never"])
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="ringkv-bench-"))
    log = (workdir / "node.log").open("wb")
    node = subprocess.Popen(
        [sys.executable, "-m", "ringkv", "node", "-id", "bench", "-addr", "127.0.0.1:0",
         "--data-dir", str(workdir / "data"), "--fsync", args.fsync, "--log-format", "json"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        address = _wait_for_port(workdir / "node.log", node)
        if not wait_until_serving(address, timeout=30):
            raise SystemExit("the node did not start")
        results = asyncio.run(bench(address, args))
    finally:
        node.terminate()
        node.wait(timeout=30)
        log.close()
        shutil.rmtree(workdir, ignore_errors=True)

    baseline = results[0][1]
    table = Table(
        title=f"one node, fsync={args.fsync}, one client process, "
        f"{args.concurrency} in flight, {args.value_size}-byte values"
    )
    for column in ("operation", "ops/s", "x no-op", "p50 ms", "p99 ms"):
        table.add_column(column, justify="right")
    for name, rate, p50, p99 in results:
        table.add_row(name, f"{rate:,.0f}", f"{rate / baseline:.2f}", f"{p50:.2f}", f"{p99:.2f}")
    Console().print(table)


def _wait_for_port(log_path: Path, node: subprocess.Popen[bytes]) -> str:
    import json  # noqa: PLC0415

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and node.poll() is None:
        for line in log_path.read_text().splitlines():
            event = json.loads(line) if line.startswith("{") else {}
            if event.get("msg") == "serving":
                return f"127.0.0.1:{event['port']}"
        time.sleep(0.05)
    raise SystemExit(f"the node did not start:\n{log_path.read_text()}")


if __name__ == "__main__":
    main()
