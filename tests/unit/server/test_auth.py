"""The call policy of ``server/transport/auth.py``, against fake call contexts."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest

from ringkv.api.member_port import member_address
from ringkv.core.errors import Unauthenticated
from ringkv.server.config import ConfigError, HostPort, NodeConfig
from ringkv.server.transport.auth import Access, NodeSecurity, Policy, access_of


class FakeContext:
    def __init__(self, *, cert: bool = False, token: str | None = None) -> None:
        self._cert = cert
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()

    def auth_context(self) -> dict[str, list[bytes]]:
        base = {"transport_security_type": [b"ssl"]}
        return base | ({"x509_common_name": [b"node2"]} if self._cert else {})

    def peer_identities(self) -> list[bytes] | None:
        return [b"node2"] if self._cert else None

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata


def allowed(policy: Policy, access: Access, **context: Any) -> bool:
    try:
        policy.check(access, FakeContext(**context))  # type: ignore[arg-type]
    except Unauthenticated:
        return False
    return True


def test_methods_are_classified_in_one_table() -> None:
    assert access_of("ringkv.internal.Replica", "Write") is Access.MEMBER
    assert access_of("kv.Cluster", "Heartbeat") is Access.MEMBER
    assert access_of("kv.Cluster", "RequestVote") is Access.MEMBER
    assert access_of("kv.Cluster", "Join") is Access.MEMBER
    assert access_of("kv.Cluster", "RemoveNode") is Access.OPERATOR
    assert access_of("kv.Cluster", "Repair") is Access.OPERATOR
    assert access_of("ringkv.admin.Admin", "Backup") is Access.OPERATOR
    assert access_of("kv.Cluster", "GetClusterState") is Access.CLIENT
    assert access_of("kv.KeyValue", "Set") is Access.CLIENT


def test_member_calls_need_a_verified_certificate_when_there_is_a_member_ca() -> None:
    policy = Policy(token="t", member_certs=True)
    assert allowed(policy, Access.MEMBER, cert=True)
    assert not allowed(policy, Access.MEMBER)
    assert not allowed(policy, Access.MEMBER, token="t")  # a client token is not membership
    assert allowed(policy, Access.OPERATOR, cert=True)
    assert allowed(policy, Access.OPERATOR, token="t")
    assert not allowed(policy, Access.OPERATOR, token="x")
    assert allowed(policy, Access.CLIENT, cert=True)
    assert not allowed(policy, Access.CLIENT)


def test_without_a_token_clients_are_open_and_operators_need_a_certificate() -> None:
    policy = Policy(token=None, member_certs=True)
    assert allowed(policy, Access.CLIENT)
    assert not allowed(policy, Access.OPERATOR)
    assert allowed(policy, Access.OPERATOR, cert=True)


def test_token_only_protects_every_call() -> None:
    policy = Policy(token="t", member_certs=False)
    for access in Access:
        assert allowed(policy, access, token="t")
        assert not allowed(policy, access)
        assert not allowed(policy, access, token="tt")


def test_no_security_is_open() -> None:
    assert all(allowed(Policy(token=None, member_certs=False), access) for access in Access)


def test_config_checks_the_security_files(tmp_path: Path) -> None:
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
    token = tmp_path / "token"
    token.write_text("  \n")
    with pytest.raises(ConfigError, match="one token"):
        NodeConfig(auth_token_file=token)
    token.write_text("abc\n")
    assert NodeConfig(tls_cert=pem, tls_key=pem, tls_ca=pem, auth_token_file=token)


def test_a_member_ca_puts_member_calls_on_the_port_plus_the_offset(tmp_path: Path) -> None:
    pem = tmp_path / "c.pem"
    pem.write_text("-----BEGIN CERTIFICATE-----\n")
    tls = functools.partial(NodeConfig, tls_cert=pem, tls_key=pem)
    config = tls(listen=HostPort("", 50051), tls_ca=pem)
    assert config.member_listen == HostPort("0.0.0.0", 60051)
    assert NodeSecurity.load(config).member_port_offset == 10000
    # Without a member CA, or with an offset of 0, members share the client port.
    for shared in (
        tls(listen=HostPort("", 50051)),
        tls(listen=HostPort("", 50051), tls_ca=pem, peer_port_offset=0),
    ):
        assert shared.member_listen is None
        assert NodeSecurity.load(shared).member_port_offset == 0
    with pytest.raises(ConfigError, match="fixed -addr port"):
        tls(listen=HostPort("", 0), tls_ca=pem)
    with pytest.raises(ConfigError, match="is not a port"):
        tls(listen=HostPort("", 60000), tls_ca=pem)
    with pytest.raises(ConfigError, match="advertised port 1"):
        tls(advertise=HostPort("n1", 1), tls_ca=pem, peer_port_offset=-2)


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
