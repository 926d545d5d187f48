"""TLS for clients, mutual TLS between members, and bearer tokens.

Certificates are made in the test (``tests/support/pki.py``): a CA with node
and client certificates (IP SAN 127.0.0.1), and a rogue CA.

With ``--tls-ca`` a node serves clients on its port (TLS, no client
certificate) and members on its port plus ``--peer-port-offset`` (mutual TLS).
The tests use an offset of -20000 so both ports of a node can be picked free
(the kernel hands out ports from 32768 up).
"""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from ringkv.api import (
    admin_pb2,
    admin_pb2_grpc,
    forward_pb2,
    forward_pb2_grpc,
    kv_pb2,
    kv_pb2_grpc,
    replica_pb2,
    replica_pb2_grpc,
)
from ringkv.api.bearer import TokenInterceptor
from ringkv.api.roles import MEMBER_ROLE_URI, OPERATOR_ROLE_URI
from ringkv.client import Client, Security
from ringkv.client.admin import cluster_state
from ringkv.core.errors import DeadlineExceeded, Unauthenticated, Unavailable
from ringkv.core.hlc import Version
from ringkv.core.records import Record
from ringkv.server.transport.link import REPLICA_READ, LinkClient, LinkUnreachable
from ringkv.server.transport.wire import record_to_wire
from tests.support.metrics import METRICS, scrape
from tests.support.nodes import (
    ClusterFactory,
    NodeFactory,
    child_env,
    free_ports,
    wait_for,
    wait_for_leader,
)
from tests.support.pki import CertificateAuthority, Issued

FAST = ("--heartbeat-interval", "0.2", "--election-timeout", "1", "--engine", "memory")
TOKEN = "s3cret-token-0123456789"
OPERATOR_TOKEN = "operator-token-0123456789"
MEMBER_TOKEN = "member-token-0123456789"


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


OFFSET = -20000


def member_port(address: str) -> str:
    host, _, port = address.rpartition(":")
    return f"{host}:{int(port) + OFFSET}"


def refusal(method: Callable[..., object], request: object) -> grpc.StatusCode:
    """The status code a call of ``method`` with ``request`` is refused with."""
    with pytest.raises(grpc.RpcError) as refused:
        method(request, timeout=2)
    code: grpc.StatusCode = refused.value.code()
    return code


def member_call_refusals(
    channel: grpc.Channel, record: Record, *, operator_calls: bool = True
) -> set[grpc.StatusCode]:
    """How a replica write, a forwarded write, a Join, a forged leader's
    heartbeat and (with ``operator_calls``) a repair and a backup on
    ``channel`` are refused."""
    cluster_stub = kv_pb2_grpc.ClusterStub(channel)
    refusals = {
        refusal(
            replica_pb2_grpc.ReplicaStub(channel).Write,
            replica_pb2.WriteRequest(records=[record_to_wire(record)]),
        ),
        refusal(cluster_stub.Join, kv_pb2.JoinRequest(node_id="node9", address="127.0.0.1:1")),
        refusal(
            cluster_stub.Heartbeat,
            kv_pb2.HeartbeatRequest(node_id="node1", term=1000, is_leader=True, claim=True),
        ),
    }
    planted = kv_pb2.SetRequest(key=record.key.decode(), value=record.value)
    forwarded = forward_pb2_grpc.ForwardStub(channel).Writes(
        forward_pb2.ForwardedWrites(
            writes=[forward_pb2.ForwardedWrite(set=planted, timeout_ms=2000)]
        ),
        timeout=2,
    )
    with pytest.raises(grpc.RpcError) as refused_forward:
        next(iter(forwarded))
    refusals.add(refused_forward.value.code())
    if operator_calls:
        refusals.add(refusal(cluster_stub.Repair, kv_pb2.RepairRequest()))
        backup = admin_pb2_grpc.AdminStub(channel).Backup(admin_pb2.BackupRequest(), timeout=2)
        with pytest.raises(grpc.RpcError) as refused:
            next(iter(backup))
        refusals.add(refused.value.code())
    return refusals


def test_members_talk_mutual_tls_on_their_port_and_clients_need_no_certificate(
    cluster: ClusterFactory, nodes: NodeFactory, ca: CertificateAuthority, tmp_path: Path
) -> None:
    node_cert = ca.issue("node", role=MEMBER_ROLE_URI)
    operator_cert = ca.issue("operator", role=OPERATOR_ROLE_URI)
    client_cert = ca.issue("client")
    security = Security.of(tls_ca=ca.cert)
    members = cluster(
        3,
        *FAST,
        *tls_flags(ca, node_cert, mutual=True),
        f"--peer-port-offset={OFFSET}",
        port_offset=OFFSET,
        security=security,
    )
    wait_for_leader(members, timeout=30)

    # Clients trust the CA and present no certificate; replication, forwarding
    # and membership run over the member ports.
    with Client(members[0].address, tls_ca=ca.cert, timeout=5) as client:
        # Until every node's channels to the others handshake once, replicas may be marked down.
        wait_for(lambda: _wrote_to_all(client), timeout=20, what="a write at ALL")
        entry = client.get("k", consistency="all")
        assert entry is not None and entry.value == b"v"
    done = cli("get", "k", "--endpoint", members[2].address, "--tls-ca", str(ca.cert))
    assert (done.returncode, done.stdout) == (0, "v"), done.stderr
    assert cli("health", "--endpoint", members[1].address, "--tls-ca", str(ca.cert)).returncode == 0

    # Member calls on the client port are UNAUTHENTICATED, even from a caller
    # holding a member certificate (the client port never asks for one), and
    # a refused replica write stores nothing.
    record = Record(b"planted", b"x", Version(1 << 40, "node1"))
    for credentials in (
        grpc.ssl_channel_credentials(root_certificates=ca.cert.read_bytes()),
        grpc.ssl_channel_credentials(
            root_certificates=ca.cert.read_bytes(),
            private_key=operator_cert.key.read_bytes(),
            certificate_chain=operator_cert.cert.read_bytes(),
        ),
    ):
        with grpc.secure_channel(members[1].address, credentials) as channel:
            assert member_call_refusals(channel, record) == {grpc.StatusCode.UNAUTHENTICATED}
    assert (
        cli("get", "planted", "--endpoint", members[1].address, "--tls-ca", str(ca.cert)).returncode
        == 1
    )

    # Operator calls: refused on the client port without a token, served on
    # the member port to a certificate the CA signed.
    refused_repair = cli(
        "cluster", "repair", "--endpoint", members[0].address, "--tls-ca", str(ca.cert)
    )
    assert refused_repair.returncode == 3
    assert refused_repair.stderr.startswith("ringkv: CERTIFICATE_REQUIRED: ")
    operator = (
        "--tls-ca",
        str(ca.cert),
        "--tls-cert",
        str(operator_cert.cert),
        "--tls-key",
        str(operator_cert.key),
    )
    repair = cli("cluster", "repair", "--endpoint", member_port(members[0].address), *operator)
    assert repair.returncode == 0, repair.stderr

    # On the member port a certificate is held to the role its URI names: an
    # operator's or a client's certificate makes no member call, and a
    # client's no operator call.
    for issued in (operator_cert, client_cert):
        credentials = grpc.ssl_channel_credentials(
            root_certificates=ca.cert.read_bytes(),
            private_key=issued.key.read_bytes(),
            certificate_chain=issued.cert.read_bytes(),
        )
        with grpc.secure_channel(member_port(members[0].address), credentials) as channel:
            assert member_call_refusals(channel, record, operator_calls=issued is client_cert) == {
                grpc.StatusCode.PERMISSION_DENIED
            }

    # The member port refuses, in the handshake, callers without a certificate the CA signed.
    bare = Client(member_port(members[0].address), tls_ca=ca.cert, timeout=1)
    with bare, pytest.raises(Unavailable):
        bare.get("k")

    # A node whose certificate the rogue CA signed (trusting the real CA itself)
    # cannot join: its table requests, Join and heartbeats fail the handshake.
    rogue_ca = CertificateAuthority(tmp_path / "rogue", "rogue")
    rogue_cert = rogue_ca.issue("node9", role=MEMBER_ROLE_URI)
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
        f"--peer-port-offset={OFFSET}",
        start=False,
        security=Security.of(tls_ca=rogue_ca.cert),
    )
    rogue.port = free_ports(1, partner_offset=OFFSET)[0]
    rogue.start()

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
    with grpc.secure_channel(member_port(members[0].address), rogue_credentials) as channel:
        assert member_call_refusals(channel, record) == {grpc.StatusCode.UNAVAILABLE}
    for member in members:
        state = cluster_state(member.address, security=security)
        assert "node9" not in {m.node_id for m in state.members}
        assert state.leader_id == "node3"


def test_one_port_for_members_and_clients_requires_every_caller_to_hold_a_certificate(
    cluster: ClusterFactory, ca: CertificateAuthority
) -> None:
    client_cert = ca.issue("client")
    security = Security.of(tls_ca=ca.cert, tls_cert=client_cert.cert, tls_key=client_cert.key)
    members = cluster(
        3,
        *FAST,
        *tls_flags(ca, ca.issue("node", role=MEMBER_ROLE_URI), mutual=True),
        "--peer-port-offset",
        "0",
        security=security,
    )
    wait_for_leader(members, timeout=30)
    with Client(
        members[0].address,
        tls_ca=ca.cert,
        tls_cert=client_cert.cert,
        tls_key=client_cert.key,
        timeout=5,
    ) as client:
        wait_for(lambda: _wrote_to_all(client), timeout=20, what="a write at ALL")
    # Without a certificate, plaintext or TLS, the handshake fails.
    for bare in (
        Client(members[0].address, timeout=1),
        Client(members[0].address, tls_ca=ca.cert, timeout=1),
    ):
        with bare, pytest.raises(Unavailable):
            bare.get("k")
    tls_args = (
        "--tls-ca",
        str(ca.cert),
        "--tls-cert",
        str(client_cert.cert),
        "--tls-key",
        str(client_cert.key),
    )
    done = cli("get", "k", "--endpoint", members[2].address, *tls_args)
    assert (done.returncode, done.stdout) == (0, "v"), done.stderr
    assert cli("health", "--endpoint", members[1].address, "--timeout", "1").returncode == 1


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


def token_files(tmp_path: Path) -> tuple[str, ...]:
    """Node flags of the three tokens, each in its own file."""
    flags: list[str] = []
    for flag, token in (
        ("--auth-token-file", TOKEN),
        ("--operator-token-file", OPERATOR_TOKEN),
        ("--member-token-file", MEMBER_TOKEN),
    ):
        path = tmp_path / flag.strip("-")
        path.write_text(token + "\n")
        flags += [flag, str(path)]
    return tuple(flags)


def test_each_role_has_its_own_token(cluster: ClusterFactory, tmp_path: Path) -> None:
    # Plaintext: members can only tell each other by the member token.
    security = Security.of(token=TOKEN)
    members = cluster(2, *FAST, *token_files(tmp_path), security=security)
    wait_for_leader(members, timeout=30)
    address = members[0].address
    for token in (None, "wrong-token"):
        with Client(address, token=token, timeout=2) as client:
            with pytest.raises(Unauthenticated):
                client.set("k", "v")
            with pytest.raises(Unauthenticated):
                client.ping()
        with pytest.raises(Unauthenticated):
            cluster_state(address, security=Security.of(token=token))

    # Members replicate with the member token: a write at ALL reaches both.
    with Client(address, token=TOKEN, timeout=5) as client:
        wait_for(lambda: _wrote_to_all(client), timeout=20, what="a write at ALL")
        entry = client.get("k")
        assert entry is not None and entry.value == b"v"

    # The client token makes no member or operator call (a replica write, a
    # Join, a forged leader's claim, a repair, a backup): PERMISSION_DENIED;
    # no token at all is UNAUTHENTICATED. Neither changes anything.
    record = Record(b"planted", b"x", Version(1 << 40, "node1"))
    with grpc.insecure_channel(address) as channel:
        assert member_call_refusals(channel, record) == {grpc.StatusCode.UNAUTHENTICATED}
        as_client = grpc.intercept_channel(channel, TokenInterceptor(TOKEN))
        assert member_call_refusals(as_client, record) == {grpc.StatusCode.PERMISSION_DENIED}
        as_operator = grpc.intercept_channel(channel, TokenInterceptor(OPERATOR_TOKEN))
        assert member_call_refusals(as_operator, record, operator_calls=False) == {
            grpc.StatusCode.PERMISSION_DENIED
        }
    with Client(address, token=TOKEN, timeout=5) as client:
        assert client.get("planted") is None
    for member in members:
        state = cluster_state(member.address, security=security)
        assert {m.node_id for m in state.members} == {"node1", "node2"}
        assert state.leader_id == "node2"

    # Operator calls take the operator token (or the member token).
    endpoint = ("--endpoint", address)
    refused_repair = cli("cluster", "repair", *endpoint, env={"RINGKV_TOKEN": TOKEN})
    assert refused_repair.returncode == 3
    assert refused_repair.stderr.startswith("ringkv: OPERATOR_CREDENTIAL_REQUIRED: ")
    for token in (OPERATOR_TOKEN, MEMBER_TOKEN):
        repair = cli("cluster", "repair", *endpoint, env={"RINGKV_TOKEN": token})
        assert repair.returncode == 0, repair.stderr

    # The CLI: no token or a wrong one is exit 3 with one line; --token or $RINGKV_TOKEN works.
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


def test_a_client_token_without_a_member_credential_is_refused_at_start(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    done = cli("node", "-id", "node1", "-addr", "127.0.0.1:0", "--auth-token-file", str(token_file))
    assert done.returncode == 2
    assert "members need a credential of their own" in done.stderr


def test_bench_runs_over_tls_with_a_token(
    nodes: NodeFactory, ca: CertificateAuthority, tmp_path: Path
) -> None:
    node = nodes(
        "node1",
        *FAST,
        *tls_flags(ca, ca.issue("node"), mutual=False),
        *token_files(tmp_path),
        security=Security.of(tls_ca=ca.cert, token=TOKEN),
    )
    run = ("bench", "--endpoint", node.address, "--tls-ca", str(ca.cert), "--records", "50")
    quick = ("--duration", "0.3", "--warmup", "0", "--concurrency", "2", "--json")
    done = cli(*run, *quick, env={"RINGKV_TOKEN": TOKEN})
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert document["load"]["total"]["ops"] == 50
    assert document["workloads"][0]["total"]["error_count"] == 0
    # The token and certificates are not part of the printed configuration.
    assert TOKEN not in done.stdout
    refused = cli(*run, *quick)
    assert refused.returncode == 3
    assert "TOKEN_REQUIRED" in refused.stderr


def test_the_member_link_runs_over_mutual_tls_and_admits_members_only(
    cluster: ClusterFactory, ca: CertificateAuthority, tmp_path: Path
) -> None:
    node_cert = ca.issue("node", role=MEMBER_ROLE_URI)
    operator_cert = ca.issue("operator", role=OPERATOR_ROLE_URI)
    members = cluster(
        3,
        *FAST,
        *METRICS,
        *tls_flags(ca, node_cert, mutual=True),
        f"--peer-port-offset={OFFSET}",
        port_offset=OFFSET,
        security=Security.of(tls_ca=ca.cert),
    )
    wait_for_leader(members, timeout=30)

    # Writes sent to node1 for keys it does not own reach their owners as
    # Forward/Write calls, which only the member link carries.
    def forwarded_over_the_link() -> float:
        labels = {
            "service": "ringkv.internal.Forward",
            "method": "Write",
            "level": "",
            "code": "OK",
        }
        return sum(scrape(node).get("ringkv_requests_total", **labels) for node in members[1:])

    with Client(members[0].address, tls_ca=ca.cert, timeout=5, token_aware=False) as client:
        wait_for(lambda: _wrote_to_all(client), timeout=20, what="a write at ALL")
        for i in range(20):
            client.set(f"linked-{i}", "v", consistency="all")
        wait_for(lambda: forwarded_over_the_link() > 0, timeout=20, what="a write on the link")

    # Where node1's link is, asked as a member.
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca.cert.read_bytes(),
        private_key=node_cert.key.read_bytes(),
        certificate_chain=node_cert.cert.read_bytes(),
    )
    with grpc.secure_channel(member_port(members[0].address), credentials) as channel:
        link_port = replica_pb2_grpc.ReplicaStub(channel).Link(replica_pb2.LinkRequest(), timeout=5)
    assert link_port.port > 0

    async def linked_read(issued: Issued) -> str | None:
        """Why a replica read on node1's link with ``issued`` is refused, if it is."""
        tls = ssl.create_default_context(cadata=ca.cert.read_text())
        tls.load_cert_chain(issued.cert, issued.key)
        link = LinkClient(
            "node1", "127.0.0.1", link_port.port, token=None, tls=tls, max_frame_bytes=1 << 20
        )
        request = replica_pb2.ReadRequest(keys=[b"k"]).SerializeToString()
        try:
            await link.call(REPLICA_READ, request, 5)
        except LinkUnreachable as refused:
            return str(refused)
        finally:
            link.close()
        return None

    assert asyncio.run(linked_read(node_cert)) is None
    for other_role in (operator_cert, ca.issue("client")):
        refused = asyncio.run(linked_read(other_role))
        assert refused is not None and "this call is for members" in refused
    # A node whose certificate the cluster's CA did not sign gets no handshake
    # (with TLS 1.3 the client learns of it as it waits for the welcome).
    rogue = CertificateAuthority(tmp_path / "rogue-link", "rogue").issue(
        "node", role=MEMBER_ROLE_URI
    )
    refused = asyncio.run(linked_read(rogue))
    assert refused is not None and "cannot dial" in refused
