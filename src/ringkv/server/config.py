"""A node's configuration: one typed, validated object built from its flags."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509

from ringkv.api.roles import MEMBER_ROLE_URI
from ringkv.core import validation
from ringkv.core.consistency import Consistency
from ringkv.core.errors import InvalidArgument
from ringkv.core.ring import DEFAULT_VNODES_PER_NODE
from ringkv.core.validation import DEFAULT_MAX_VALUE_BYTES, VALUE_BYTES_CEILING, Limits
from ringkv.storage import ENGINE_KINDS, FsyncMode
from ringkv.storage.engine import DEFAULT_CHANGE_LOG_ENTRIES

DEFAULT_MAX_CONCURRENT_CALLS = 1000
DEFAULT_MAX_UNSENT_ANSWER_MIB = 256
DEFAULT_ANSWER_SEND_TIMEOUT_S = 60.0

LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")


DEFAULT_PEER_PORT_OFFSET = 10000


class ConfigError(ValueError):
    """A configuration value is invalid; the message says which and why."""


@dataclass(frozen=True, slots=True)
class HostPort:
    """A network address as ``host:port``; an empty host means every interface."""

    host: str
    port: int

    @classmethod
    def parse(cls, text: str, *, what: str = "address", allow_port_zero: bool = False) -> HostPort:
        """Parse ``host:port``, ``[v6]:port`` or ``:port``.

        Port 0 (any free port) only where ``allow_port_zero``: a listen address.
        """
        host, sep, port_text = text.strip().rpartition(":")
        if not sep:
            raise ConfigError(f"{what} {text!r} is not host:port")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
            _check_ipv6(host, text, what)
        elif ":" in host:
            raise ConfigError(f"{what} {text!r}: write an IPv6 host in brackets, [{host}]:port")
        lowest = 0 if allow_port_zero else 1
        if (
            not (port_text.isascii() and port_text.isdigit())
            or not lowest <= int(port_text) < 65536
        ):
            raise ConfigError(f"{what} {text!r} has no valid port ({lowest}-65535)")
        if any(c.isspace() or c in "/,=@[]" for c in host):
            raise ConfigError(f"{what} {text!r} has an invalid host")
        return cls(host, int(port_text))

    @property
    def is_wildcard(self) -> bool:
        """Whether the host means every interface."""
        return self.host in ("", "0.0.0.0", "::")

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def _check_ipv6(host: str, text: str, what: str) -> None:
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        raise ConfigError(f"{what} {text!r} has an invalid IPv6 host") from None


@dataclass(frozen=True, slots=True)
class Peer:
    """Another member named on the command line."""

    node_id: str
    address: HostPort


def parse_peers(text: str, *, self_id: str) -> tuple[Peer, ...]:
    """Parse the seed's ``-peers``: comma-separated ``id=host:port`` or bare ``host:port``.

    A bare address is its own id, as in the seed.
    """
    peers: list[Peer] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        node_id, sep, address_text = item.rpartition("=")
        address = HostPort.parse(address_text, what="peer address")
        if not sep:
            node_id = str(address)
        validate_node_id(node_id)
        if address.is_wildcard:
            raise ConfigError(f"peer {item!r} needs a reachable host, not a wildcard")
        if node_id == self_id:
            raise ConfigError(f"peer {item!r} has this node's own id {self_id!r}")
        if any(peer.node_id == node_id for peer in peers):
            raise ConfigError(f"peer id {node_id!r} is named twice")
        peers.append(Peer(node_id, address))
    return tuple(peers)


def validate_node_id(node_id: str) -> str:
    """``validation.node_id`` for configuration: ConfigError when it is not one."""
    try:
        return validation.node_id(node_id)
    except InvalidArgument as error:
        raise ConfigError(error.message) from None


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """Everything a node needs to start."""

    node_id: str = "node1"
    listen: HostPort = field(default_factory=lambda: HostPort("", 50051))
    advertise: HostPort | None = None
    """The address other nodes and clients use; defaults to ``listen`` (127.0.0.1
    for a wildcard host)."""
    peers: tuple[Peer, ...] = ()
    replicas: int = 2
    engine: str = "lmdb"
    data_dir: Path | None = None
    """Where the lmdb engine keeps its files; defaults to ``./data/<node-id>``."""
    fsync: FsyncMode = FsyncMode.BATCH
    limits: Limits = field(default_factory=Limits)
    read_level: Consistency = Consistency.QUORUM
    write_level: Consistency = Consistency.QUORUM
    vnodes: int = DEFAULT_VNODES_PER_NODE
    """Virtual nodes per member on the ring."""
    request_timeout_s: float = 5.0
    """The longest a coordinated request may take, whatever the caller's deadline."""
    peer_timeout_s: float = 2.0
    """The deadline of one call to a peer."""
    hint_ttl_s: float = 3 * 3600.0
    """How long a stand-in keeps a hint for a node that stays down."""
    hint_replay_interval_s: float = 1.0
    """How often hints are offered to the nodes that are back."""
    heartbeat_interval_s: float = 1.0
    """How often the leader sends heartbeats."""
    election_timeout_s: float = 3.0
    """Silence from the leader after which an election starts; also how long
    a member may stay silent before the leader counts it dead."""
    dead_after_s: float = 60.0
    """How long a member may stay dead before the leader removes it."""
    joins_existing: bool = False
    """``--initial-cluster-state existing``: never found a cluster from the flags;
    wait until a seed answers with its table (a node whose seeds are down
    must not start a second cluster)."""
    anti_entropy_interval_s: float = 600.0
    """How often replicas compare Merkle trees; 0 for never (repair on demand only)."""
    tombstone_grace_s: float = 10 * 86400.0
    """How long tombstones are kept before they may be purged."""
    max_clock_offset_s: float = 0.5
    """How far this node's clock may be from a majority of its peers' before
    it stops stamping versions (ringkv.core.clock_offset); 0 turns the check off."""
    clock_offset_ms: int = 0
    """Added to the wall clock: lets tests give nodes skewed clocks."""
    log_format: str = "text"
    log_level: str = "info"
    shutdown_grace_s: float = 5.0
    max_concurrent_calls: int = DEFAULT_MAX_CONCURRENT_CALLS
    """Client and operator calls served at once; more are refused OVERLOADED."""
    max_unsent_answer_mib: int = DEFAULT_MAX_UNSENT_ANSWER_MIB
    """MiB of answers held for callers that have not read them; past it new
    client and operator calls are refused OVERLOADED."""
    answer_send_timeout_s: float = DEFAULT_ANSWER_SEND_TIMEOUT_S
    """How long a client or operator answer (each message of a stream but a
    watch's) waits for its caller to read it before the call is ended
    DEADLINE_EXCEEDED (ANSWER_NOT_READ), which frees it; 0: for good."""
    watch_log_entries: int = DEFAULT_CHANGE_LOG_ENTRIES
    """Changes the node keeps for watches that resume (``Engine.changes``); 0: none,
    and watches are refused."""
    metrics_addr: HostPort | None = None
    """Where Prometheus metrics are served over HTTP (``/metrics``); None for nowhere."""
    tls_cert: Path | None = None
    """PEM certificate (chain) the node serves TLS with and presents to peers."""
    tls_key: Path | None = None
    """PEM private key of ``tls_cert``."""
    tls_ca: Path | None = None
    """PEM CA that signs member certificates: peers' server certificates are
    verified with it, and member calls need a client certificate it signed."""
    peer_port_offset: int = DEFAULT_PEER_PORT_OFFSET
    """With ``tls_ca``: members talk on the client port plus this (mutual TLS
    there, server-only TLS on the client port), as Redis Cluster's bus port
    does; the same on every member. 0 puts everything on one port, where every
    caller needs a member certificate."""
    link_port: int | None = 0
    """Where members' replica reads and writes and forwarded writes arrive as
    frames on one connection per peer (``server/transport/link.py``), on the
    listen host: 0 for a free port above the kernel's ephemeral range (peers
    ask each node for its port), None for no link (this node then serves
    and sends those calls as gRPC calls on the member port)."""
    auth_token_file: Path | None = None
    """A file holding the bearer token clients must send."""
    operator_token_file: Path | None = None
    """A file holding the bearer token of operator calls (backups, repair, removal)."""
    member_token_file: Path | None = None
    """A file holding the bearer token members send each other."""

    def __post_init__(self) -> None:
        validate_node_id(self.node_id)
        if self.link_port is not None and not 0 <= self.link_port < 65536:
            raise ConfigError(f"--link-port must be 0-65535 or 'off', got {self.link_port}")
        if self.replicas < 1:
            raise ConfigError(f"replicas must be at least 1, got {self.replicas}")
        if self.engine not in ENGINE_KINDS:
            raise ConfigError(
                f"engine {self.engine!r} is unknown; choose from {', '.join(ENGINE_KINDS)}"
            )
        if self.log_format not in LOG_FORMATS:
            raise ConfigError(f"log format {self.log_format!r} is not one of {LOG_FORMATS}")
        if self.log_level not in LOG_LEVELS:
            raise ConfigError(f"log level {self.log_level!r} is not one of {LOG_LEVELS}")
        if not 0 < self.limits.max_value_bytes <= VALUE_BYTES_CEILING:
            raise ConfigError("max value bytes must be between 1 and 64 MiB")
        if Consistency.DEFAULT in (self.read_level, self.write_level):
            raise ConfigError("the default read and write levels must name a level")
        if not 1 <= self.vnodes <= 4096:
            raise ConfigError(f"vnodes must be between 1 and 4096, got {self.vnodes}")
        if self.request_timeout_s <= 0 or self.peer_timeout_s <= 0:
            raise ConfigError("timeouts must be positive")
        if self.hint_ttl_s <= 0 or self.hint_replay_interval_s <= 0:
            raise ConfigError("the hint TTL and replay interval must be positive")
        if self.heartbeat_interval_s <= 0 or self.election_timeout_s <= self.heartbeat_interval_s:
            raise ConfigError(
                "the election timeout must be longer than the heartbeat interval, "
                f"got {self.election_timeout_s} and {self.heartbeat_interval_s}"
            )
        if self.dead_after_s < self.election_timeout_s:
            raise ConfigError("--dead-after must be at least the election timeout")
        if self.joins_existing and not self.peers:
            raise ConfigError("--initial-cluster-state existing needs -peers to join through")
        if self.anti_entropy_interval_s < 0 or self.tombstone_grace_s < 0:
            raise ConfigError("the anti-entropy interval and tombstone grace must not be negative")
        if self.max_clock_offset_s < 0:
            raise ConfigError(
                f"--max-clock-offset must not be negative, got {self.max_clock_offset_s}"
            )
        if self.max_concurrent_calls < 1:
            raise ConfigError(
                f"--max-concurrent-calls must be at least 1, got {self.max_concurrent_calls}"
            )
        if self.answer_send_timeout_s < 0:
            raise ConfigError(
                f"--answer-send-timeout must not be negative, got {self.answer_send_timeout_s}"
            )
        if self.max_unsent_answer_mib < 1:
            raise ConfigError(
                f"--max-unsent-answer-mib must be at least 1, got {self.max_unsent_answer_mib}"
            )
        if self.watch_log_entries < 0:
            raise ConfigError(
                f"--watch-log-entries must not be negative, got {self.watch_log_entries}"
            )
        if self.shutdown_grace_s < 0:
            raise ConfigError("the shutdown grace period must not be negative")
        self._check_security()

    def _check_security(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("--tls-cert and --tls-key go together")
        if self.tls_ca is not None and self.tls_cert is None:
            raise ConfigError("--tls-ca needs --tls-cert and --tls-key")
        if self.member_listen is not None:
            if self.listen.port == 0:
                raise ConfigError(
                    "a member port (--tls-ca with a --peer-port-offset) needs a fixed -addr port"
                )
            for what, port in (
                ("-addr", self.listen.port),
                ("the advertised", self.advertised.port),
            ):
                if not 0 < port + self.peer_port_offset < 65536:
                    raise ConfigError(
                        f"{what} port {port} plus --peer-port-offset {self.peer_port_offset} "
                        "is not a port (1-65535)"
                    )
        tokens: dict[str, tuple[str, ...]] = {}
        for flag, path in (
            ("--tls-cert", self.tls_cert),
            ("--tls-key", self.tls_key),
            ("--tls-ca", self.tls_ca),
            ("--auth-token-file", self.auth_token_file),
            ("--operator-token-file", self.operator_token_file),
            ("--member-token-file", self.member_token_file),
        ):
            if path is None:
                continue
            try:
                content = path.read_bytes()
            except OSError as error:
                raise ConfigError(f"{flag} {path}: {error.strerror or error}") from None
            if flag.endswith("-token-file"):
                tokens[flag] = parse_tokens(content, f"{flag} {path}")
            elif b"-----BEGIN" not in content:
                raise ConfigError(f"{flag} {path} is not a PEM file")
        if self.tls_ca is not None and self.tls_cert is not None:
            _check_member_certificate(self.tls_cert)
        if len({t for held in tokens.values() for t in held}) < sum(map(len, tokens.values())):
            raise ConfigError(
                f"{' and '.join(tokens)} hold the same token: each role needs its own, or a "
                "client could make member calls"
            )
        if tokens and self.member_token_file is None and self.tls_ca is None:
            raise ConfigError(
                f"{next(iter(tokens))} protects clients and operators only: members need a "
                "credential of their own, --member-token-file (or --tls-ca with member "
                "certificates)"
            )

    @property
    def data_path(self) -> Path:
        """The data dir in effect."""
        return self.data_dir if self.data_dir is not None else Path("data") / self.node_id

    @property
    def advertised(self) -> HostPort:
        """The address this node tells others to reach it at."""
        if self.advertise is not None:
            return self.advertise
        if self.listen.is_wildcard:
            return HostPort("127.0.0.1", self.listen.port)
        return self.listen

    @property
    def bind_address(self) -> str:
        """The address gRPC binds to."""
        return str(HostPort(self.listen.host or "0.0.0.0", self.listen.port))

    @property
    def member_listen(self) -> HostPort | None:
        """Where members' calls are served, when not on the client port."""
        if self.tls_ca is None or self.peer_port_offset == 0:
            return None
        return HostPort(self.listen.host or "0.0.0.0", self.listen.port + self.peer_port_offset)


__all__ = [
    "DEFAULT_MAX_VALUE_BYTES",
    "DEFAULT_PEER_PORT_OFFSET",
    "ConfigError",
    "HostPort",
    "NodeConfig",
    "Peer",
    "parse_peers",
]


def parse_tokens(content: bytes, where: str) -> tuple[str, ...]:
    """The tokens of a token file: one per line, the first the one a node sends.

    More than one line lets a token be rotated without a moment when two
    nodes hold no token in common (docs/operations.md, "Rotating tokens").
    """
    tokens = tuple(line.strip() for line in content.splitlines() if line.strip())
    if not tokens or any(b < 0x21 or b > 0x7E for token in tokens for b in token):
        raise ConfigError(
            f"{where} must hold one token per line, each printable ASCII without spaces"
        )
    return tuple(token.decode() for token in tokens)


def _check_member_certificate(path: Path) -> None:
    """With a member CA, the node's own certificate must name the member role:
    its peers refuse member calls from any other."""
    try:
        certificate = x509.load_pem_x509_certificate(path.read_bytes())
    except ValueError as error:
        raise ConfigError(f"--tls-cert {path} is not a certificate: {error}") from None
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        uris: list[str] = []
    else:
        uris = names.value.get_values_for_type(x509.UniformResourceIdentifier)
    if MEMBER_ROLE_URI not in uris:
        raise ConfigError(
            f"--tls-cert {path} is not a member certificate: with --tls-ca it needs the "
            f"subject alternative name URI:{MEMBER_ROLE_URI}, or peers refuse its calls"
        )
