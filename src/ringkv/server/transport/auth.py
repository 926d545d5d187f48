"""Who may call what: TLS credentials of the node, the channels it dials
other nodes with, and the one policy every call passes before its handler.

Three kinds of calls (``access_of``), each a role with a credential of its own:

- ``CLIENT``: ``kv.KeyValue`` and the read-only ``kv.Cluster`` calls. With
  ``--auth-token-file`` they need ``authorization: Bearer <client token>``.
- ``OPERATOR``: ``RemoveNode``, ``Repair``, ``ringkv.admin.Admin`` (backups).
  The operator token (``--operator-token-file``) or an operator certificate.
- ``MEMBER``: ``ringkv.internal.Replica``, ``ringkv.internal.Forward`` and
  the membership calls ``Heartbeat``, ``RequestVote``, ``Join``. The member
  token (``--member-token-file``) or a member certificate.

Roles are ranked: a member credential may make every call (nodes forward
client writes and relay removals to the leader), an operator credential
operator and client calls, a client credential client calls only. A
credential of a lower rank than the call is PERMISSION_DENIED; none, or a
wrong one, is UNAUTHENTICATED.

Certificates name their role in a URI subject alternative name,
``urn:ringkv:role:member`` or ``urn:ringkv:role:operator``, as SPIFFE ids
name a workload: the CA that signs members also signs operators, and a
certificate with neither URI is a client's. grpc puts the URIs of a verified
peer certificate in the call's auth context (``peer_uri``).

With ``--tls-ca`` a node listens on two ports, as Redis Cluster does with its
bus port: clients on the client port (TLS, no client certificate asked for),
members on the client port plus ``--peer-port-offset`` (mutual TLS: the
handshake requires a certificate the CA signed). Every node-to-node call goes
to the member port (``open_channel``). The split is needed because grpc's
Python server either requires and verifies client certificates or never asks
for one: one port could not both let clients in without a certificate and
tell members by theirs. The same handlers serve both ports, and the policy
decides by what the handshake verified, so a member call on the client port
is refused. With an offset of 0 everything shares one port and every caller
needs a certificate.
"""

from __future__ import annotations

import enum
import hmac
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from ringkv.api.bearer import AUTHORIZATION, BEARER_PREFIX, async_interceptors
from ringkv.api.member_port import member_address
from ringkv.api.roles import MEMBER_ROLE_URI, OPERATOR_ROLE_URI
from ringkv.core.errors import PermissionDenied, Unauthenticated
from ringkv.core.validation import LARGEST_MESSAGE_BYTES
from ringkv.server.config import NodeConfig, parse_tokens

CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_send_message_length", LARGEST_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", LARGEST_MESSAGE_BYTES),
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


class Access(enum.IntEnum):
    """A role, ranked: a credential of a role may make the calls of every role below it."""

    CLIENT = 1
    OPERATOR = 2
    MEMBER = 3


ROLE_URIS: dict[Access, str] = {
    Access.MEMBER: MEMBER_ROLE_URI,
    Access.OPERATOR: OPERATOR_ROLE_URI,
}
"""The URI subject alternative name that gives a certificate its role."""


_MEMBER_CALLS = frozenset({"Heartbeat", "RequestVote", "Join"})
_OPERATOR_CALLS = frozenset({"RemoveNode", "Repair"})


def access_of(service: str, method: str) -> Access:
    """The kind of caller ``service/method`` is for (the one table of the policy)."""
    if service.startswith("ringkv.internal."):  # Replica, Forward
        return Access.MEMBER
    if service == "ringkv.admin.Admin":
        return Access.OPERATOR
    if service == "kv.Cluster" and method in _MEMBER_CALLS:
        return Access.MEMBER
    if service == "kv.Cluster" and method in _OPERATOR_CALLS:
        return Access.OPERATOR
    return Access.CLIENT


@dataclass(frozen=True, slots=True)
class Tokens:
    """The bearer tokens each role is accepted with (none: not configured).
    A node sends the first member token on its own calls."""

    client: tuple[str, ...] = ()
    operator: tuple[str, ...] = ()
    member: tuple[str, ...] = ()

    def of(self, access: Access) -> tuple[str, ...]:
        return {
            Access.CLIENT: self.client,
            Access.OPERATOR: self.operator,
            Access.MEMBER: self.member,
        }[access]


@dataclass(frozen=True, slots=True)
class NodeSecurity:
    """The node's certificate, key, member CA and tokens, read once at start."""

    cert: bytes | None = None
    key: bytes | None = None
    ca: bytes | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    """Where ``cert`` and ``key`` came from: Python's ``ssl`` (the member link)
    loads a certificate chain from files only."""
    tokens: Tokens = Tokens()
    member_port_offset: int = 0
    """Added to a node's port to reach its member port; 0 when members share the client port."""

    @classmethod
    def load(cls, config: NodeConfig) -> NodeSecurity:
        def token(path: Path | None) -> tuple[str, ...]:
            return parse_tokens(path.read_bytes(), str(path)) if path is not None else ()

        return cls(
            cert=config.tls_cert.read_bytes() if config.tls_cert else None,
            key=config.tls_key.read_bytes() if config.tls_key else None,
            ca=config.tls_ca.read_bytes() if config.tls_ca else None,
            cert_file=config.tls_cert,
            key_file=config.tls_key,
            tokens=Tokens(
                client=token(config.auth_token_file),
                operator=token(config.operator_token_file),
                member=token(config.member_token_file),
            ),
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
        member token if any."""
        address = member_address(address, self.member_port_offset)
        interceptors = async_interceptors(self.tokens.member[0] if self.tokens.member else None)
        if not self.tls:
            return grpc.aio.insecure_channel(address, options=options, interceptors=interceptors)
        credentials = grpc.ssl_channel_credentials(
            root_certificates=self.ca, private_key=self.key, certificate_chain=self.cert
        )
        return grpc.aio.secure_channel(
            address, credentials, options=options, interceptors=interceptors
        )

    def policy(self) -> Policy:
        return Policy(self.tokens, member_certs=self.ca is not None)

    @property
    def link_token(self) -> bytes | None:
        """What a node sends in its member link hello: its member token, if any."""
        return (BEARER_PREFIX + self.tokens.member[0]).encode() if self.tokens.member else None

    def link_server_tls(self) -> ssl.SSLContext | None:
        """TLS for the member link's listener, as for the member port: a
        certificate the member CA signed is required when there is a CA."""
        if self.cert_file is None or self.key_file is None:
            return None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert_file, self.key_file)
        if self.ca is not None:
            context.load_verify_locations(cadata=self.ca.decode())
            context.verify_mode = ssl.CERT_REQUIRED
        return context

    def link_client_tls(self) -> ssl.SSLContext | None:
        """TLS for dialing another node's member link, as ``open_channel``
        dials its member port: the peer verified with the member CA (the
        system's roots without one), this node's certificate presented."""
        if self.cert_file is None or self.key_file is None:
            return None
        context = ssl.create_default_context(
            cadata=self.ca.decode() if self.ca is not None else None
        )
        if self.ca is not None:
            context.load_cert_chain(self.cert_file, self.key_file)
        return context


class Policy:
    """Checks one call's credentials against the role its method needs."""

    def __init__(self, tokens: Tokens, *, member_certs: bool) -> None:
        self._tokens = {
            (BEARER_PREFIX + token).encode(): access
            for access in Access
            for token in tokens.of(access)
        }
        self._member_certs = member_certs
        # Client calls are open unless a client token is set; the others are
        # open only when nothing at all is configured.
        self._clients_open = not tokens.client

    @property
    def open(self) -> bool:
        """Whether every call is allowed (no token, no member CA)."""
        return not self._tokens and not self._member_certs

    def check(self, access: Access, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        """Return if the caller may make a call of ``access``; else raise
        Unauthenticated (no valid credential) or PermissionDenied (one of a
        lower role)."""
        if self.open or (access is Access.CLIENT and self._clients_open):
            return
        self._judge(access, self._certificate_role(context), self._sent_token(context))

    def admit_member(self, sent_token: bytes | None, tls: ssl.SSLObject | None) -> None:
        """``check`` for a member link connection: ``sent_token`` from its
        hello (``authorization``'s value), ``tls`` the session that carried it."""
        if self.open:
            return
        role = None
        if self._member_certs and tls is not None:
            certificate = tls.getpeercert()
            if certificate:  # verified: the listener requires it when there is a CA
                names = certificate.get("subjectAltName", ())
                uris = {name[1] for name in names if isinstance(name, tuple) and name[0] == "URI"}
                role = max(
                    (a for a, uri in ROLE_URIS.items() if uri in uris), default=Access.CLIENT
                )
        self._judge(Access.MEMBER, role, sent_token)

    def _judge(self, access: Access, certificate_role: Access | None, sent: bytes | None) -> None:
        held = max(
            (role for role in (certificate_role, self._token_role(sent)) if role),
            default=None,
        )
        if held is not None and held >= access:
            return
        if held is not None:
            raise PermissionDenied(
                f"this call is for {access.name.lower()}s; the credential sent is a "
                f"{held.name.lower()}'s",
                reason=f"{access.name}_CREDENTIAL_REQUIRED",
            )
        if sent is not None:
            raise Unauthenticated("the token is not valid", reason="INVALID_TOKEN")
        if any(role >= access for role in self._tokens.values()):
            raise Unauthenticated(
                "this node requires a token: send authorization: Bearer <token>",
                reason="TOKEN_REQUIRED",
            )
        raise Unauthenticated(
            f"this call is for {access.name.lower()}s: make it on the member port with a "
            f"certificate the cluster's CA signed for the role ({ROLE_URIS[access]})",
            reason="CERTIFICATE_REQUIRED",
        )

    def _certificate_role(self, context: grpc.aio.ServicerContext[Any, Any]) -> Access | None:
        """The role a certificate the handshake verified grants; None without one."""
        if not self._member_certs or not _verified_certificate(context):
            return None
        uris = {uri.decode() for uri in context.auth_context().get("peer_uri", ())}
        return max((a for a, uri in ROLE_URIS.items() if uri in uris), default=Access.CLIENT)

    def _token_role(self, sent: bytes | None) -> Access | None:
        if sent is None:
            return None
        # Compare against every token, in constant time each, so that the
        # time taken does not tell which role a guess came close to.
        matches = [a for expected, a in self._tokens.items() if hmac.compare_digest(sent, expected)]
        return matches[0] if matches else None

    @staticmethod
    def _sent_token(context: grpc.aio.ServicerContext[Any, Any]) -> bytes | None:
        sent = [
            value for key, value in (context.invocation_metadata() or ()) if key == AUTHORIZATION
        ]
        if not sent:
            return None
        value = sent[-1]
        return value.encode() if isinstance(value, str) else value


def _verified_certificate(context: grpc.aio.ServicerContext[Any, Any]) -> bool:
    """Whether the TLS handshake verified a client certificate (grpc puts the
    peer's identity in the auth context only then)."""
    auth = context.auth_context()
    return bool(auth.get("x509_pem_cert") or auth.get("x509_common_name")) and bool(
        context.peer_identities()
    )
