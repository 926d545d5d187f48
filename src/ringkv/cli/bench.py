"""``ringkv bench``: a YCSB-style benchmark of a running ringkv cluster.

Loads ``--records`` records, then runs each chosen YCSB workload for
``--warmup`` then ``--duration`` seconds from one asyncio event loop: one
``AsyncClient`` and ``--concurrency`` worker coroutines, each keeping one
request in flight. Prints throughput and latency percentiles per operation.

With ``--baseline`` a no-op run (every operation a Ping through the same
client path) comes first, and each workload's throughput is also given as a
ratio to it: on a shared, noisy machine that ratio is the number to quote.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ringkv.cli.args import Commands, add_endpoint_option, security_from
from ringkv.cli.output import stdout_console
from ringkv.cli.workloads import (
    WORKLOADS,
    Histogram,
    InsertCounter,
    KeyChooser,
    LatestGenerator,
    ScrambledZipfianGenerator,
    UniformGenerator,
    Workload,
)
from ringkv.client import AsyncClient
from ringkv.client.channels import PLAINTEXT, Security
from ringkv.core.consistency import LEVEL_NAMES
from ringkv.core.errors import RingkvError

EXIT_ERROR = 3
EXIT_INTERRUPTED = 130
DISTRIBUTIONS = ("zipfian", "uniform")
TARGETS = ("kv", "noop")
PERCENTILES = {"p50": 50.0, "p95": 95.0, "p99": 99.0, "p99.9": 99.9}
NOOP = "no-op"
_TICK_S = 0.2


@dataclass(frozen=True)
class BenchConfig:
    """Everything a benchmark run was asked to do."""

    endpoints: str
    workloads: tuple[str, ...]
    records: int
    value_size: int
    concurrency: int
    duration_s: float
    operations: int
    warmup_s: float
    consistency: str | None
    distribution: str
    seed: int
    load: bool
    load_timeout_s: float
    target: str
    baseline: bool
    cleanup: bool = False


@dataclass
class OperationStats:
    """What one kind of operation did in one phase."""

    latency_ns: Histogram = field(default_factory=Histogram)
    """Latencies of the operations that succeeded."""
    errors: Counter[str] = field(default_factory=Counter)
    """Failed operations by exception class name."""
    not_found: int = 0
    """Successful reads that found no value (not errors: a workload may race its inserts)."""

    def finished(self) -> int:
        """Operations that ended, successfully or not."""
        return self.latency_ns.count + self.errors.total()


@dataclass
class PhaseResult:
    """One timed stretch of operations against the cluster: the load, a workload, or no-op."""

    name: str
    target: str
    elapsed_ns: int = 0
    operations: dict[str, OperationStats] = field(default_factory=dict)

    def stats(self, operation: str) -> OperationStats:
        """The stats of one operation kind, created on first use."""
        stats = self.operations.get(operation)
        if stats is None:
            stats = self.operations[operation] = OperationStats()
        return stats

    def total(self) -> OperationStats:
        """Every operation kind together."""
        total = OperationStats()
        total.latency_ns.merge(stats.latency_ns for stats in self.operations.values())
        for stats in self.operations.values():
            total.errors.update(stats.errors)
            total.not_found += stats.not_found
        return total

    def finished(self) -> int:
        """Operations that ended, successfully or not."""
        return sum(stats.finished() for stats in self.operations.values())

    def rate(self, stats: OperationStats) -> float:
        """Successful operations per second over the phase."""
        return stats.latency_ns.count / (self.elapsed_ns / 1e9) if self.elapsed_ns else 0.0


@dataclass
class BenchReport:
    """The results of a whole run, in the order the phases ran."""

    event_loop: str
    load: PhaseResult | None = None
    baseline: PhaseResult | None = None
    workloads: list[PhaseResult] = field(default_factory=list)
    cleanup: PhaseResult | None = None

    def noop_ratio(self, result: PhaseResult) -> float | None:
        """A phase's throughput as a multiple of the no-op ceiling, when that was measured."""
        if self.baseline is None:
            return None
        ceiling = self.baseline.rate(self.baseline.total())
        return result.rate(result.total()) / ceiling if ceiling else None


def add_parser(commands: Commands) -> None:
    parser = commands.add_parser(
        "bench",
        help="run YCSB-style workloads against a cluster",
        description="Run YCSB core workloads against running nodes and report throughput and "
        "latency percentiles. A: 50% read / 50% update. B: 95% read / 5% update. "
        "C: 100% read. D: 95% read / 5% insert, reads skewed to the newest records. "
        "F: 50% read / 50% read-modify-write (a get, then a set of the modified value, "
        "counted as one operation).",
    )
    add_endpoint_option(parser)
    parser.add_argument(
        "--workload",
        action="append",
        type=_workload_names,
        metavar="A|B|C|D|F",
        help="workloads to run in order; repeat or comma-separate (default: A)",
    )
    parser.add_argument(
        "--records", type=int, default=10_000, help="records loaded and read (default: 10000)"
    )
    parser.add_argument(
        "--value-size", type=int, default=100, help="bytes per value (default: 100)"
    )
    parser.add_argument(
        "--concurrency", type=int, default=64, help="requests in flight (default: 64)"
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=10.0,
        help="seconds each workload is measured for; the load before them is bounded by "
        "--load-timeout, not by this (default: 10)",
    )
    parser.add_argument(
        "--operations",
        type=int,
        default=1_000_000_000,
        help="at most this many operations per workload and per warmup; a run stops at "
        "whichever of --duration and --operations comes first (default: 1000000000)",
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=1.0,
        help="seconds each workload runs unmeasured first (default: 1)",
    )
    parser.add_argument(
        "--consistency", choices=LEVEL_NAMES, help="level of every request (default: the node's)"
    )
    parser.add_argument(
        "--distribution",
        choices=DISTRIBUTIONS,
        default="zipfian",
        help="popularity of records for A, B, C and F: YCSB's scrambled Zipfian (constant "
        "0.99) or uniform (default: zipfian); D always prefers the newest",
    )
    parser.add_argument(
        "--seed", type=int, default=1, help="seed of every random choice (default: 1)"
    )
    parser.add_argument(
        "--load",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="insert the records before the workloads, with --target kv (default: on)",
    )
    parser.add_argument(
        "--load-timeout",
        type=float,
        default=300.0,
        help="seconds the load (and --cleanup) may take at most; --duration does not bound "
        "them (default: 300)",
    )
    parser.add_argument(
        "--cleanup",
        action="store_true",
        help="after the workloads, delete every record the run loaded, updated or inserted, "
        "and no other, with --target kv",
    )
    parser.add_argument(
        "--target",
        choices=TARGETS,
        default="kv",
        help="kv: real reads and writes; noop: every operation a Ping, the client's ceiling "
        "(default: kv)",
    )
    parser.add_argument(
        "--baseline",
        action="store_true",
        help="measure a no-op run first and give each workload's throughput as a ratio to it",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.set_defaults(handler=handle, parser=parser)


def _workload_names(text: str) -> list[str]:
    names = [name.strip().upper() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in WORKLOADS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown workload {text!r} (choose from {', '.join(WORKLOADS)})"
        )
    return names


def config_from(args: argparse.Namespace) -> BenchConfig:
    """The run the parsed flags describe; a bad value is a one-line usage error."""
    checks = [
        (args.records >= 1, "--records must be at least 1"),
        (args.value_size >= 0, "--value-size cannot be negative"),
        (args.concurrency >= 1, "--concurrency must be at least 1"),
        (args.duration > 0, "--duration must be positive"),
        (args.operations >= 1, "--operations must be at least 1"),
        (args.warmup >= 0, "--warmup cannot be negative"),
        (args.load_timeout > 0, "--load-timeout must be positive"),
        (any(part.strip() for part in args.endpoints.split(",")), "--endpoints is empty"),
    ]
    for ok, message in checks:
        if not ok:
            args.parser.error(message)
    chosen = [name for names in args.workload or [["A"]] for name in names]
    return BenchConfig(
        endpoints=args.endpoints,
        workloads=tuple(dict.fromkeys(chosen)),
        records=args.records,
        value_size=args.value_size,
        concurrency=args.concurrency,
        duration_s=args.duration,
        operations=args.operations,
        warmup_s=args.warmup,
        consistency=args.consistency,
        distribution=args.distribution,
        seed=args.seed,
        load=args.load,
        load_timeout_s=args.load_timeout,
        target=args.target,
        baseline=args.baseline,
        cleanup=args.cleanup,
    )


def handle(args: argparse.Namespace) -> int:
    config = config_from(args)
    try:
        security = security_from(args)
    except RingkvError as error:
        args.parser.error(error.message)
    loop_factory, event_loop = _event_loop_factory()
    console = Console(stderr=True)
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[done]:>10,} ops"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        refresh_per_second=4,
        # A bar in a log file or pipe is noise, and it would break one-line errors.
        disable=not console.is_terminal,
    )
    try:
        with progress, asyncio.Runner(loop_factory=loop_factory) as runner:
            report = runner.run(run_bench(config, progress, event_loop, security))
    except KeyboardInterrupt:
        sys.stderr.write("ringkv bench: interrupted\n")
        return EXIT_INTERRUPTED
    except RingkvError as error:
        sys.stderr.write(
            f"ringkv bench: error: {config.endpoints}: {error.reason}: {error.message}\n"
        )
        return EXIT_ERROR
    if args.json:
        print(json.dumps(report_document(config, report), indent=2))
    else:
        # Off a terminal rich assumes 80 columns and would squeeze the table.
        out = stdout_console()
        out.print(render_table(config, report))
        for line in _error_lines(report):
            out.print(line, markup=False, highlight=False)
    return 0


def _event_loop_factory() -> tuple[Callable[[], asyncio.AbstractEventLoop] | None, str]:
    """uvloop where it is installed (as the node uses), else asyncio's own loop."""
    try:
        import uvloop  # noqa: PLC0415 - optional on platforms without it
    except ImportError:  # pragma: no cover
        return None, "asyncio"
    return uvloop.new_event_loop, "uvloop"


async def run_bench(
    config: BenchConfig, progress: Progress, event_loop: str, security: Security = PLAINTEXT
) -> BenchReport:
    """Load, measure the no-op baseline if asked, then run each workload in turn.

    ``security``: TLS and token options, kept out of ``config`` (which is printed).
    """
    report = BenchReport(event_loop=event_loop)
    client = AsyncClient(
        config.endpoints,
        tls_ca=security.tls_ca,
        tls_cert=security.tls_cert,
        tls_key=security.tls_key,
        token=security.token,
    )
    async with client:
        # Fail fast, with the client's error, when no endpoint answers.
        await client.ping()
        requests = _Requests(client, config)
        inserted = InsertCounter(config.records)
        if config.load and config.target == "kv":
            report.load = await _load(requests, config, progress)
        noop = (requests.ping_step, ("ping",))
        if config.baseline:
            report.baseline = await _measure(NOOP, "noop", *noop, config=config, progress=progress)
        for name in config.workloads:
            workload = WORKLOADS[name]
            if config.target == "kv":
                driver = _WorkloadDriver(workload, requests, config, inserted)
                step, operations = driver.step, tuple(workload.mix)
            else:
                step, operations = noop
            result = await _measure(
                name, config.target, step, operations, config=config, progress=progress
            )
            report.workloads.append(result)
        if config.cleanup and config.target == "kv":
            report.cleanup = await _cleanup(requests, config, progress)
    return report


Step = Callable[[PhaseResult], Awaitable[None]]
"""One operation, chosen, sent and recorded into a phase's results."""


async def _run_phase(
    step: Step,
    result: PhaseResult,
    *,
    concurrency: int,
    seconds: float,
    limit: int,
    progress: Progress,
    count_total: int | None = None,
    label: str | None = None,
) -> None:
    """Run ``step`` from ``concurrency`` workers until ``seconds`` or ``limit`` steps.

    The bar follows the time, or with ``count_total`` the count of finished
    steps; it is labelled ``label``, or the phase's name.
    """
    issued = 0
    started = time.perf_counter_ns()
    deadline = started + int(seconds * 1e9)

    async def worker() -> None:
        nonlocal issued
        while issued < limit and time.perf_counter_ns() < deadline:
            issued += 1
            await step(result)

    task = progress.add_task(label or result.name, total=count_total or seconds, done=0)

    def show() -> None:
        done = result.finished()
        elapsed = (time.perf_counter_ns() - started) / 1e9
        progress.update(task, completed=done if count_total else min(elapsed, seconds), done=done)

    async def tick() -> None:
        while True:
            show()
            await asyncio.sleep(_TICK_S)

    ticker = asyncio.create_task(tick())
    try:
        async with asyncio.TaskGroup() as workers:
            for _ in range(concurrency):
                workers.create_task(worker())
    finally:
        ticker.cancel()
        result.elapsed_ns = time.perf_counter_ns() - started
        show()
        progress.remove_task(task)


async def _load(requests: _Requests, config: BenchConfig, progress: Progress) -> PhaseResult:
    """Insert records 0..records-1, each once."""
    result = PhaseResult("load", "kv")
    numbers = InsertCounter(0)

    async def insert(into: PhaseResult) -> None:
        await _timed(into, "insert", lambda: requests.insert(numbers.next()))

    await _run_phase(
        insert,
        result,
        concurrency=config.concurrency,
        seconds=config.load_timeout_s,
        limit=config.records,
        progress=progress,
        count_total=config.records,
        label=f"load (all {config.records:,} records; up to --load-timeout, not --duration)",
    )
    return result


async def _cleanup(requests: _Requests, config: BenchConfig, progress: Progress) -> PhaseResult:
    """Delete every record the run loaded, updated or inserted, and no other."""
    result = PhaseResult("cleanup", "kv")
    written = len(requests.written)
    numbers = iter(sorted(requests.written))

    async def delete(into: PhaseResult) -> None:
        await _timed(into, "delete", lambda: requests.delete(next(numbers)))

    await _run_phase(
        delete,
        result,
        concurrency=config.concurrency,
        seconds=config.load_timeout_s,
        limit=written,
        progress=progress,
        count_total=written,
        label=f"cleanup (deleting {written:,} records; up to --load-timeout)",
    )
    return result


async def _measure(
    name: str,
    target: str,
    step: Step,
    operations: Sequence[str],
    *,
    config: BenchConfig,
    progress: Progress,
) -> PhaseResult:
    """Warm up (results dropped), then measure one workload, whose ``operations`` are listed."""
    if config.warmup_s > 0:
        await _run_phase(
            step,
            PhaseResult(f"{name} warmup", target),
            concurrency=config.concurrency,
            seconds=config.warmup_s,
            limit=config.operations,
            progress=progress,
        )
    # Listed up front so rows come in the workload's order, and an operation too
    # rare to occur in a short run still shows up.
    result = PhaseResult(name, target, operations={op: OperationStats() for op in operations})
    await _run_phase(
        step,
        result,
        concurrency=config.concurrency,
        seconds=config.duration_s,
        limit=config.operations,
        progress=progress,
    )
    return result


async def _timed(result: PhaseResult, operation: str, call: Callable[[], Awaitable[bool]]) -> None:
    """Send one operation; record its latency, or its failure by exception class."""
    stats = result.stats(operation)
    started = time.perf_counter_ns()
    try:
        found = await call()
    except Exception as error:  # a failed operation is a result, never the end of the run
        stats.errors[type(error).__name__] += 1
        return
    stats.latency_ns.record(time.perf_counter_ns() - started)
    if not found:
        stats.not_found += 1


def record_key(number: int) -> str:
    """The key of record ``number`` (YCSB's naming)."""
    return f"user{number}"


class _Requests:
    """The requests a benchmark sends, through one client at one consistency level."""

    def __init__(self, client: AsyncClient, config: BenchConfig) -> None:
        self._client = client
        self._consistency = config.consistency
        self._value = random.Random(f"{config.seed}/value").randbytes(config.value_size)
        self.written: set[int] = set()
        """The records this run sent a write of (stored or maybe stored)."""

    async def read(self, number: int) -> bool:
        entry = await self._client.get(record_key(number), consistency=self._consistency)
        return entry is not None

    async def update(self, number: int) -> bool:
        self.written.add(number)
        await self._client.set(record_key(number), self._value, consistency=self._consistency)
        return True

    async def insert(self, number: int) -> bool:
        return await self.update(number)

    async def delete(self, number: int) -> bool:
        return await self._client.delete(record_key(number), consistency=self._consistency)

    async def read_modify_write(self, number: int) -> bool:
        key = record_key(number)
        entry = await self._client.get(key, consistency=self._consistency)
        # Modified: the first byte bumped, so the write depends on what was read,
        # and written only if the record is still what was read (compare-and-set;
        # a conflict counts as a PreconditionFailed error).
        value = entry.value if entry is not None else self._value
        value = bytes([(value[0] + 1) % 256]) + value[1:] if value else value
        self.written.add(number)
        await self._client.set(
            key,
            value,
            consistency=self._consistency,
            if_version=entry.version if entry is not None else None,
            if_absent=entry is None,
        )
        return entry is not None

    async def ping(self) -> bool:
        await self._client.ping()
        return True

    async def ping_step(self, result: PhaseResult) -> None:
        await _timed(result, "ping", self.ping)


class _WorkloadDriver:
    """Chooses each next operation and record of one workload, and sends it."""

    def __init__(
        self,
        workload: Workload,
        requests: _Requests,
        config: BenchConfig,
        inserted: InsertCounter,
    ) -> None:
        self._workload = workload
        self._requests = requests
        self._inserted = inserted
        # One generator per workload: a seed gives each workload the same
        # sequence whichever others run before it.
        self._rng = random.Random(f"{config.seed}/{workload.name}")
        self._keys: KeyChooser
        if workload.latest:
            self._keys = LatestGenerator(inserted, self._rng)
        elif config.distribution == "uniform":
            self._keys = UniformGenerator(config.records, self._rng)
        else:
            self._keys = ScrambledZipfianGenerator(config.records, self._rng)

    async def step(self, result: PhaseResult) -> None:
        operation = self._workload.choose(self._rng)
        requests = self._requests
        if operation == "insert":
            number = self._inserted.next()
            await _timed(result, operation, lambda: self._insert(number))
            return
        number = self._keys.next()
        call = {
            "read": requests.read,
            "update": requests.update,
            "rmw": requests.read_modify_write,
        }[operation]
        await _timed(result, operation, lambda: call(number))

    async def _insert(self, number: int) -> bool:
        try:
            return await self._requests.insert(number)
        finally:
            self._inserted.settle(number)


def _latency_ms(histogram: Histogram) -> dict[str, float] | None:
    if histogram.count == 0:
        return None
    values: dict[str, float] = {name: histogram.percentile(p) for name, p in PERCENTILES.items()}
    values |= {"mean": histogram.mean(), "max": histogram.max}
    return {name: round(value / 1e6, 4) for name, value in values.items()}


def _stats_document(result: PhaseResult, stats: OperationStats) -> dict[str, Any]:
    return {
        "ops": stats.latency_ns.count,
        "ops_per_s": round(result.rate(stats), 1),
        "latency_ms": _latency_ms(stats.latency_ns),
        "errors": dict(stats.errors),
        "error_count": stats.errors.total(),
        "not_found": stats.not_found,
    }


def _phase_document(result: PhaseResult) -> dict[str, Any]:
    return {
        "workload": result.name,
        "target": result.target,
        "elapsed_s": round(result.elapsed_ns / 1e9, 3),
        "operations": {
            name: _stats_document(result, stats) for name, stats in result.operations.items()
        },
        "total": _stats_document(result, result.total()),
    }


def report_document(config: BenchConfig, report: BenchReport) -> dict[str, Any]:
    """The whole run as one JSON-ready document (what ``--json`` prints)."""
    workloads = []
    for result in report.workloads:
        ratio = report.noop_ratio(result)
        workloads.append(_phase_document(result) | {"x_noop": _rounded(ratio)})
    return {
        "config": asdict(config),
        "event_loop": report.event_loop,
        "load": _phase_document(report.load) if report.load else None,
        "baseline": _phase_document(report.baseline) if report.baseline else None,
        "workloads": workloads,
        "cleanup": _phase_document(report.cleanup) if report.cleanup else None,
    }


def _rounded(ratio: float | None) -> float | None:
    return None if ratio is None else round(ratio, 4)


def render_table(config: BenchConfig, report: BenchReport) -> Table:
    """The run as a table: one row per operation, then a total row, per workload."""
    consistency = config.consistency or "node default"
    table = Table(
        title=f"ringkv bench: consistency {consistency}, {config.concurrency} in flight, "
        f"{config.records:,} records of {config.value_size} B, {config.distribution}, "
        f"{config.duration_s:g}s each",
        caption=_caption(config, report),
    )
    columns = ["workload", "operation", "ops/s", "p50 ms", "p95 ms", "p99 ms", "p99.9 ms"]
    columns += ["errors"] + (["x no-op"] if report.baseline else [])
    for column in columns:
        table.add_column(column, justify="left" if column in columns[:2] else "right")
    phases = [report.baseline] if report.baseline else []
    for result in [*phases, *report.workloads]:
        ratio = report.noop_ratio(result)
        rows = [(name, stats, "") for name, stats in result.operations.items()]
        rows.append(("total", result.total(), "" if ratio is None else f"{ratio:.2f}"))
        for index, (operation, stats, ratio_text) in enumerate(rows):
            label = result.name if index == 0 else ""
            cells = [label, operation, f"{result.rate(stats):,.0f}", *_latency_cells(stats)]
            cells.append(f"{stats.errors.total():,}")
            if report.baseline:
                cells.append(ratio_text)
            table.add_row(*cells, style="bold" if operation == "total" else None)
        table.add_section()
    return table


def _latency_cells(stats: OperationStats) -> list[str]:
    histogram = stats.latency_ns
    if histogram.count == 0:
        return ["-"] * len(PERCENTILES)
    return [f"{histogram.percentile(p) / 1e6:.2f}" for p in PERCENTILES.values()]


def _phase_line(result: PhaseResult, what: str) -> str:
    """One line on a load or cleanup: how many, how fast, how many failed."""
    total = result.total()
    return (
        f"{result.name}: {total.latency_ns.count:,} {what} in {result.elapsed_ns / 1e9:.1f}s "
        f"({result.rate(total):,.0f}/s), {total.errors.total():,} errors"
    )


def _caption(config: BenchConfig, report: BenchReport) -> str:
    lines = [
        f"endpoints {config.endpoints}",
        f"target {config.target}, {report.event_loop} event loop, seed {config.seed}",
    ]
    if report.load is not None:
        lines.append(_phase_line(report.load, f"of {config.records:,} records"))
    if report.cleanup is not None:
        lines.append(_phase_line(report.cleanup, "records deleted"))
    if report.baseline is not None:
        lines.append("x no-op: throughput as a multiple of Ping's, measured in the same run")
    return "\n".join(lines)


def _error_lines(report: BenchReport) -> list[str]:
    phases = [report.load, report.baseline, *report.workloads, report.cleanup]
    return [
        f"{result.name} {operation} errors: "
        + ", ".join(f"{kind} x{count}" for kind, count in stats.errors.most_common())
        for result in phases
        if result is not None
        for operation, stats in result.operations.items()
        if stats.errors
    ]
