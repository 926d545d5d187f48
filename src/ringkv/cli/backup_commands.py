"""``ringkv backup`` and ``ringkv restore``: a consistent snapshot of one node's
store written to a file while the node serves, and loaded into a data dir
for a node to start on.

``backup --output FILE`` writes ``FILE`` (one LMDB data file) and its
manifest ``FILE.json`` (node id, record and hint counts, size, SHA-256).
``restore FILE --data-dir DIR`` checks both, then copies the file to
``DIR/data.mdb`` holding the lock a running node holds.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from ringkv.cli.args import Commands, add_endpoint_option, security_from
from ringkv.client.admin import backup
from ringkv.client.channels import endpoint_list
from ringkv.core.errors import RingkvError
from ringkv.storage.snapshot import Manifest, manifest_path, restore, write_manifest

EXIT_ERROR = 3


def add_parsers(commands: Commands) -> None:
    backup_parser = commands.add_parser(
        "backup",
        help="write a consistent snapshot of one node's store to a file while it serves",
        description="Write a consistent snapshot of one node's store (an LMDB copy) to "
        "FILE and its manifest to FILE.json, while the node serves.",
    )
    add_endpoint_option(backup_parser)
    backup_parser.add_argument(
        "--output", "-o", required=True, type=Path, metavar="FILE", help="the file to write"
    )
    backup_parser.add_argument(
        "--timeout", type=float, default=3600.0, help="seconds the whole backup may take"
    )
    backup_parser.set_defaults(handler=backup_command, parser=backup_parser)

    restore_parser = commands.add_parser(
        "restore",
        help="load a backup into a data dir (the node must not be running there)",
        description="Check a backup FILE (and FILE.json) and copy it into DIR/data.mdb, "
        "holding the data dir's lock.",
    )
    restore_parser.add_argument("file", type=Path, metavar="FILE", help="a file of ringkv backup")
    restore_parser.add_argument(
        "--data-dir", required=True, type=Path, metavar="DIR", help="the node's data dir"
    )
    restore_parser.add_argument(
        "--force",
        action="store_true",
        help="replace the data of a non-empty data dir (cluster.json stays)",
    )
    restore_parser.add_argument(
        "--node-id", metavar="ID", help="refuse a backup that was not taken from this node"
    )
    restore_parser.set_defaults(handler=restore_command)


def _fail(error: RingkvError) -> int:
    sys.stderr.write(f"ringkv: {error.reason}: {_one_line(error.message)}\n")
    return EXIT_ERROR


def _io_error(error: OSError) -> int:
    sys.stderr.write(f"ringkv: IO_ERROR: {_one_line(str(error))}\n")
    return EXIT_ERROR


def _one_line(text: str) -> str:
    return " ".join(text.split())


def backup_command(args: argparse.Namespace) -> int:
    try:
        endpoints = endpoint_list(args.endpoints)
    except ValueError:
        endpoints = []
    if len(endpoints) != 1:
        args.parser.error("backup copies one node: give one --endpoint host:port")
    endpoint = endpoints[0]
    output: Path = args.output
    stderr = Console(stderr=True)
    with Progress(
        TextColumn(f"backup of {escape(endpoint)}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=stderr,
        disable=not stderr.is_terminal,
    ) as bar:
        task = bar.add_task("backup", total=None)

        def on_progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        try:
            info = backup(
                endpoint,
                output,
                timeout=args.timeout,
                progress=on_progress,
                security=security_from(args),
            )
        except RingkvError as error:
            return _fail(error)
        except OSError as error:
            return _io_error(error)
    manifest = Manifest(
        node_id=info.node_id,
        records=info.records,
        hints=info.hints,
        size_bytes=info.size_bytes,
        sha256=info.sha256,
        created_at_ms=info.created_at_ms,
    )
    try:
        written = write_manifest(output, manifest)
    except OSError as error:
        output.unlink()  # a backup is the file and its manifest, or nothing
        return _io_error(error)
    print(
        f"{output}: backup of {info.node_id}, {info.records:,} records, {info.hints:,} hints, "
        f"{info.size_bytes:,} bytes, sha256 {info.sha256}; manifest {written}"
    )
    return 0


def restore_command(args: argparse.Namespace) -> int:
    try:
        report = restore(args.file, args.data_dir, force=args.force, node_id=args.node_id)
    except RingkvError as error:
        return _fail(error)
    except OSError as error:
        return _io_error(error)
    contents, manifest = report.contents, report.manifest
    if manifest is None:
        sys.stderr.write(
            f"ringkv: warning: no manifest {manifest_path(args.file)}: "
            "checked the LMDB structure only, not a checksum\n"
        )
        origin = "a backup"
    else:
        taken = datetime.fromtimestamp(manifest.created_at_ms / 1000, UTC)
        origin = f"the backup of {manifest.node_id} taken {taken:%Y-%m-%d %H:%M:%S} UTC"
    print(
        f"restored {origin} ({contents.records:,} records, {contents.hints:,} hints) "
        f"into {report.data_file}"
    )
    return 0
