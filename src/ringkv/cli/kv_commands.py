"""``ringkv get | set | del``: one request to a node, printed for people or as JSON."""

from __future__ import annotations

import argparse
import base64
import json
import sys
from typing import Any

from ringkv.cli.args import ArgumentParser, Commands, add_endpoint_option, security_from
from ringkv.client import Client, Entry
from ringkv.core.consistency import LEVEL_NAMES
from ringkv.core.errors import RingkvError

EXIT_NOT_FOUND = 1
EXIT_ERROR = 3


def add_parsers(commands: Commands) -> None:
    common = ArgumentParser(add_help=False)
    add_endpoint_option(common)
    common.add_argument("--consistency", choices=LEVEL_NAMES, help="default: the node's level")
    common.add_argument("--timeout", type=float, default=5.0, help="seconds (default: 5)")
    common.add_argument("--json", action="store_true", help="print one JSON object")

    get = commands.add_parser("get", parents=[common], help="read a key (exit 1 if absent)")
    get.add_argument("key")
    get.set_defaults(handler=get_command)

    put = commands.add_parser("set", parents=[common], help="write a key")
    put.add_argument("key")
    put.add_argument("value", nargs="?", help="the value (default: read from stdin)")
    put.add_argument("--ttl", type=float, help="seconds until the value expires")
    put.add_argument("--if-version", type=int, help="write only if the version is still this")
    put.add_argument("--if-absent", action="store_true", help="write only if the key is absent")
    put.set_defaults(handler=set_command)

    delete = commands.add_parser("del", parents=[common], help="delete a key")
    delete.add_argument("key")
    delete.add_argument("--if-version", type=int, help="delete only if the version is this")
    delete.set_defaults(handler=del_command)


def client_for(args: argparse.Namespace) -> Client:
    security = security_from(args)
    return Client(
        args.endpoints,
        timeout=args.timeout,
        tls_ca=security.tls_ca,
        tls_cert=security.tls_cert,
        tls_key=security.tls_key,
        token=security.token,
    )


def print_json(document: dict[str, Any]) -> None:
    """One JSON object on a line, flushed: a reader of a pipe (``ls``,
    ``watch``) sees each as it comes."""
    print(json.dumps(document, sort_keys=True), flush=True)


def value_fields(value: bytes) -> dict[str, str]:
    """A value as JSON text when it is UTF-8, else as base64."""
    try:
        return {"value": value.decode("utf-8")}
    except UnicodeDecodeError:
        return {"value_base64": base64.b64encode(value).decode("ascii")}


def fail(error: RingkvError) -> int:
    sys.stderr.write(f"ringkv: {error.reason}: {error.message}\n")
    return EXIT_ERROR


def get_command(args: argparse.Namespace) -> int:
    try:
        with client_for(args) as client:
            entry: Entry | None = client.get(args.key, consistency=args.consistency)
    except RingkvError as error:
        return fail(error)
    if args.json:
        document: dict[str, Any] = {"key": args.key, "found": entry is not None}
        if entry is not None:
            document |= value_fields(entry.value)
            document["version"] = entry.version
            if entry.expires_at_ms:
                document["expires_at_ms"] = entry.expires_at_ms
        print_json(document)
    elif entry is not None:
        # The exact bytes for pipes; a newline only for a person at a terminal.
        sys.stdout.buffer.write(entry.value + (b"\n" if sys.stdout.isatty() else b""))
        sys.stdout.flush()
    else:
        sys.stderr.write(f"ringkv: {args.key!r} not found\n")
    return 0 if entry is not None else EXIT_NOT_FOUND


def set_command(args: argparse.Namespace) -> int:
    value = args.value.encode() if args.value is not None else sys.stdin.buffer.read()
    try:
        with client_for(args) as client:
            version = client.set(
                args.key,
                value,
                ttl=args.ttl,
                if_version=args.if_version,
                if_absent=args.if_absent,
                consistency=args.consistency,
            )
    except RingkvError as error:
        return fail(error)
    if args.json:
        print_json({"key": args.key, "version": version})
    else:
        print(f"OK version={version}")
    return 0


def del_command(args: argparse.Namespace) -> int:
    try:
        with client_for(args) as client:
            found = client.delete(
                args.key, if_version=args.if_version, consistency=args.consistency
            )
    except RingkvError as error:
        return fail(error)
    if args.json:
        print_json({"key": args.key, "deleted": found})
    else:
        print("deleted" if found else "not found")
    return 0 if found else EXIT_NOT_FOUND
