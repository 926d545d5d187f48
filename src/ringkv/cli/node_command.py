"""``ringkv node``: run a node. Accepts the seed's flags exactly (``-id node1``)
and GNU-style ones (``--id node1``, ``--id=node1``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ringkv.cli.args import Commands
from ringkv.core.consistency import LEVEL_NAMES, Consistency
from ringkv.core.errors import RingkvError
from ringkv.core.ring import DEFAULT_VNODES_PER_NODE
from ringkv.core.validation import DEFAULT_MAX_VALUE_BYTES, Limits
from ringkv.server.config import (
    DEFAULT_ANSWER_SEND_TIMEOUT_S,
    DEFAULT_MAX_CONCURRENT_CALLS,
    DEFAULT_MAX_UNSENT_ANSWER_MIB,
    DEFAULT_PEER_PORT_OFFSET,
    LOG_FORMATS,
    LOG_LEVELS,
    ConfigError,
    HostPort,
    NodeConfig,
    parse_peers,
)
from ringkv.server.logs import configure_logging
from ringkv.server.node import run
from ringkv.storage import ENGINE_KINDS, FsyncMode
from ringkv.storage.engine import DEFAULT_CHANGE_LOG_ENTRIES


def add_parser(commands: Commands) -> None:
    parser = commands.add_parser(
        "node",
        help="run a node",
        description="Run a ringkv node until SIGTERM or SIGINT.",
        allow_abbrev=False,
    )
    parser.add_argument("-id", "--id", default="node1", help="unique node id (default: node1)")
    parser.add_argument(
        "-addr", "--addr", default=":50051", help="listen address host:port (default: :50051)"
    )
    parser.add_argument(
        "-peers",
        "--peers",
        default="",
        help="comma-separated peers: id=host:port or host:port (default: none)",
    )
    parser.add_argument(
        "-replicas", "--replicas", type=int, default=2, help="replication factor (default: 2)"
    )
    parser.add_argument(
        "--advertise-addr",
        help="address other nodes and clients reach this node at (default: --addr, "
        "with 127.0.0.1 for a wildcard host)",
    )
    parser.add_argument("--engine", choices=ENGINE_KINDS, default="lmdb", help="storage engine")
    parser.add_argument("--data-dir", type=Path, help="data directory (default: ./data/<node-id>)")
    parser.add_argument(
        "--fsync",
        choices=[mode.value for mode in FsyncMode],
        default=FsyncMode.BATCH.value,
        help="when writes reach the disk before they are acknowledged (default: batch)",
    )
    parser.add_argument(
        "--max-value-bytes",
        type=int,
        default=DEFAULT_MAX_VALUE_BYTES,
        help=f"largest value accepted (default: {DEFAULT_MAX_VALUE_BYTES})",
    )
    parser.add_argument(
        "--read-level", choices=LEVEL_NAMES, default="quorum", help="default read consistency"
    )
    parser.add_argument(
        "--write-level", choices=LEVEL_NAMES, default="quorum", help="default write consistency"
    )
    parser.add_argument(
        "--vnodes",
        type=int,
        default=DEFAULT_VNODES_PER_NODE,
        help="virtual nodes per member, the same on every node "
        f"(default: {DEFAULT_VNODES_PER_NODE})",
    )
    parser.add_argument(
        "--request-timeout",
        type=float,
        default=5.0,
        help="longest a coordinated request may take, in seconds (default: 5)",
    )
    parser.add_argument(
        "--peer-timeout",
        type=float,
        default=2.0,
        help="deadline of one call to another node, in seconds (default: 2)",
    )
    parser.add_argument(
        "--hint-ttl",
        type=float,
        default=3 * 3600.0,
        help="seconds a hint for a down node is kept (default: 10800, 3 h)",
    )
    parser.add_argument(
        "--hint-replay-interval",
        type=float,
        default=1.0,
        help="seconds between offers of held hints to nodes that are back (default: 1)",
    )
    parser.add_argument(
        "--heartbeat-interval",
        type=float,
        default=1.0,
        help="seconds between the leader's heartbeats (default: 1)",
    )
    parser.add_argument(
        "--election-timeout",
        type=float,
        default=3.0,
        help="seconds without a leader's heartbeat before an election (default: 3)",
    )
    parser.add_argument(
        "--dead-after",
        type=float,
        default=60.0,
        help="seconds a member may stay dead before the leader removes it and its "
        "ranges are re-replicated (default: 60)",
    )
    parser.add_argument(
        "--initial-cluster-state",
        choices=("new", "existing"),
        default="new",
        help="new: with no seed answering, found the cluster from -peers after two "
        "heartbeat intervals (the seed's command lines); existing: never found one, "
        "wait for a seed and join its cluster, as etcd's flag (default: new)",
    )
    parser.add_argument(
        "--anti-entropy-interval",
        type=float,
        default=600.0,
        help="seconds between Merkle-tree comparisons with the other replicas; "
        "0 turns them off (default: 600)",
    )
    parser.add_argument(
        "--tombstone-grace",
        type=float,
        default=10 * 86400.0,
        help="seconds a tombstone is kept before it may be purged; run a repair "
        "more often than this (default: 864000, 10 days)",
    )
    parser.add_argument(
        "--max-clock-offset",
        type=float,
        default=0.5,
        metavar="S",
        help="seconds this node's clock may be from a majority of its peers' before it "
        "stops stamping writes and forwards them to another node; 0 turns the check "
        "off (default: 0.5)",
    )
    # For tests of clock skew only.
    parser.add_argument("--clock-offset-ms", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--log-format", choices=LOG_FORMATS, default="text")
    parser.add_argument("--log-level", choices=LOG_LEVELS, default="info")
    parser.add_argument(
        "--shutdown-grace",
        type=float,
        default=5.0,
        help="seconds in-flight requests get to finish on shutdown (default: 5)",
    )
    parser.add_argument(
        "--max-concurrent-calls",
        type=int,
        default=DEFAULT_MAX_CONCURRENT_CALLS,
        metavar="N",
        help="client and operator calls served at once; more are answered RESOURCE_EXHAUSTED "
        "(reason OVERLOADED), which clients back off on and retry "
        f"(default: {DEFAULT_MAX_CONCURRENT_CALLS})",
    )
    parser.add_argument(
        "--max-unsent-answer-mib",
        type=int,
        default=DEFAULT_MAX_UNSENT_ANSWER_MIB,
        metavar="MIB",
        help="MiB of answers held for callers that have not read them (slow readers); past "
        "it new client calls are answered RESOURCE_EXHAUSTED (reason OVERLOADED) "
        f"(default: {DEFAULT_MAX_UNSENT_ANSWER_MIB})",
    )
    parser.add_argument(
        "--answer-send-timeout",
        type=float,
        default=DEFAULT_ANSWER_SEND_TIMEOUT_S,
        metavar="SECONDS",
        help="how long an answer waits for its caller to read it before the call is ended "
        "DEADLINE_EXCEEDED (reason ANSWER_NOT_READ), freeing it; watches are not timed "
        f"(default: {DEFAULT_ANSWER_SEND_TIMEOUT_S:g})",
    )
    parser.add_argument(
        "--watch-log-entries",
        type=int,
        default=DEFAULT_CHANGE_LOG_ENTRIES,
        metavar="N",
        help="changes kept in the node's durable change log, from which watches resume "
        f"after a disconnect or a node failure; 0 turns watches off "
        f"(default: {DEFAULT_CHANGE_LOG_ENTRIES})",
    )
    parser.add_argument(
        "--metrics-addr",
        help="serve Prometheus metrics over HTTP at host:port/metrics; an empty host "
        "means all interfaces, port 0 a free port (default: off)",
    )
    parser.add_argument(
        "--tls-cert",
        type=Path,
        metavar="FILE",
        help="PEM certificate: serve TLS and present it to peers (with --tls-key)",
    )
    parser.add_argument("--tls-key", type=Path, metavar="FILE", help="PEM key of --tls-cert")
    parser.add_argument(
        "--tls-ca",
        type=Path,
        metavar="FILE",
        help="PEM CA of the members: peers are verified with it, and member calls need a "
        "client certificate it signed (mutual TLS on the member port)",
    )
    parser.add_argument(
        "--peer-port-offset",
        type=int,
        default=DEFAULT_PEER_PORT_OFFSET,
        metavar="N",
        help="with --tls-ca, members call each other on the -addr port plus N (mutual TLS) and "
        "clients need no certificate on -addr; the same on every member; 0 serves both on "
        f"-addr, where every caller needs a certificate (default: {DEFAULT_PEER_PORT_OFFSET})",
    )
    parser.add_argument(
        "--link-port",
        type=_link_port,
        default=0,
        metavar="PORT",
        help="port of the member link, where peers send replica reads and writes and "
        "forwarded writes as frames on one connection instead of gRPC calls (TLS and "
        "member credentials as on the member port); 0: a free port above the kernel's "
        "ephemeral range, which peers ask for; 'off': none, and this node's own calls go "
        "over gRPC (default: 0)",
    )
    parser.add_argument(
        "--auth-token-file",
        type=Path,
        metavar="FILE",
        help="clients must send 'authorization: Bearer <the token in FILE>'; needs a member "
        "credential (--member-token-file or --tls-ca)",
    )
    parser.add_argument(
        "--operator-token-file",
        type=Path,
        metavar="FILE",
        help="the token of operator calls (backup, repair, remove); a client token never works "
        "for them",
    )
    parser.add_argument(
        "--member-token-file",
        type=Path,
        metavar="FILE",
        help="the token members send each other (the same file on every member); it also works "
        "for operator and client calls",
    )
    parser.set_defaults(handler=handle, parser=parser)


def _link_port(text: str) -> int | None:
    if text == "off":
        return None
    if not (text.isascii() and text.isdigit()) or not 0 <= int(text) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (0-65535) or 'off'")
    return int(text)


def config_from(args: argparse.Namespace) -> NodeConfig:
    """The node configuration the parsed flags describe."""
    return NodeConfig(
        node_id=args.id,
        listen=HostPort.parse(args.addr, what="-addr", allow_port_zero=True),
        advertise=(
            HostPort.parse(args.advertise_addr, what="--advertise-addr")
            if args.advertise_addr
            else None
        ),
        peers=parse_peers(args.peers, self_id=args.id),
        replicas=args.replicas,
        engine=args.engine,
        data_dir=args.data_dir,
        fsync=FsyncMode(args.fsync),
        limits=Limits(max_value_bytes=args.max_value_bytes),
        read_level=Consistency.from_name(args.read_level),
        write_level=Consistency.from_name(args.write_level),
        vnodes=args.vnodes,
        request_timeout_s=args.request_timeout,
        peer_timeout_s=args.peer_timeout,
        hint_ttl_s=args.hint_ttl,
        hint_replay_interval_s=args.hint_replay_interval,
        heartbeat_interval_s=args.heartbeat_interval,
        election_timeout_s=args.election_timeout,
        dead_after_s=args.dead_after,
        joins_existing=args.initial_cluster_state == "existing",
        anti_entropy_interval_s=args.anti_entropy_interval,
        tombstone_grace_s=args.tombstone_grace,
        max_clock_offset_s=args.max_clock_offset,
        clock_offset_ms=args.clock_offset_ms,
        log_format=args.log_format,
        log_level=args.log_level,
        shutdown_grace_s=args.shutdown_grace,
        max_concurrent_calls=args.max_concurrent_calls,
        max_unsent_answer_mib=args.max_unsent_answer_mib,
        answer_send_timeout_s=args.answer_send_timeout,
        watch_log_entries=args.watch_log_entries,
        metrics_addr=(
            HostPort.parse(args.metrics_addr, what="--metrics-addr", allow_port_zero=True)
            if args.metrics_addr is not None
            else None
        ),
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_ca=args.tls_ca,
        peer_port_offset=args.peer_port_offset,
        link_port=args.link_port,
        auth_token_file=args.auth_token_file,
        operator_token_file=args.operator_token_file,
        member_token_file=args.member_token_file,
    )


def handle(args: argparse.Namespace) -> int:
    try:
        config = config_from(args)
    except ConfigError as error:
        args.parser.error(str(error))
    configure_logging(config.log_format, config.log_level, config.node_id)
    try:
        run(config)
    except RingkvError as error:
        sys.stderr.write(f"ringkv node: error: {error.message}\n")
        return 1
    return 0
