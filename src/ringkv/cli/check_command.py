"""``ringkv check``: run a bounded workload against a live cluster and check its history.

The operator's fault test: a few client threads call the cluster for
``--duration`` seconds, every call is recorded, and the checkers of
``ringkv.core.checkers`` judge the history (linearizability of registers,
lost acknowledged writes, version order, lost conditional-write updates).
Faults are the operator's to cause meanwhile (kill a node, cut a link);
the command only watches what clients see.

Exit status: 0 when every checker holds, 1 when one is violated (the
shortest failing window is printed as a timeline), 3 when the cluster could
not be reached, 4 when a checker could not decide (the linearizability
search ran out of steps; raise ``--max-configurations``).
"""

from __future__ import annotations

import argparse
import secrets
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from ringkv.cli.args import Commands, add_endpoint_option, security_from
from ringkv.cli.check_workloads import (
    WORKLOADS,
    CallRecorder,
    RunLimits,
    WorkloadSpec,
    final_reads,
    open_client,
    run_workloads,
)
from ringkv.cli.output import stdout_console
from ringkv.core import linearizability
from ringkv.core.checkers import Analysis, RunEvidence, Status, analyse, timeline
from ringkv.core.errors import RingkvError
from ringkv.core.history import HistoryOp, dump_lines

EXIT_VIOLATION = 1
EXIT_ERROR = 3
EXIT_UNDECIDED = 4
LEVELS = ("one", "quorum", "all", "linearizable")
DEFAULT_KEYS = {"register": 3, "counter": 3, "writes": 100, "multiset": 100}


def add_parser(commands: Commands) -> None:
    parser = commands.add_parser(
        "check",
        help="run a bounded workload against a cluster and check its history",
        description="Run client threads against a live cluster for --duration seconds, "
        "record every call, and check the history: linearizability (register), lost "
        "acknowledged writes and version order (writes, multiset), lost conditional-write "
        "updates (counter). Exit 0 when every check holds, 1 on a violation, 3 when the "
        "cluster cannot be reached, 4 when a check could not decide.",
    )
    add_endpoint_option(parser)
    parser.add_argument("--workload", choices=WORKLOADS, default="register")
    parser.add_argument(
        "--level",
        choices=LEVELS,
        default=None,
        help="consistency level of every call (default: linearizable for register and "
        "counter, quorum for writes and multiset)",
    )
    parser.add_argument(
        "--duration", type=float, default=10.0, metavar="S", help="seconds to run (default: 10)"
    )
    parser.add_argument("--processes", type=int, default=4, help="concurrent clients (default: 4)")
    parser.add_argument(
        "--keys",
        type=int,
        default=None,
        help="keys the workload spreads over (default: 3 for register and counter, 100 else)",
    )
    parser.add_argument(
        "--max-calls",
        type=int,
        default=20_000,
        metavar="N",
        help="most calls per client, whatever the duration (default: 20000)",
    )
    parser.add_argument(
        "--op-timeout", type=float, default=3.0, metavar="S", help="deadline of one call (3)"
    )
    parser.add_argument(
        "--history", type=Path, metavar="FILE", help="write the history as JSON lines to FILE"
    )
    parser.add_argument("--seed", type=int, default=None, help="seed of the clients' choices")
    parser.add_argument(
        "--max-configurations",
        type=int,
        default=linearizability.DEFAULT_MAX_CONFIGURATIONS,
        metavar="N",
        help="steps the linearizability search may take per key before it gives up",
    )
    parser.set_defaults(handler=handle, parser=parser)


def handle(args: argparse.Namespace) -> int:
    parser: argparse.ArgumentParser = args.parser
    endpoints = [e.strip() for e in args.endpoints.split(",") if e.strip()]
    problems = [
        (not endpoints, "--endpoints is empty"),
        (args.duration <= 0, f"--duration must be positive, got {args.duration}"),
        (args.processes < 1, f"--processes must be at least 1, got {args.processes}"),
        (args.keys is not None and args.keys < 1, f"--keys must be at least 1, got {args.keys}"),
        (args.max_calls < 1, f"--max-calls must be at least 1, got {args.max_calls}"),
        (args.op_timeout <= 0, f"--op-timeout must be positive, got {args.op_timeout}"),
        (args.max_configurations < 1, "--max-configurations must be at least 1"),
    ]
    for failed, message in problems:
        if failed:
            parser.error(message)
    try:
        security = security_from(args)
    except RingkvError as error:
        parser.error(error.message)
    level = args.level or ("linearizable" if args.workload in ("register", "counter") else "quorum")
    seed = args.seed if args.seed is not None else secrets.randbelow(1 << 32)
    spec = WorkloadSpec(
        workload=args.workload,
        level=level,
        keys=args.keys or DEFAULT_KEYS[args.workload],
        processes=args.processes,
        # A fresh prefix per run: a run with the same seed must not meet old values.
        prefix=f"ringkv-check/{seed:08x}-{secrets.token_hex(4)}/",
    )
    try:
        with open_client(endpoints, 0, timeout=args.op_timeout, security=security) as client:
            client.ping()
    except RingkvError as error:
        sys.stderr.write(
            f"ringkv check: error: {args.endpoints}: {error.reason}: {error.message}\n"
        )
        return EXIT_ERROR

    err = Console(stderr=True)
    limits = RunLimits(args.duration, args.max_calls, args.op_timeout)
    recorder = CallRecorder()
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[calls]:>8,} calls"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    ) as progress:
        task = progress.add_task(f"{spec.workload} @{level}", total=args.duration, calls=0)
        history = _run_with_progress(
            lambda: run_workloads(
                endpoints, [spec], limits, recorder=recorder, seed=seed, security=security
            ),
            recorder,
            args.duration,
            progress,
            task,
        )
    final = final_reads(endpoints, spec.all_keys(), security=security)
    if args.history is not None:
        args.history.write_text("".join(line + "\n" for line in dump_lines(history)))
    register_keys = spec.all_keys() if spec.workload == "register" else None
    analysis = analyse(
        history,
        RunEvidence(final=final),
        register_keys=register_keys,
        max_configurations=args.max_configurations,
    )
    out = stdout_console()
    out.print(
        f"ringkv check: {spec.workload} @{level}, {args.processes} clients, {spec.keys} keys, "
        f"seed {seed}, {len(history):,} calls",
        markup=False,
        highlight=False,
    )
    print_analysis(out, analysis, history)
    for stopped in recorder.process_errors:
        out.print(f"client process stopped: {stopped}", markup=False, highlight=False)
    unread = len(spec.all_keys()) - len(final)
    if unread:
        out.print(
            f"{unread} key(s) could not be read at ALL at the end: not judged for lost writes",
            markup=False,
            highlight=False,
        )
    if args.history is not None:
        out.print(f"history: {args.history}", markup=False, highlight=False)
    if analysis.violated:
        return EXIT_VIOLATION
    if recorder.process_errors:
        return EXIT_ERROR
    return 0 if analysis.holds else EXIT_UNDECIDED


def _run_with_progress(
    run: Callable[[], list[HistoryOp]],
    recorder: CallRecorder,
    duration: float,
    progress: Progress,
    task: TaskID,
) -> list[HistoryOp]:
    """``run`` in a thread while this one keeps the progress bar moving."""
    outcome: list[list[HistoryOp] | BaseException] = []

    def target() -> None:
        try:
            outcome.append(run())
        except BaseException as error:  # handed to the caller's thread below
            outcome.append(error)

    runner = threading.Thread(target=target, name="check-workload", daemon=True)
    runner.start()
    while runner.is_alive():
        progress.update(task, completed=min(recorder.now(), duration), calls=recorder.count())
        runner.join(0.25)
    result = outcome[0]
    if isinstance(result, BaseException):
        raise result
    return result


def print_analysis(out: Console, analysis: Analysis, history: Sequence[HistoryOp]) -> None:
    """The verdict table, availability, and the shortest failing window as a timeline."""
    out.print(verdict_table(analysis))
    if analysis.violated:
        # Violations with calls to show first; among them the shortest window.
        worst = min(analysis.violations, key=lambda v: (not v.ops, v.window()[1] - v.window()[0]))
        out.print(
            f"\nshortest failing window ({worst.checker}, key {worst.key}): {worst.message}",
            markup=False,
            highlight=False,
        )
        for line in timeline(worst, history):
            out.print(line, markup=False, highlight=False)


def verdict_table(analysis: Analysis) -> Table:
    table = Table(title=None)
    table.add_column("check")
    table.add_column("verdict")
    table.add_column("checked", justify="right")
    table.add_column("violations", justify="right")
    table.add_column("note")
    colour = {Status.HOLDS: "green", Status.VIOLATED: "bold red", Status.UNKNOWN: "yellow"}
    for report in analysis.reports:
        table.add_row(
            report.name,
            f"[{colour[report.status]}]{report.status.value}[/]",
            f"{report.checked:,} {report.unit}",
            str(len(report.violations)),
            _shorten(report.note or (report.violations[0].message if report.violations else "")),
        )
    for row in analysis.availability:
        table.add_row(
            f"availability ({row.kind})",
            f"{row.ratio:.0%}",
            f"{row.calls:,} calls",
            "",
            f"{row.succeeded:,} succeeded",
        )
    return table


def _shorten(text: str, width: int = 100) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."
