"""``ringkv health`` against a real node: the container health check's command.

Exit 0 when the node reports SERVING, 1 otherwise, 2 on bad usage; one line on
stderr every time.
"""

from __future__ import annotations

import subprocess
import sys

from tests.support.nodes import NodeFactory, child_env, free_ports

RINGKV = [sys.executable, "-m", "ringkv"]
CLI_TIMEOUT_S = 30.0


def health(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*RINGKV, "health", *args],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        env=child_env(),
        check=False,
    )


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert done.stdout == ""
    return lines[0]


def test_exit_status_follows_the_nodes_health(nodes: NodeFactory) -> None:
    node = nodes("node1")
    done = health("--endpoint", node.address)
    assert done.returncode == 0
    assert one_line(done) == f"ringkv health: {node.address} is SERVING"
    assert health("--endpoint", node.address, "--service", "kv.KeyValue").returncode == 0
    assert health("--endpoint", node.address, "--service", "kv.Cluster").returncode == 0
    unknown = health("--endpoint", node.address, "--service", "no.such.Service")
    assert unknown.returncode == 1
    assert "not serving" in one_line(unknown)

    assert node.stop() == 0
    done = health("--endpoint", node.address, "--timeout", "1")
    assert done.returncode == 1
    assert one_line(done).startswith(f"ringkv health: {node.address} is not serving")


def test_wait_polls_until_a_starting_node_serves(nodes: NodeFactory) -> None:
    (port,) = free_ports(1)
    node = nodes("node1", start=False)
    node.port = port  # listen there rather than on a port the node picks
    node.launch()
    done = health("--endpoint", f"127.0.0.1:{port}", "--wait", "20")
    assert done.returncode == 0, done.stderr
    assert one_line(done).endswith("is SERVING")


def test_nothing_listening_fails_at_once_and_bad_usage_exits_2() -> None:
    (port,) = free_ports(1)
    done = health("--endpoint", f"127.0.0.1:{port}", "--timeout", "1")
    assert done.returncode == 1
    assert "not serving" in one_line(done)
    for args in (["--timeout", "0"], ["--wait", "-1"], ["--endpoint", "a:1,b:2"]):
        done = health(*args)
        assert done.returncode == 2, args
        assert one_line(done).startswith("ringkv health: error:"), args
