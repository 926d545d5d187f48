"""Who may call what: TLS credentials of the node, the channels it dials
other nodes with, and the one policy every call passes before its handler.

Three kinds of calls (``POLICY``):

- ``CLIENT``: ``kv.KeyValue`` and the read-only ``kv.Cluster`` calls. With
  ``--auth-token-file`` they need ``authorization: Bearer <token>`` (or a
  member certificate: nodes forward writes and ping each other).
- ``OPERATOR``: ``RemoveNode``, ``Repair``, ``ringkv.admin.Admin`` (backups).
  The token or a member certificate, once either is configured.
- ``MEMBER``: ``ringkv.internal.Replica`` and the membership calls
  ``Heartbeat``, ``RequestVote``, ``Join``. With ``--tls-ca`` only a caller
  whose client certificate that CA signed; with only a token, the token.

With ``--tls-ca`` a node listens on two ports, as Redis Cluster does with its
bus port: clients on the client port (TLS, no client certificate asked for),
members on the client port plus ``--peer-port-offset`` (mutual TLS: the
handshake requires a certificate the CA signed). Every node-to-node call goes
to the member port (``open_channel``). The split is needed because grpc's
Python server either requires and verifies client certificates or never asks
for one: one port could not both let clients in without a certificate and
tell members by theirs. The same handlers serve both ports, and the policy
decides by what the handshake verified (``x509_*`` entries of the auth
context), so a member call on the client port is refused with
UNAUTHENTICATED. With an offset of 0 everything shares one port and every
caller needs a member certificate.
"""

from __future__ import annotations

import enum
import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from ringkv.api.bearer import AUTHORIZATION, BEARER_PREFIX, async_interceptors
from ringkv.api.member_port import member_address
from ringkv.core.errors import Unauthenticated
from ringkv.server.config import NodeConfig

CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_send_message_length", 256 << 20),
    ("grpc.max_receive_message_length", 256 << 20),
    # Reconnect quickly after a peer comes back.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    # A connection whose peer vanished (a cut link drops packets, no reset
    # comes) is found dead within two seconds, under an election timeout,
    # instead of when TCP gives up: calls then fail fast and reconnect once
    # the link is back, so views reconverge soon after a heal.
    ("grpc.keepalive_time_ms", 1000),
    ("grpc.keepalive_timeout_ms", 1000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]
SERVER_KEEPALIVE_OPTIONS: list[tuple[str, Any]] = [
    # Let peers ping as often as CHANNEL_OPTIONS says, idle or not.
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 500),
    ("grpc.http2.max_ping_strikes", 0),
]
SIDE_CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    *CHANNEL_OPTIONS,
    # Channels to one address share their connection, and its reconnect
    # backoff, unless told otherwise: a side channel's failed call to a peer
    # that is still starting would hold back the data path's first call.
    ("grpc.use_local_subchannel_pool", 1),
]


class Access(enum.Enum):
    CLIENT = "client"
    OPERATOR = "operator"
    MEMBER = "member"


_MEMBER_CALLS = frozenset({"Heartbeat", "RequestVote", "Join"})
_OPERATOR_CALLS = frozenset({"RemoveNode", "Repair"})


def access_of(service: str, method: str) -> Access:
    """The kind of caller ``service/method`` is for (the one table of the policy)."""
    if service == "ringkv.internal.Replica":
        return Access.MEMBER
    if service == "ringkv.admin.Admin":
        return Access.OPERATOR
    if service == "kv.Cluster" and method in _MEMBER_CALLS:
        return Access.MEMBER
    if service == "kv.Cluster" and method in _OPERATOR_CALLS:
        return Access.OPERATOR
    return Access.CLIENT


@dataclass(frozen=True, slots=True)
class NodeSecurity:
    """The node's certificate, key, member CA and client token, read once at start."""

    cert: bytes | None = None
    key: bytes | None = None
    ca: bytes | None = None
    token: str | None = None
    member_port_offset: int = 0
    """Added to a node's port to reach its member port; 0 when members share the client port."""

    @classmethod
    def load(cls, config: NodeConfig) -> NodeSecurity:
        token = None
        if config.auth_token_file is not None:
            token = config.auth_token_file.read_text().strip()
        return cls(
            cert=config.tls_cert.read_bytes() if config.tls_cert else None,
            key=config.tls_key.read_bytes() if config.tls_key else None,
            ca=config.tls_ca.read_bytes() if config.tls_ca else None,
            token=token,
            member_port_offset=config.peer_port_offset if config.member_listen else 0,
        )

    @property
    def tls(self) -> bool:
        return self.cert is not None and self.key is not None

    def server_credentials(self) -> grpc.ServerCredentials | None:
        """TLS for the client port (client certificates required only when
        members share it); None for plaintext."""
        if self.cert is None or self.key is None:
            return None
        shared = self.ca is not None and self.member_port_offset == 0
        return grpc.ssl_server_credentials(
            [(self.key, self.cert)], root_certificates=self.ca, require_client_auth=shared
        )

    def member_credentials(self) -> grpc.ServerCredentials:
        """Mutual TLS for the member port."""
        if self.cert is None or self.key is None or self.ca is None:
            raise ValueError("a member port needs the node's certificate, key and CA")
        return grpc.ssl_server_credentials(
            [(self.key, self.cert)], root_certificates=self.ca, require_client_auth=True
        )

    def open_channel(
        self, address: str, options: Sequence[tuple[str, Any]] = CHANNEL_OPTIONS
    ) -> grpc.aio.Channel:
        """A channel to another node's member port: TLS (verified with the member
        CA, presenting this node's certificate) when the node serves TLS, and the
        token if any."""
        address = member_address(address, self.member_port_offset)
        interceptors = async_interceptors(self.token)
        if not self.tls:
            return grpc.aio.insecure_channel(address, options=options, interceptors=interceptors)
        credentials = grpc.ssl_channel_credentials(
            root_certificates=self.ca, private_key=self.key, certificate_chain=self.cert
        )
        return grpc.aio.secure_channel(
            address, credentials, options=options, interceptors=interceptors
        )

    def policy(self) -> Policy:
        return Policy(token=self.token, member_certs=self.ca is not None)


class Policy:
    """Checks one call's credentials against what its method needs."""

    def __init__(self, *, token: str | None, member_certs: bool) -> None:
        self._expected = (BEARER_PREFIX + token).encode() if token is not None else None
        self._member_certs = member_certs

    @property
    def open(self) -> bool:
        """Whether every call is allowed (no token, no member CA)."""
        return self._expected is None and not self._member_certs

    def check(self, access: Access, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        """Return if the caller may make a call of ``access``; else Unauthenticated."""
        if self.open:
            return
        if access is Access.MEMBER:
            if self._member_certs:
                if not _verified_certificate(context):
                    raise Unauthenticated(
                        "this call is for cluster members: make it on the member port "
                        "with a certificate signed by the cluster's CA",
                        reason="MEMBER_CERTIFICATE_REQUIRED",
                    )
                return
            self._check_token(context)
            return
        if self._member_certs and _verified_certificate(context):
            return
        if self._expected is None:
            if access is Access.CLIENT:
                return
            raise Unauthenticated(
                "this call is for operators: make it on the member port with a certificate "
                "signed by the cluster's CA",
                reason="CERTIFICATE_REQUIRED",
            )
        self._check_token(context)

    def _check_token(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        assert self._expected is not None
        sent = [
            value for key, value in (context.invocation_metadata() or ()) if key == AUTHORIZATION
        ]
        if not sent:
            raise Unauthenticated(
                "this node requires a token: send authorization: Bearer <token>",
                reason="TOKEN_REQUIRED",
            )
        value = sent[-1]
        given = value.encode() if isinstance(value, str) else value
        if not hmac.compare_digest(given, self._expected):
            raise Unauthenticated("the token is not valid", reason="INVALID_TOKEN")


def _verified_certificate(context: grpc.aio.ServicerContext[Any, Any]) -> bool:
    """Whether the TLS handshake verified a client certificate (grpc puts the
    peer's identity in the auth context only then)."""
    auth = context.auth_context()
    return bool(auth.get("x509_pem_cert") or auth.get("x509_common_name")) and bool(
        context.peer_identities()
    )
