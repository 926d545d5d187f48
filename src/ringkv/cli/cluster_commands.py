"""``ringkv cluster status``: the members, the leader, the ring and what each node stores."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from rich.console import Console
from rich.table import Table

from ringkv.cli.args import ArgumentParser, Commands, add_endpoint_option
from ringkv.client.admin import NodeStats, cluster_state, node_stats
from ringkv.core.errors import RingkvError

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


def status_command(args: argparse.Namespace) -> int:
    console = Console()
    try:
        state = cluster_state(args.endpoints, timeout=args.timeout)
    except RingkvError as error:
        Console(stderr=True).print(f"ringkv: {error.reason}: {error.message}")
        return EXIT_ERROR
    stats: dict[str, NodeStats | str] = {}
    for member in state.members:
        try:
            stats[member.node_id] = node_stats(member.address, timeout=args.timeout)
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
    for column in ("node", "address", "state", "leader", "owns", "records", "bytes"):
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
            "*" if member.node_id == state.leader_id else "",
            f"{state.ownership.get(member.node_id, 0.0):.1%}",
            records,
            size,
        )
    console.print(table)
    return 0
