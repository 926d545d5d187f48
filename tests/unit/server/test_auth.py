"""The call policy of ``server/transport/auth.py``, against fake call contexts."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest

from ringkv.api.member_port import member_address
from ringkv.api.roles import MEMBER_ROLE_URI, OPERATOR_ROLE_URI
from ringkv.core.errors import Unauthenticated
from ringkv.server.config import ConfigError, HostPort, NodeConfig
from ringkv.server.transport.auth import Access, NodeSecurity, Policy, Tokens, access_of
from tests.support.pki import CertificateAuthority


class FakeContext:
    def __init__(self, *, cert: str | None = None, token: str | None = None) -> None:
        """``cert``: the role URI of a verified certificate ("" for none), or None."""
        self._cert = cert
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()

    def auth_context(self) -> dict[str, list[bytes]]:
        base = {"transport_security_type": [b"ssl"]}
        if self._cert is None:
            return base
        uris = {"peer_uri": [self._cert.encode()]} if self._cert else {}
        return base | {"x509_common_name": [b"node2"]} | uris

    def peer_identities(self) -> list[bytes] | None:
        return [b"node2"] if self._cert is not None else None

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata


def refusal(policy: Policy, access: Access, **context: Any) -> str | None:
    """None if the call is allowed, else the reason it is refused with."""
    try:
        policy.check(access, FakeContext(**context))  # type: ignore[arg-type]
    except Unauthenticated as error:
        return error.reason
    return None


def allowed(policy: Policy, access: Access, **context: Any) -> bool:
    return refusal(policy, access, **context) is None


TOKENS = Tokens(client=("c",), operator=("o", "o2"), member=("m",))
CLIENT_CERT, OPERATOR_CERT, MEMBER_CERT = "", OPERATOR_ROLE_URI, MEMBER_ROLE_URI


def test_methods_are_classified_in_one_table() -> None:
    assert access_of("ringkv.internal.Replica", "Write") is Access.MEMBER
    assert access_of("ringkv.internal.Forward", "Writes") is Access.MEMBER
    assert access_of("kv.Cluster", "Heartbeat") is Access.MEMBER
    assert access_of("kv.Cluster", "RequestVote") is Access.MEMBER
    assert access_of("kv.Cluster", "Join") is Access.MEMBER
    assert access_of("kv.Cluster", "RemoveNode") is Access.OPERATOR
    assert access_of("kv.Cluster", "Repair") is Access.OPERATOR
    assert access_of("ringkv.admin.Admin", "Backup") is Access.OPERATOR
    assert access_of("kv.Cluster", "GetClusterState") is Access.CLIENT
    assert access_of("kv.KeyValue", "Set") is Access.CLIENT


@pytest.mark.parametrize("member_certs", [False, True])
def test_each_token_makes_the_calls_of_its_role_and_the_roles_below(member_certs: bool) -> None:
    policy = Policy(TOKENS, member_certs=member_certs)
    grants = {"c": Access.CLIENT, "o": Access.OPERATOR, "o2": Access.OPERATOR, "m": Access.MEMBER}
    for token, role in grants.items():
        for access in Access:
            reason = refusal(policy, access, token=token)
            if access <= role:
                assert reason is None, (token, access)
            else:
                assert reason == f"{access.name}_CREDENTIAL_REQUIRED", (token, access)
    for access in Access:
        assert refusal(policy, access, token="x") == "INVALID_TOKEN"
    assert refusal(policy, Access.CLIENT) == "TOKEN_REQUIRED"


def test_a_certificate_has_the_role_its_uri_names() -> None:
    policy = Policy(Tokens(client=("c",)), member_certs=True)
    assert allowed(policy, Access.MEMBER, cert=MEMBER_CERT)
    assert allowed(policy, Access.OPERATOR, cert=MEMBER_CERT)
    assert allowed(policy, Access.OPERATOR, cert=OPERATOR_CERT)
    assert refusal(policy, Access.MEMBER, cert=OPERATOR_CERT) == "MEMBER_CREDENTIAL_REQUIRED"
    assert refusal(policy, Access.OPERATOR, cert=CLIENT_CERT) == "OPERATOR_CREDENTIAL_REQUIRED"
    assert allowed(policy, Access.CLIENT, cert=CLIENT_CERT)
    # A client token never makes member or operator calls, with or without a certificate.
    assert refusal(policy, Access.MEMBER, token="c") == "MEMBER_CREDENTIAL_REQUIRED"
    assert refusal(policy, Access.OPERATOR, token="c") == "OPERATOR_CREDENTIAL_REQUIRED"
    # No credential at all: the refusal says which kind would do.
    assert refusal(policy, Access.MEMBER) == "CERTIFICATE_REQUIRED"
    assert refusal(policy, Access.CLIENT) == "TOKEN_REQUIRED"


def test_without_a_client_token_clients_are_open_and_the_rest_is_not() -> None:
    policy = Policy(Tokens(member=("m",)), member_certs=False)
    assert allowed(policy, Access.CLIENT)
    assert refusal(policy, Access.OPERATOR) == "TOKEN_REQUIRED"
    assert refusal(policy, Access.MEMBER, token="c") == "INVALID_TOKEN"
    assert allowed(policy, Access.OPERATOR, token="m")
    certs_only = Policy(Tokens(), member_certs=True)
    assert allowed(certs_only, Access.CLIENT)
    assert refusal(certs_only, Access.OPERATOR) == "CERTIFICATE_REQUIRED"
    assert allowed(certs_only, Access.OPERATOR, cert=OPERATOR_CERT)


def test_no_security_is_open() -> None:
    assert all(allowed(Policy(Tokens(), member_certs=False), access) for access in Access)


def test_config_checks_the_security_files(tmp_path: Path) -> None:
    ca = CertificateAuthority(tmp_path, "cluster")
    member = ca.issue("node1", role=MEMBER_ROLE_URI)
    pem = tmp_path / "c.pem"
    pem.write_text("-----BEGIN CERTIFICATE-----\n")
    with pytest.raises(ConfigError, match="go together"):
        NodeConfig(tls_cert=pem)
    with pytest.raises(ConfigError, match="needs --tls-cert"):
        NodeConfig(tls_ca=pem)
    with pytest.raises(ConfigError, match="--tls-key"):
        NodeConfig(tls_cert=pem, tls_key=tmp_path / "missing.key")
    not_pem = tmp_path / "k"
    not_pem.write_text("hello")
    with pytest.raises(ConfigError, match="not a PEM file"):
        NodeConfig(tls_cert=pem, tls_key=not_pem)
    with pytest.raises(ConfigError, match="is not a certificate"):
        NodeConfig(tls_cert=pem, tls_key=pem, tls_ca=ca.cert)
    # With a member CA the node's own certificate must name the member role.
    for other in (ca.issue("client"), ca.issue("ops", role=OPERATOR_ROLE_URI)):
        with pytest.raises(ConfigError, match="not a member certificate"):
            NodeConfig(tls_cert=other.cert, tls_key=other.key, tls_ca=ca.cert)
    tls = {"tls_cert": member.cert, "tls_key": member.key, "tls_ca": ca.cert}

    def token_file(name: str, content: str) -> Path:
        path = tmp_path / name
        path.write_text(content)
        return path

    with pytest.raises(ConfigError, match="one token per line"):
        NodeConfig(auth_token_file=token_file("blank", "  \n"))
    with pytest.raises(ConfigError, match="one token per line"):
        NodeConfig(auth_token_file=token_file("spaced", "a b\n"))
    client, operator, member_token = (
        token_file(name, f"{name}-secret\n") for name in ("client", "operator", "member")
    )
    # A client or operator token alone would leave member calls open.
    for flags in ({"auth_token_file": client}, {"operator_token_file": operator}):
        with pytest.raises(ConfigError, match="members need a credential of their own"):
            NodeConfig(**flags)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="hold the same token"):
        NodeConfig(
            auth_token_file=client, member_token_file=token_file("same", "new\nclient-secret\n")
        )
    # Two lines: the node sends the first and accepts both (a rotation in progress).
    rotating = token_file("rotating", "member-new\nmember-secret\n")
    config = NodeConfig(auth_token_file=client, member_token_file=rotating)
    assert NodeSecurity.load(config).tokens.member == ("member-new", "member-secret")
    assert NodeConfig(auth_token_file=client, operator_token_file=operator, **tls)  # type: ignore[arg-type]
    assert NodeConfig(
        auth_token_file=client, operator_token_file=operator, member_token_file=member_token
    )


def test_a_member_ca_puts_member_calls_on_the_port_plus_the_offset(tmp_path: Path) -> None:
    ca = CertificateAuthority(tmp_path, "cluster")
    member = ca.issue("node1", role=MEMBER_ROLE_URI)
    tls = functools.partial(NodeConfig, tls_cert=member.cert, tls_key=member.key)
    config = tls(listen=HostPort("", 50051), tls_ca=ca.cert)
    assert config.member_listen == HostPort("0.0.0.0", 60051)
    assert NodeSecurity.load(config).member_port_offset == 10000
    # Without a member CA, or with an offset of 0, members share the client port.
    for shared in (
        tls(listen=HostPort("", 50051)),
        tls(listen=HostPort("", 50051), tls_ca=ca.cert, peer_port_offset=0),
    ):
        assert shared.member_listen is None
        assert NodeSecurity.load(shared).member_port_offset == 0
    with pytest.raises(ConfigError, match="fixed -addr port"):
        tls(listen=HostPort("", 0), tls_ca=ca.cert)
    with pytest.raises(ConfigError, match="is not a port"):
        tls(listen=HostPort("", 60000), tls_ca=ca.cert)
    with pytest.raises(ConfigError, match="advertised port 1"):
        tls(advertise=HostPort("n1", 1), tls_ca=ca.cert, peer_port_offset=-2)


@pytest.mark.parametrize(
    ("address", "offset", "expected"),
    [
        ("node1:50051", 10000, "node1:60051"),
        ("[::1]:50051", -20000, "[::1]:30051"),
        ("10.0.0.1:50051", 0, "10.0.0.1:50051"),
    ],
)
def test_member_address_shifts_the_port(address: str, offset: int, expected: str) -> None:
    assert member_address(address, offset) == expected


def test_member_address_refuses_an_address_without_a_port() -> None:
    with pytest.raises(ValueError, match="not host:port"):
        member_address("node1", 10000)
