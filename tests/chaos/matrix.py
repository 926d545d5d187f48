"""The fault matrix: ``scripts/chaos --seeds N --duration S``.

Runs seeds ``--first`` .. ``--first + N - 1`` one after another (see
``tests.support.chaos``), prints one line per schedule and a summary, and
keeps the history, fault log and node logs of every failing schedule under
``--out``. Exit status 1 when any schedule found a violation, a crash or a
cluster that did not settle.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ringkv.cli.check_command import print_analysis
from ringkv.core.checkers import CheckerReport, Status
from tests.support.chaos import ScheduleResult, run_schedule, save_artifacts, scratch
from tests.support.nemesis import FAULT_KINDS


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/chaos", description=__doc__)
    parser.add_argument("--seeds", type=int, default=10, help="schedules to run (default: 10)")
    parser.add_argument("--first", type=int, default=1, help="first seed (default: 1)")
    parser.add_argument(
        "--duration", type=float, default=30.0, help="seconds of workload per schedule (30)"
    )
    parser.add_argument(
        "--faults",
        default=",".join(FAULT_KINDS),
        help=f"comma-separated fault kinds (default: all: {','.join(FAULT_KINDS)})",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("chaos-results"), help="where failing runs are kept"
    )
    parser.add_argument(
        "--node-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="an extra argument for every node, repeatable "
        "(e.g. --node-arg=--max-clock-offset --node-arg=0)",
    )
    parser.add_argument("--verbose", action="store_true", help="print every verdict table")
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.duration < 5:
        parser.error("--seeds must be at least 1 and --duration at least 5")
    args.kinds = [kind.strip() for kind in args.faults.split(",") if kind.strip()]
    unknown = set(args.kinds) - set(FAULT_KINDS)
    if unknown:
        parser.error(f"unknown fault kinds: {', '.join(sorted(unknown))}")
    return args


def schedule_line(result: ScheduleResult) -> str:
    analysis = result.analysis
    lin = analysis.report("linearizable")
    lost = analysis.report("lost-writes")
    cas = analysis.report("lost-cas")
    order = analysis.report("version-order")
    conv = analysis.report("convergence")
    leaders = analysis.report("single-leader")
    ok, calls = result.availability_under_faults()
    verdict = "FAIL" if result.violated() else "ok"
    if not result.violated() and not analysis.holds:
        verdict = "undecided"

    def count(report: CheckerReport | None) -> str:
        return "-" if report is None else str(len(report.violations))

    return (
        f"seed {result.seed:>4} {verdict:<9} faults {result.windows:>2} "
        f"(skipped {len(result.skipped)}), ops {len(result.history):>6}, "
        f"acked writes {result.acknowledged_writes:>5}, lost {count(lost)}, "
        f"non-linearizable keys {count(lin)}, lost CAS {count(cas)}, "
        f"order {count(order)}, divergent {count(conv)}, dual leaders {count(leaders)}, "
        f"crashes {len(result.crashes)}, availability {ok / calls if calls else 1:.0%}"
        + ("" if result.watch is None else f", {result.watch.line()}")
        + ("" if not result.problems else f"; {'; '.join(result.problems)}")
    )


def summary(results: list[ScheduleResult]) -> str:
    acked = sum(r.acknowledged_writes for r in results)
    lost = sum(_violations(r, "lost-writes") for r in results)
    keys = sum(_checked(r, "linearizable") for r in results)
    non_lin = sum(_violations(r, "linearizable") for r in results)
    cas = sum(_violations(r, "lost-cas") for r in results)
    order = sum(_violations(r, "version-order") for r in results)
    divergent = sum(_violations(r, "convergence") for r in results)
    dual = sum(_violations(r, "single-leader") for r in results)
    crashes = sum(len(r.crashes) for r in results)
    ok = sum(r.availability_under_faults()[0] for r in results)
    calls = sum(r.availability_under_faults()[1] for r in results)
    undecided = sum(
        1 for r in results for report in r.analysis.reports if report.status is Status.UNKNOWN
    )
    failing = [r.seed for r in results if r.violated()]
    watched = [r.watch for r in results if r.watch is not None]
    delivered = sum(w.acked_delivered for w in watched)
    watch_acked = sum(w.acked for w in watched)
    return (
        f"{len(results)} schedules: {lost:,} lost of {acked:,} acknowledged writes, "
        f"{non_lin}/{keys} non-linearizable keys, {cas} lost CAS updates, "
        f"{order} version-order violations, {divergent} divergent keys, "
        f"{dual} dual-leader intervals, {crashes} crashes, "
        f"{undecided} undecided checks, availability {ok / calls if calls else 1:.0%} under "
        f"faults; watches delivered {delivered:,} of {watch_acked:,} acknowledged writes "
        f"(every key's final version, in order); "
        f"failing seeds: {', '.join(map(str, failing)) or 'none'}"
    )


def _violations(result: ScheduleResult, name: str) -> int:
    report = result.analysis.report(name)
    return 0 if report is None else len(report.violations)


def _checked(result: ScheduleResult, name: str) -> int:
    report = result.analysis.report(name)
    return 0 if report is None else report.checked


def _exit_once(*_: object) -> None:
    """Exit on the first SIGTERM; ignore later ones, so cleanup can finish."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sys.exit(143)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so every lab, tmpfs and node is cleaned up.
    signal.signal(signal.SIGTERM, _exit_once)
    out = Console(width=None if sys.stdout.isatty() else 200)
    results: list[ScheduleResult] = []
    errors: list[int] = []
    started = time.monotonic()
    with (
        tempfile.TemporaryDirectory(prefix="ringkv-chaos-") as root,
        Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=out,
            transient=True,
            disable=not out.is_terminal,
        ) as progress,
    ):
        task = progress.add_task("schedules", total=args.seeds)
        for seed in range(args.first, args.first + args.seeds):
            progress.update(task, description=f"seed {seed}")
            with scratch(Path(root), seed) as workdir:
                try:
                    result = run_schedule(
                        seed, args.duration, workdir, kinds=args.kinds, node_args=args.node_arg
                    )
                except (KeyboardInterrupt, SystemExit):
                    raise
                except BaseException as error:  # pytest outcomes from the tmpfs helper too
                    errors.append(seed)
                    progress.console.print(
                        f"seed {seed:>4} ERROR     {type(error).__name__}: {error}",
                        markup=False,
                        highlight=False,
                    )
                    progress.advance(task)
                    continue
                line = schedule_line(result)
                if result.violated():
                    kept = save_artifacts(result, workdir, args.out)
                    line += f" -> {kept}"
            results.append(result)
            progress.console.print(line, markup=False, highlight=False)
            if args.verbose or result.analysis.violated:
                print_analysis(progress.console, result.analysis, result.history)
            progress.advance(task)
    out.print(summary(results), markup=False, highlight=False)
    if errors:
        out.print(f"seeds that could not run: {', '.join(map(str, errors))}", markup=False)
    out.print(f"({time.monotonic() - started:.0f} s)", markup=False, highlight=False)
    return 1 if errors or any(r.violated() for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
