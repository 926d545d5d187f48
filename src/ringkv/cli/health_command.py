"""``ringkv health``: whether one node reports SERVING on the gRPC health service.

Exit status 0 when it does, 1 when it does not (unreachable, NOT_SERVING, or
no answer in time), with one line on stderr either way. Made for container
health checks (the Dockerfile's ``HEALTHCHECK``) and for scripts that wait
for a node: ``ringkv health --endpoint node1:50051 --wait 60``.
"""

from __future__ import annotations

import argparse
import sys
import time

from ringkv.cli.args import (
    DEFAULT_ENDPOINT,
    Commands,
    add_security_options,
    default_endpoints,
    endpoints_option,
    security_from,
)
from ringkv.client.channels import Security
from ringkv.client.health import check
from ringkv.core.errors import RingkvError

EXIT_NOT_SERVING = 1
_POLL_INTERVAL_S = 0.2


def add_parser(commands: Commands) -> None:
    parser = commands.add_parser(
        "health",
        help="exit 0 if a node reports SERVING on the gRPC health service, else 1",
        description="Ask one node's gRPC health service (grpc.health.v1.Health/Check) "
        "whether it serves. Exit 0 if it reports SERVING, 1 otherwise.",
    )
    parser.add_argument(
        "--endpoint",
        type=endpoints_option,
        metavar="HOST:PORT",
        help=f"the node to ask (default: the first of $RINGKV_ENDPOINTS, or {DEFAULT_ENDPOINT})",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=2.0,
        metavar="S",
        help="seconds the check may take (default: 2)",
    )
    parser.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="S",
        help="keep asking for up to S seconds until the node serves (default: 0, ask once)",
    )
    parser.add_argument(
        "--service",
        default="",
        help='the health service name to ask about: "" (the node, default), '
        "kv.KeyValue or kv.Cluster",
    )
    add_security_options(parser)
    parser.set_defaults(handler=handle, parser=parser)


def handle(args: argparse.Namespace) -> int:
    if not args.timeout > 0:
        args.parser.error(f"--timeout must be positive, got {args.timeout}")
    if not args.wait >= 0:
        args.parser.error(f"--wait must not be negative, got {args.wait}")
    if args.endpoint is None:
        try:
            endpoint = endpoints_option(default_endpoints()).split(",")[0]
        except argparse.ArgumentTypeError as error:
            args.parser.error(f"$RINGKV_ENDPOINTS: {error}")
    elif "," in args.endpoint:
        args.parser.error(f"--endpoint takes one host:port, got {args.endpoint!r}")
    else:
        endpoint = args.endpoint
    try:
        security = security_from(args)
    except RingkvError as error:
        args.parser.error(error.message)
    what = f"{endpoint} ({args.service})" if args.service else endpoint
    if _serving(endpoint, args.service, timeout=args.timeout, wait=args.wait, security=security):
        sys.stderr.write(f"ringkv health: {what} is SERVING\n")
        return 0
    within = f"within {args.wait:g}s" if args.wait > 0 else f"in {args.timeout:g}s"
    sys.stderr.write(
        f"ringkv health: {what} is not serving: no SERVING answer {within} "
        "(unreachable, starting, NOT_SERVING or shutting down)\n"
    )
    return EXIT_NOT_SERVING


def _serving(
    endpoint: str, service: str, *, timeout: float, wait: float, security: Security
) -> bool:
    """Ask once, or until the node serves or ``wait`` seconds pass."""
    deadline = time.monotonic() + wait
    while True:
        if check(endpoint, service=service, timeout=timeout, security=security):
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(_POLL_INTERVAL_S, remaining))
