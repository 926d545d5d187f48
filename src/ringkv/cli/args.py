"""Argument parsing that fails with one line and exit status 2."""

from __future__ import annotations

import argparse
import os
import sys
from typing import NoReturn, TypeAlias

from ringkv.client.channels import Security


class ArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line: ``ringkv node: error: ...``."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


Commands: TypeAlias = "argparse._SubParsersAction[ArgumentParser]"
"""Where each command module adds its subcommand parsers."""


DEFAULT_ENDPOINT = "127.0.0.1:50051"


def default_endpoints() -> str:
    return os.environ.get("RINGKV_ENDPOINTS", DEFAULT_ENDPOINT)


def endpoints_option(text: str) -> str:
    """``--endpoint``'s value: one or more ``host:port`` (``[v6]:port``),
    comma-separated; anything else is a usage error, not a failed call."""
    endpoints = [item.strip() for item in text.split(",") if item.strip()]
    if not endpoints:
        raise argparse.ArgumentTypeError("no endpoint given")
    for endpoint in endpoints:
        host, colon, port = endpoint.rpartition(":")
        valid_port = port.isascii() and port.isdigit() and 0 < int(port) < 65536
        if not colon or not host.strip("[]") or not valid_port:
            raise argparse.ArgumentTypeError(
                f"{endpoint!r} is not host:port (a port from 1 to 65535)"
            )
    return ",".join(endpoints)


def add_endpoint_option(parser: argparse.ArgumentParser) -> None:
    """``--endpoint``: where the command finds the cluster, and the security
    options to reach it with."""
    parser.add_argument(
        "--endpoint",
        "--endpoints",
        dest="endpoints",
        type=endpoints_option,
        default=default_endpoints(),
        help="host:port of one or more nodes, comma-separated "
        f"(default: $RINGKV_ENDPOINTS or {DEFAULT_ENDPOINT})",
    )
    add_security_options(parser)


def add_security_options(parser: argparse.ArgumentParser) -> None:
    """``--tls-ca``, ``--tls-cert``, ``--tls-key``, ``--token``: how to reach a
    node that serves TLS or wants a token."""
    parser.add_argument(
        "--tls-ca",
        metavar="FILE",
        default=os.environ.get("RINGKV_TLS_CA"),
        help="connect with TLS, verifying the nodes with this PEM CA (default: $RINGKV_TLS_CA)",
    )
    parser.add_argument(
        "--tls-cert",
        metavar="FILE",
        default=os.environ.get("RINGKV_TLS_CERT"),
        help="PEM client certificate, for the member port of nodes run with --tls-ca "
        "(default: $RINGKV_TLS_CERT)",
    )
    parser.add_argument(
        "--tls-key",
        metavar="FILE",
        default=os.environ.get("RINGKV_TLS_KEY"),
        help="PEM key of --tls-cert (default: $RINGKV_TLS_KEY)",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("RINGKV_TOKEN"),
        help="bearer token, for nodes run with --auth-token-file (default: $RINGKV_TOKEN)",
    )


def security_from(args: argparse.Namespace) -> Security:
    """The client credentials the options name (InvalidArgument if a file is unreadable)."""
    return Security.of(
        tls_ca=args.tls_ca, tls_cert=args.tls_cert, tls_key=args.tls_key, token=args.token
    )
