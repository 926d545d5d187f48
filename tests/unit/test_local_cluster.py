"""``ringkv local-cluster``'s node command lines, parsed by the real node CLI."""

from __future__ import annotations

from pathlib import Path

from ringkv.api.roles import MEMBER_ROLE_URI
from ringkv.cli import local_cluster
from ringkv.server.config import HostPort
from tests.support.deploy_files import node_config, parse_ringkv
from tests.support.pki import CertificateAuthority


def node_argvs(*options: str) -> list[list[str]]:
    """The ``ringkv ...`` arguments of each node ``local-cluster OPTIONS`` would start."""
    args = parse_ringkv(["local-cluster", *options])
    lines = local_cluster.node_command_lines(
        args.nodes,
        args.base_port,
        args.replicas,
        args.data_dir,
        args.engine,
        extra_flags=local_cluster.security_flags(args),
    )
    for line in lines:
        assert line[1:3] == ["-m", "ringkv"]
    return [line[3:] for line in lines]


def test_the_seed_cluster_by_default() -> None:
    configs = [node_config(argv) for argv in node_argvs()]
    assert [c.node_id for c in configs] == ["node1", "node2", "node3"]
    assert [c.listen for c in configs] == [HostPort("0.0.0.0", 50051 + i) for i in range(3)]
    assert [sorted(p.node_id for p in c.peers) for c in configs] == [
        ["node2", "node3"],
        ["node1", "node3"],
        ["node1", "node2"],
    ]
    assert {(c.replicas, c.engine, c.tls_cert, c.member_listen) for c in configs} == {
        (2, "lmdb", None, None)
    }


def test_security_options_reach_every_node(tmp_path: Path) -> None:
    ca = CertificateAuthority(tmp_path, "cluster")
    issued = ca.issue("node", role=MEMBER_ROLE_URI)
    tokens = []
    for name in ("client", "operator", "member"):
        tokens.append(tmp_path / name)
        tokens[-1].write_text(f"{name}-t0ken\n")
    files = ("--tls-cert", str(issued.cert), "--tls-key", str(issued.key), "--tls-ca", str(ca.cert))
    token_flags = (
        *("--auth-token-file", str(tokens[0])),
        *("--operator-token-file", str(tokens[1])),
        *("--member-token-file", str(tokens[2])),
    )
    configs = [node_config(argv) for argv in node_argvs(*files, *token_flags, "--nodes", "2")]
    assert {
        (
            c.tls_cert,
            c.tls_key,
            c.tls_ca,
            c.auth_token_file,
            c.operator_token_file,
            c.member_token_file,
        )
        for c in configs
    } == {(issued.cert, issued.key, ca.cert, *tokens)}
    assert [c.member_listen for c in configs] == [HostPort("0.0.0.0", 60051 + i) for i in range(2)]
    shared = node_argvs(*files, "--peer-port-offset", "0")
    assert {node_config(argv).member_listen for argv in shared} == {None}
