"""TLS for clients, mutual TLS between members, and bearer tokens.

Certificates are made in the test (``tests/support/pki.py``): a CA with node
and client certificates (IP SAN 127.0.0.1), and a rogue CA.

grpc's Python server either requires and verifies client certificates or
never asks for one, so a node run with ``--tls-ca`` refuses every caller
without a certificate its CA signed at the TLS handshake: the caller sees
UNAVAILABLE, not UNAUTHENTICATED, and nothing of its call runs.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from ringkv.api import kv_pb2, kv_pb2_grpc, replica_pb2, replica_pb2_grpc
from ringkv.client import Client, Security
from ringkv.client.admin import cluster_state
from ringkv.core.errors import DeadlineExceeded, Unauthenticated, Unavailable
from ringkv.core.hlc import Version
from ringkv.core.records import Record
from ringkv.server.wire import record_to_wire
from tests.support.nodes import ClusterFactory, NodeFactory, child_env, wait_for, wait_for_leader
from tests.support.pki import CertificateAuthority, Issued

FAST = ("--heartbeat-interval", "0.2", "--election-timeout", "1", "--engine", "memory")
TOKEN = "s3cret-token-0123456789"


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority(tmp_path / "pki", "cluster")


def tls_flags(ca: CertificateAuthority, issued: Issued, *, mutual: bool) -> tuple[str, ...]:
    flags = ("--tls-cert", str(issued.cert), "--tls-key", str(issued.key))
    return (*flags, "--tls-ca", str(ca.cert)) if mutual else flags


def _wrote_to_all(client: Client) -> bool:
    try:
        client.set("k", "v", consistency="all")
    except (Unavailable, DeadlineExceeded):
        return False
    return True


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ringkv", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**child_env(), **(env or {})},
        check=False,
    )


def test_mutual_tls_cluster_forms_and_refuses_callers_without_a_member_certificate(
    cluster: ClusterFactory, nodes: NodeFactory, ca: CertificateAuthority, tmp_path: Path
) -> None:
    node_cert = ca.issue("node")
    client_cert = ca.issue("client")
    security = Security.of(tls_ca=ca.cert, tls_cert=client_cert.cert, tls_key=client_cert.key)
    members = cluster(3, *FAST, *tls_flags(ca, node_cert, mutual=True), security=security)
    wait_for_leader(members, timeout=30)

    with Client(
        members[0].address,
        tls_ca=ca.cert,
        tls_cert=client_cert.cert,
        tls_key=client_cert.key,
        timeout=5,
    ) as client:
        # Until every node's channels to the others handshake once, replicas may be marked down.
        wait_for(lambda: _wrote_to_all(client), timeout=20, what="a write at ALL")
        entry = client.get("k", consistency="all")
        assert entry is not None and entry.value == b"v"

    # A client without a certificate, plaintext or TLS, fails the handshake.
    for bare in (
        Client(members[0].address, timeout=1),
        Client(members[0].address, tls_ca=ca.cert, timeout=1),
    ):
        with bare, pytest.raises(Unavailable):
            bare.get("k")

    # Replica.Write over TLS without a client certificate never reaches a handler.
    record = Record(b"planted", b"x", Version(1 << 40, "node1"))
    no_cert = grpc.ssl_channel_credentials(root_certificates=ca.cert.read_bytes())
    with (
        grpc.secure_channel(members[1].address, no_cert) as channel,
        pytest.raises(grpc.RpcError) as refused,
    ):
        replica_pb2_grpc.ReplicaStub(channel).Write(
            replica_pb2.WriteRequest(records=[record_to_wire(record)]), timeout=2
        )
    assert refused.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAUTHENTICATED)

    # The CLI with the same options, including health.
    tls_args = (
        "--tls-ca",
        str(ca.cert),
        "--tls-cert",
        str(client_cert.cert),
        "--tls-key",
        str(client_cert.key),
    )
    done = cli("get", "k", "--endpoint", members[2].address, *tls_args)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "v"
    assert cli("get", "planted", "--endpoint", members[1].address, *tls_args).returncode == 1
    assert cli("health", "--endpoint", members[1].address, *tls_args).returncode == 0
    assert cli("health", "--endpoint", members[1].address, "--timeout", "1").returncode == 1

    # A node whose certificate the rogue CA signed (trusting the real CA itself)
    # cannot join: its Join, its table requests and its heartbeats fail the handshake.
    rogue_ca = CertificateAuthority(tmp_path / "rogue", "rogue")
    rogue_cert = rogue_ca.issue("node9")
    peers = ",".join(f"{m.node_id}={m.address}" for m in members)
    rogue = nodes(
        "node9",
        "-peers",
        peers,
        *FAST,
        "--tls-cert",
        str(rogue_cert.cert),
        "--tls-key",
        str(rogue_cert.key),
        "--tls-ca",
        str(ca.cert),
        # The test checks its health with a client certificate the real CA
        # signed, trusting the rogue CA for the rogue's own certificate.
        security=Security.of(
            tls_ca=rogue_ca.cert, tls_cert=client_cert.cert, tls_key=client_cert.key
        ),
    )

    def rogue_gave_up_a_round() -> bool:
        return any(
            event.get("msg") in ("join refused", "bootstrapping", "leading")
            for event in rogue.events()
        )

    wait_for(rogue_gave_up_a_round, timeout=20, what="the rogue node to be refused")
    # Its calls, made as it makes them (its certificate, trusting the real CA), fail.
    rogue_credentials = grpc.ssl_channel_credentials(
        root_certificates=ca.cert.read_bytes(),
        private_key=rogue_cert.key.read_bytes(),
        certificate_chain=rogue_cert.cert.read_bytes(),
    )
    with grpc.secure_channel(members[0].address, rogue_credentials) as channel:
        stub = kv_pb2_grpc.ClusterStub(channel)
        with pytest.raises(grpc.RpcError) as join_refused:
            stub.Join(kv_pb2.JoinRequest(node_id="node9", address=rogue.address), timeout=2)
        with pytest.raises(grpc.RpcError) as heartbeat_refused:
            stub.Heartbeat(
                kv_pb2.HeartbeatRequest(node_id="node9", term=99, is_leader=True), timeout=2
            )
    for refusal in (join_refused, heartbeat_refused):
        assert refusal.value.code() in (
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.UNAUTHENTICATED,
        )
    for member in members:
        state = cluster_state(member.address, security=security)
        assert "node9" not in {m.node_id for m in state.members}
        assert state.leader_id == "node3"


def test_server_tls_serves_clients_without_certificates(
    nodes: NodeFactory, ca: CertificateAuthority
) -> None:
    node = nodes(
        "node1",
        *FAST,
        *tls_flags(ca, ca.issue("node"), mutual=False),
        security=Security.of(tls_ca=ca.cert),
    )
    with Client(node.address, tls_ca=ca.cert, timeout=5) as client:
        client.set("k", "v")
        assert client.get("k") is not None
    # A plaintext client on a TLS port: the connection fails (UNAVAILABLE).
    with Client(node.address, timeout=1) as plain, pytest.raises(Unavailable):
        plain.get("k")
    # A client that trusts another CA refuses the node.
    other = CertificateAuthority(ca.cert.parent / "other", "other")
    with Client(node.address, tls_ca=other.cert, timeout=1) as wrong, pytest.raises(Unavailable):
        wrong.get("k")


def test_token_is_required_when_configured(
    nodes: NodeFactory, ca: CertificateAuthority, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    issued = ca.issue("node")
    security = Security.of(tls_ca=ca.cert, token=TOKEN)
    node = nodes(
        "node1",
        *FAST,
        *tls_flags(ca, issued, mutual=False),
        "--auth-token-file",
        str(token_file),
        security=security,
    )
    for token in (None, "wrong-token"):
        with Client(node.address, tls_ca=ca.cert, token=token, timeout=2) as client:
            with pytest.raises(Unauthenticated):
                client.set("k", "v")
            with pytest.raises(Unauthenticated):
                client.ping()
        with pytest.raises(Unauthenticated):
            cluster_state(node.address, security=Security.of(tls_ca=ca.cert, token=token))

    with Client(node.address, tls_ca=ca.cert, token=TOKEN, timeout=5) as client:
        client.set("k", "v")
        entry = client.get("k")
        assert entry is not None and entry.value == b"v"
    assert cluster_state(node.address, security=security).members

    # Member calls need the token too on a node without a member CA; a refused
    # replica write stores nothing.
    record = Record(b"planted", b"x", Version(1 << 40, "node1"))
    creds = grpc.ssl_channel_credentials(root_certificates=ca.cert.read_bytes())
    with grpc.secure_channel(node.address, creds) as channel:
        with pytest.raises(grpc.RpcError) as refused:
            replica_pb2_grpc.ReplicaStub(channel).Write(
                replica_pb2.WriteRequest(records=[record_to_wire(record)]), timeout=2
            )
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as refused:
            kv_pb2_grpc.ClusterStub(channel).Heartbeat(
                kv_pb2.HeartbeatRequest(node_id="node7", term=99, is_leader=True), timeout=2
            )
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with Client(node.address, tls_ca=ca.cert, token=TOKEN, timeout=5) as client:
        assert client.get("planted") is None

    # The CLI: no token or a wrong one is exit 3 with one line; --token or $RINGKV_TOKEN works.
    endpoint = ("--endpoint", node.address, "--tls-ca", str(ca.cert))
    refused_cli = cli("get", "k", *endpoint)
    assert refused_cli.returncode == 3
    assert refused_cli.stderr.startswith("ringkv: TOKEN_REQUIRED: ")
    assert len(refused_cli.stderr.splitlines()) == 1
    wrong_cli = cli("get", "k", *endpoint, "--token", "nope")
    assert (wrong_cli.returncode, wrong_cli.stderr.split(":")[1].strip()) == (3, "INVALID_TOKEN")
    assert cli("get", "k", *endpoint, "--token", TOKEN).stdout == "v"
    assert cli("get", "k", *endpoint, env={"RINGKV_TOKEN": TOKEN}).stdout == "v"
    status = cli("cluster", "status", *endpoint, "--json", env={"RINGKV_TOKEN": TOKEN})
    assert status.returncode == 0, status.stderr
