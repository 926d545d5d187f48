"""``ringkv ls | watch``: the keys under a prefix, and how they change, a line each."""

from __future__ import annotations

import argparse
import base64
from typing import Any

from ringkv.cli.args import ArgumentParser, Commands, add_endpoint_option
from ringkv.cli.kv_commands import client_for, fail, print_json, value_fields
from ringkv.client import KeyEntry, WatchEvent
from ringkv.core.errors import RingkvError

SCAN_LEVELS = ("one", "quorum", "all")
EXIT_INTERRUPTED = 130
"""128 + SIGINT, as a shell reports a command stopped with Ctrl-C."""


def add_parsers(commands: Commands) -> None:
    common = ArgumentParser(add_help=False)
    add_endpoint_option(common)
    common.add_argument("--timeout", type=float, default=5.0, help="seconds per call (default: 5)")
    common.add_argument("--json", action="store_true", help="print one JSON object per line")

    ls = commands.add_parser(
        "ls", parents=[common], help="list the keys under a prefix (in token order)"
    )
    ls.add_argument("prefix", nargs="?", default="", help="default: every key")
    ls.add_argument("--limit", type=_positive, help="list at most this many keys")
    ls.add_argument("--values", action="store_true", help="print each key's value too")
    ls.add_argument("--consistency", choices=SCAN_LEVELS, help="default: the node's level")
    ls.set_defaults(handler=ls_command)

    watch = commands.add_parser(
        "watch", parents=[common], help="print each change to keys under a prefix as it happens"
    )
    watch.add_argument("prefix", nargs="?", default="", help="default: every key")
    watch.add_argument(
        "--from",
        dest="from_version",
        type=_positive,
        help="start after this version: a resume_version printed with --json misses nothing; "
        "an event's version may skip changes to other keys not yet printed; default: now",
    )
    watch.add_argument("--count", type=_positive, help="stop after this many changes")
    watch.set_defaults(handler=watch_command)


def _positive(text: str) -> int:
    try:
        number = int(text)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return number


def _text(value: bytes) -> str:
    """A value for a person: its text when it is UTF-8, else ``base64:`` and its base64."""
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return "base64:" + base64.b64encode(value).decode("ascii")


def ls_command(args: argparse.Namespace) -> int:
    try:
        with client_for(args) as client:
            for entry in client.scan(
                args.prefix,
                limit=args.limit,
                keys_only=not args.values,
                consistency=args.consistency,
            ):
                _print_entry(entry, values=args.values, as_json=args.json)
    except RingkvError as error:
        return fail(error)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return 0


def watch_command(args: argparse.Namespace) -> int:
    try:
        with client_for(args) as client:
            events = client.watch(args.prefix, from_version=args.from_version or 0)
            for number, event in enumerate(events, start=1):
                _print_event(event, as_json=args.json)
                if number == args.count:
                    break
    except RingkvError as error:
        return fail(error)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return 0


def _print_event(event: WatchEvent, *, as_json: bool) -> None:
    if as_json:
        document: dict[str, Any] = {
            "key": event.key,
            "kind": event.kind,
            "version": event.version,
            "resume_version": event.resume_version,
        }
        if event.kind == "put":
            document |= value_fields(event.value)
        if event.expires_at_ms:
            document["expires_at_ms"] = event.expires_at_ms
        print_json(document)
    elif event.kind == "put":
        print(f"PUT {event.key} {_text(event.value)} version={event.version}", flush=True)
    else:
        print(f"DELETE {event.key} version={event.version}", flush=True)


def _print_entry(entry: KeyEntry, *, values: bool, as_json: bool) -> None:
    if as_json:
        document: dict[str, Any] = {"key": entry.key, "version": entry.version}
        if values:
            document |= value_fields(entry.value)
        if entry.expires_at_ms:
            document["expires_at_ms"] = entry.expires_at_ms
        print_json(document)
    elif values:
        print(f"{entry.key}\t{_text(entry.value)}", flush=True)
    else:
        print(entry.key, flush=True)
