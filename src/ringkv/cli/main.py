"""The ``ringkv`` command."""

from __future__ import annotations

import importlib.metadata
import os
import signal
import sys
from collections.abc import Sequence

from ringkv.cli import (
    backup_commands,
    bench,
    check_command,
    cluster_commands,
    health_command,
    kv_commands,
    local_cluster,
    node_command,
    prefix_commands,
)
from ringkv.cli.args import ArgumentParser


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="ringkv", description="ringkv: a partitioned, replicated key-value store"
    )
    parser.add_argument("--version", action="version", version=f"ringkv {_version()}")
    commands = parser.add_subparsers(
        title="commands", required=True, metavar="COMMAND", parser_class=ArgumentParser
    )
    node_command.add_parser(commands)
    kv_commands.add_parsers(commands)
    prefix_commands.add_parsers(commands)
    local_cluster.add_parser(commands)
    cluster_commands.add_parser(commands)
    health_command.add_parser(commands)
    backup_commands.add_parsers(commands)
    bench.add_parser(commands)
    check_command.add_parser(commands)
    return parser


EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE
"""What a shell reports for a tool killed by SIGPIPE: not 1, which is "not found"."""


def _version() -> str:
    try:
        return importlib.metadata.version("ringkv")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree, not installed
        return "(not installed)"


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        code = args.handler(args)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader left (``ringkv get big --json | head``): end quietly, as a
        # Unix tool does, with nothing more written to the closed pipe.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = EXIT_BROKEN_PIPE
    sys.exit(code)
