"""``ringkv cluster status|remove|repair``: inspect the cluster, decommission a
member, run anti-entropy now."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from rich.console import Console
from rich.table import Table

from ringkv.cli.args import ArgumentParser, Commands, add_endpoint_option, security_from
from ringkv.cli.output import stdout_console
from ringkv.client.admin import NodeStats, cluster_state, node_stats, remove_node, repair
from ringkv.core.errors import RingkvError, Unauthenticated

EXIT_ERROR = 3


def add_parser(commands: Commands) -> None:
    cluster = commands.add_parser("cluster", help="inspect the cluster")
    actions = cluster.add_subparsers(
        title="actions", required=True, metavar="ACTION", parser_class=ArgumentParser
    )
    status = actions.add_parser("status", help="members, leader, epoch and key counts")
    add_endpoint_option(status)
    status.add_argument("--timeout", type=float, default=2.0, help="seconds per call")
    status.add_argument("--json", action="store_true", help="print one JSON object")
    status.set_defaults(handler=status_command)

    remove = actions.add_parser(
        "remove",
        help="decommission a member: its ranges move to the others, then it stops",
    )
    remove.add_argument("node", metavar="NODE", help="id of the member to remove")
    add_endpoint_option(remove)
    remove.add_argument("--timeout", type=float, default=10.0, help="seconds per call")
    remove.set_defaults(handler=remove_command)

    repair_parser = actions.add_parser(
        "repair",
        help="compare Merkle trees with the other replicas now and exchange what differs",
    )
    add_endpoint_option(repair_parser)
    repair_parser.add_argument("--timeout", type=float, default=300.0, help="seconds per node")
    repair_parser.set_defaults(handler=repair_command)


def remove_command(args: argparse.Namespace) -> int:
    try:
        epoch = remove_node(
            args.endpoints, args.node, timeout=args.timeout, security=security_from(args)
        )
    except RingkvError as error:
        Console(stderr=True).print(f"ringkv: {error.reason}: {error.message}")
        return EXIT_ERROR
    stdout_console().print(
        f"{args.node} is leaving (epoch {epoch}); its ranges are streaming to their new "
        "replicas. Follow it with: ringkv cluster status"
    )
    return 0


def repair_command(args: argparse.Namespace) -> int:
    """Every member runs one round against its replicas; a table of what each fixed."""
    try:
        security = security_from(args)
        state = cluster_state(args.endpoints, timeout=min(args.timeout, 5.0), security=security)
    except RingkvError as error:
        Console(stderr=True).print(f"ringkv: {error.reason}: {error.message}")
        return EXIT_ERROR
    table = Table(title="anti-entropy repair")
    columns = ("node", "peers", "leaves differing", "keys pulled", "keys pushed", "not compared")
    for column in columns:
        table.add_column(column, justify="left" if column in ("node", "not compared") else "right")
    failed = False
    for member in state.members:
        try:
            report = repair(
                state.operator_address(member, security), timeout=args.timeout, security=security
            )
        except Unauthenticated as error:
            # The same credentials go to every member: one line, not a table of refusals.
            Console(stderr=True).print(f"ringkv: {error.reason}: {error.message}")
            return EXIT_ERROR
        except RingkvError as error:
            failed = True
            table.add_row(member.node_id, f"[red]{error.reason}[/]", "", "", "", "")
            continue
        failed = failed or bool(report.failed)
        not_compared = [f"{node} (down)" for node in report.skipped] + [
            f"[red]{node} (failed)[/]" for node in report.failed
        ]
        table.add_row(
            member.node_id,
            str(report.peers),
            f"{report.leaves_differing:,}",
            f"{report.keys_pulled:,}",
            f"{report.keys_pushed:,}",
            ", ".join(not_compared),
        )
    stdout_console().print(table)
    return EXIT_ERROR if failed else 0


def status_command(args: argparse.Namespace) -> int:
    console = stdout_console()
    try:
        security = security_from(args)
        state = cluster_state(args.endpoints, timeout=args.timeout, security=security)
    except RingkvError as error:
        Console(stderr=True).print(f"ringkv: {error.reason}: {error.message}")
        return EXIT_ERROR
    stats: dict[str, NodeStats | str] = {}
    for member in state.members:
        try:
            stats[member.node_id] = node_stats(
                member.address, timeout=args.timeout, security=security
            )
        except RingkvError as error:
            stats[member.node_id] = error.reason
    if args.json:
        document = asdict(state) | {
            "stats": {
                node: asdict(item) if isinstance(item, NodeStats) else {"error": item}
                for node, item in stats.items()
            }
        }
        print(json.dumps(document, sort_keys=True))
        return 0
    table = Table(
        title=f"ringkv cluster (epoch {state.epoch}, term {state.term}, "
        f"{state.replicas} replicas, {state.vnodes} vnodes/node; "
        f"as seen by {state.answered_by})"
    )
    columns = ("node", "address", "state", "ring", "leader", "clock", "owns", "records", "bytes")
    for column in columns:
        table.add_column(
            column, justify="right" if column in ("owns", "records", "bytes") else "left"
        )
    for member in state.members:
        item = stats[member.node_id]
        records, size = (
            (f"{item.records:,}", f"{item.bytes_used:,}")
            if isinstance(item, NodeStats)
            else (f"[red]{item}[/]", "")
        )
        table.add_row(
            member.node_id,
            member.address,
            "[green]alive[/]" if member.state == "alive" else f"[red]{member.state}[/]",
            _ring_status(member.status, item),
            "*" if member.node_id == state.leader_id else "",
            _clock(item),
            f"{state.ownership.get(member.node_id, 0.0):.1%}",
            records,
            size,
        )
    console.print(table)
    return 0


def _clock(stats: NodeStats | str) -> str:
    """Whether the node may stamp writes, and its offset from its peers."""
    if not isinstance(stats, NodeStats) or not stats.clock_check:
        return ""
    text = f"{stats.clock_check} {stats.clock_offset_ms:+d} ms"
    return text if stats.clock_check == "within" else f"[red]{text}[/]"


def _ring_status(status: str, stats: NodeStats | str) -> str:
    """A member's place in the ring, with the progress of the ranges it pulls."""
    if not isinstance(stats, NodeStats) or stats.ranges_to_pull == 0:
        return status
    if stats.synced_epoch >= stats.epoch:
        return f"{status} (pulled {stats.records_pulled:,} records)"
    return (
        f"{status} (pulling {stats.ranges_pulled}/{stats.ranges_to_pull} ranges, "
        f"{stats.records_pulled:,} records)"
    )
