"""The ``ringkv`` command line, run as real subprocesses against real nodes.

``get``/``set``/``del`` talk to one node shared by this module (each test uses
its own keys); ``local-cluster`` starts its own three nodes on fixed ports.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import ringkv
from ringkv.client.health import check
from tests.support.nodes import NodeFactory, NodeProcess, child_env, wait_for

RINGKV = [sys.executable, "-m", "ringkv"]
EXIT_NOT_FOUND = 1
EXIT_ERROR = 3
CLI_TIMEOUT_S = 20.0
ALL_BYTES = bytes(range(256))


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    """One node for every get/set/del test of this module; killed at the end."""
    factory = NodeFactory(tmp_path_factory.mktemp("cli-node"))
    try:
        yield factory("node1")
    finally:
        factory.cleanup()


def cli_env(**extra: str) -> dict[str, str]:
    """The child environment without a RINGKV_ENDPOINTS the caller may have set."""
    env = child_env()
    env.pop("RINGKV_ENDPOINTS", None)
    env.update(extra)
    return env


def ringkv_cli(
    *args: str, stdin: bytes = b"", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    """Run ``ringkv ARGS`` to completion (stdout is a pipe, not a terminal)."""
    return subprocess.run(
        [*RINGKV, *args],
        input=stdin,
        capture_output=True,
        env=env if env is not None else cli_env(),
        timeout=CLI_TIMEOUT_S,
        check=False,
    )


def one_error_line(result: subprocess.CompletedProcess[bytes]) -> str:
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def sdk_get(node: NodeProcess, key: str) -> ringkv.Entry | None:
    with ringkv.Client(node.address) as client:
        return client.get(key)


def sdk_set(node: NodeProcess, key: str, value: bytes) -> int:
    with ringkv.Client(node.address) as client:
        return client.set(key, value)


def unused_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# set


def test_set_prints_ok_with_the_version(node: NodeProcess) -> None:
    result = ringkv_cli("set", "cli/set", "hello", "--endpoint", node.address)

    assert result.returncode == 0, result.stderr
    match = re.fullmatch(rb"OK version=(\d+)\n", result.stdout)
    assert match, result.stdout
    entry = sdk_get(node, "cli/set")
    assert entry is not None
    assert (entry.value, entry.version) == (b"hello", int(match.group(1)))


def test_set_reads_the_value_from_stdin_binary_safe(node: NodeProcess) -> None:
    value = ALL_BYTES + b"\n\r\x00" + ALL_BYTES
    result = ringkv_cli("set", "cli/stdin", "--endpoint", node.address, stdin=value)

    assert result.returncode == 0, result.stderr
    entry = sdk_get(node, "cli/stdin")
    assert entry is not None
    assert entry.value == value


def test_set_json_prints_key_and_version(node: NodeProcess) -> None:
    result = ringkv_cli("set", "cli/set-json", "v", "--json", "--endpoint", node.address)

    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    entry = sdk_get(node, "cli/set-json")
    assert entry is not None
    assert document == {"key": "cli/set-json", "version": entry.version}


# get


def test_get_prints_exactly_the_value_bytes(node: NodeProcess) -> None:
    sdk_set(node, "cli/get-binary", ALL_BYTES)
    sdk_set(node, "cli/get-text", b"hello world")

    binary = ringkv_cli("get", "cli/get-binary", "--endpoint", node.address)
    text = ringkv_cli("get", "cli/get-text", "--endpoint", node.address)

    assert (binary.returncode, binary.stdout, binary.stderr) == (0, ALL_BYTES, b"")
    # Not a terminal: no newline is added.
    assert (text.returncode, text.stdout, text.stderr) == (0, b"hello world", b"")


def test_get_json_gives_key_found_value_version(node: NodeProcess) -> None:
    version = sdk_set(node, "cli/json", "grüße ✓".encode())

    result = ringkv_cli("get", "cli/json", "--json", "--endpoint", node.address)

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "key": "cli/json",
        "found": True,
        "value": "grüße ✓",
        "version": version,
    }


def test_get_json_gives_base64_for_a_non_utf8_value(node: NodeProcess) -> None:
    version = sdk_set(node, "cli/json-binary", ALL_BYTES)

    result = ringkv_cli("get", "cli/json-binary", "--json", "--endpoint", node.address)

    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document.keys() == {"key", "found", "value_base64", "version"}
    assert (document["key"], document["found"], document["version"]) == (
        "cli/json-binary",
        True,
        version,
    )
    assert base64.b64decode(document["value_base64"]) == ALL_BYTES


def test_get_of_a_missing_key_exits_1(node: NodeProcess) -> None:
    plain = ringkv_cli("get", "cli/missing", "--endpoint", node.address)
    as_json = ringkv_cli("get", "cli/missing", "--json", "--endpoint", node.address)

    assert plain.returncode == EXIT_NOT_FOUND
    assert plain.stdout == b""
    assert "not found" in one_error_line(plain)
    assert as_json.returncode == EXIT_NOT_FOUND
    assert json.loads(as_json.stdout) == {"key": "cli/missing", "found": False}


# del


def test_del_exits_0_then_1(node: NodeProcess) -> None:
    sdk_set(node, "cli/del", b"doomed")

    first = ringkv_cli("del", "cli/del", "--endpoint", node.address)
    again = ringkv_cli("del", "cli/del", "--endpoint", node.address)

    assert (first.returncode, first.stdout) == (0, b"deleted\n"), first.stderr
    assert (again.returncode, again.stdout) == (EXIT_NOT_FOUND, b"not found\n"), again.stderr
    assert sdk_get(node, "cli/del") is None


# set options


def test_set_with_ttl_expires(node: NodeProcess) -> None:
    before_ms = time.time_ns() // 1_000_000
    result = ringkv_cli("set", "cli/ttl", "brief", "--ttl", "1", "--endpoint", node.address)
    assert result.returncode == 0, result.stderr

    entry = sdk_get(node, "cli/ttl")
    if entry is not None:  # still live (a slow CI may take over a second to get here)
        assert entry.value == b"brief"
        assert before_ms + 1000 <= entry.expires_at_ms <= time.time_ns() // 1_000_000 + 1000
    wait_for(lambda: sdk_get(node, "cli/ttl") is None, timeout=10, what="the TTL to expire")
    gone = ringkv_cli("get", "cli/ttl", "--endpoint", node.address)
    assert gone.returncode == EXIT_NOT_FOUND


def test_set_if_version_mismatch_exits_3(node: NodeProcess) -> None:
    version = sdk_set(node, "cli/cas", b"v1")

    stale = ringkv_cli(
        "set", "cli/cas", "v2", "--if-version", str(version + 1), "--endpoint", node.address
    )
    assert stale.returncode == EXIT_ERROR
    assert stale.stdout == b""
    assert "VERSION_MISMATCH" in one_error_line(stale)
    entry = sdk_get(node, "cli/cas")
    assert entry is not None
    assert entry.value == b"v1"

    current = ringkv_cli(
        "set", "cli/cas", "v2", "--if-version", str(version), "--endpoint", node.address
    )
    assert current.returncode == 0, current.stderr
    entry = sdk_get(node, "cli/cas")
    assert entry is not None
    assert entry.value == b"v2"


def test_set_if_absent_on_an_existing_key_exits_3(node: NodeProcess) -> None:
    sdk_set(node, "cli/absent", b"taken")

    result = ringkv_cli("set", "cli/absent", "mine", "--if-absent", "--endpoint", node.address)

    assert result.returncode == EXIT_ERROR
    assert "VERSION_MISMATCH" in one_error_line(result)


@pytest.mark.parametrize("command", [["get", ""], ["set", "", "value"], ["del", ""]])
def test_an_empty_key_exits_3(node: NodeProcess, command: list[str]) -> None:
    result = ringkv_cli(*command, "--endpoint", node.address)

    assert result.returncode == EXIT_ERROR
    assert result.stdout == b""
    assert "EMPTY_KEY" in one_error_line(result)


def test_consistency_all_is_accepted(node: NodeProcess) -> None:
    written = ringkv_cli(
        "set", "cli/all", "everywhere", "--consistency", "all", "--endpoint", node.address
    )
    read = ringkv_cli("get", "cli/all", "--consistency", "all", "--endpoint", node.address)

    assert written.returncode == 0, written.stderr
    assert (read.returncode, read.stdout) == (0, b"everywhere"), read.stderr


# endpoints


def test_an_unreachable_endpoint_exits_3_quickly() -> None:
    begun = time.monotonic()
    result = ringkv_cli("get", "anything", "--endpoint", f"127.0.0.1:{unused_port()}")

    assert result.returncode == EXIT_ERROR
    assert result.stdout == b""
    assert "UNAVAILABLE" in one_error_line(result)
    assert time.monotonic() - begun < 15.0


def test_a_dead_first_endpoint_falls_through_to_the_next(node: NodeProcess) -> None:
    sdk_set(node, "cli/fallback", b"reached")
    endpoints = f"127.0.0.1:{unused_port()},{node.address}"

    result = ringkv_cli("get", "cli/fallback", "--endpoint", endpoints)

    assert (result.returncode, result.stdout) == (0, b"reached"), result.stderr


def test_ringkv_endpoints_env_var_is_honoured(node: NodeProcess) -> None:
    sdk_set(node, "cli/env", b"from env")

    result = ringkv_cli("get", "cli/env", env=cli_env(RINGKV_ENDPOINTS=node.address))

    assert (result.returncode, result.stdout) == (0, b"from env"), result.stderr


def test_a_malformed_endpoint_is_a_usage_error() -> None:
    result = ringkv_cli("get", "anything", "--endpoint", "garbage")

    assert result.returncode == 2
    assert "'garbage' is not host:port" in one_error_line(result)


def test_health_takes_its_node_from_the_endpoints_env_var(node: NodeProcess) -> None:
    env = cli_env(RINGKV_ENDPOINTS=f"{node.address},127.0.0.1:{unused_port()}")

    result = ringkv_cli("health", env=env)

    assert result.returncode == 0, result.stderr
    assert f"{node.address} is SERVING" in result.stdout.decode() + result.stderr.decode()


def test_a_table_printed_to_a_pipe_is_not_cut(node: NodeProcess) -> None:
    result = ringkv_cli("cluster", "status", "--endpoint", node.address)

    assert result.returncode == 0, result.stderr
    assert node.address in result.stdout.decode()
    assert "…" not in result.stdout.decode()


def test_version_prints_the_installed_version() -> None:
    result = ringkv_cli("--version")

    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().startswith("ringkv 0.")


def test_a_reader_that_leaves_early_ends_the_command_quietly(node: NodeProcess) -> None:
    sdk_set(node, "cli/long", b"x" * 500_000)
    with subprocess.Popen(
        [*RINGKV, "get", "cli/long", "--json", "--endpoint", node.address],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cli_env(),
    ) as reader:
        assert reader.stdout is not None and reader.stderr is not None
        assert reader.stdout.read(10) == b'{"found": '
        reader.stdout.close()  # as `head -c 10` does
        returncode = reader.wait(timeout=CLI_TIMEOUT_S)
        errors = reader.stderr.read()
    assert b"Traceback" not in errors and b"BrokenPipe" not in errors, errors
    assert returncode == 128 + signal.SIGPIPE  # not 1, "not found"


# local-cluster


def free_port_run(count: int, *, attempts: int = 100) -> int:
    """The first of ``count`` consecutive ports that are free right now.

    Searched below the kernel's ephemeral range, so nodes that other tests
    start on port 0 cannot take them before the cluster binds them.
    """
    rng = random.Random()
    for _ in range(attempts):
        base = rng.randrange(20_000, 32_000 - count)
        probes: list[socket.socket] = []
        try:
            for port in range(base, base + count):
                probe = socket.socket()
                probes.append(probe)
                probe.bind(("0.0.0.0", port))  # the nodes bind the wildcard address
        except OSError:
            continue
        finally:
            for probe in probes:
                probe.close()
        return base
    raise AssertionError(f"no {count} consecutive free ports found")


def table_pids(text: str) -> dict[str, int]:
    """The pid column of the table local-cluster prints, by node id."""
    rows = re.findall(r"(node\d+)\W+127\.0\.0\.1:\d+\W+(\d+)\W+SERVING", text)
    return {node_id: int(pid) for node_id, pid in rows}


def parent_pid(pid: int) -> int | None:
    """The parent of a running (not zombie) process; None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    state, ppid = stat.rsplit(")", 1)[1].split()[:2]
    return None if state == "Z" else int(ppid)


@contextlib.contextmanager
def local_cluster(
    tmp_path: Path,
) -> Iterator[tuple[subprocess.Popen[bytes], Callable[[], str], list[str]]]:
    """``ringkv local-cluster`` running: the process, its output so far, its addresses."""
    base = free_port_run(3)
    addresses = [f"127.0.0.1:{base + i}" for i in range(3)]
    stderr_path = tmp_path / "local-cluster.stderr"
    with stderr_path.open("wb") as stderr:
        cluster = subprocess.Popen(
            [*RINGKV, "local-cluster", "--base-port", str(base), "--data-dir", str(tmp_path / "D")],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env=cli_env(COLUMNS="200"),  # the table and hint unwrapped
            start_new_session=True,  # its nodes join its process group: killpg gets them all
        )

    def output() -> str:
        return stderr_path.read_text(errors="replace")

    try:
        yield cluster, output, addresses
    finally:
        with contextlib.suppress(ProcessLookupError):  # gone already: nothing to kill
            os.killpg(cluster.pid, signal.SIGKILL)
        cluster.wait(timeout=10)


def test_local_cluster_serves_and_stops_every_node_on_sigint(tmp_path: Path) -> None:
    with local_cluster(tmp_path) as (cluster, output, addresses):
        wait_for(
            lambda: (
                cluster.poll() is not None
                or all(check(address, timeout=0.5) for address in addresses)
            ),
            timeout=60,
            interval=0.2,
            what="three serving nodes",
        )
        assert cluster.poll() is None, output()
        with ringkv.Client(addresses[0]) as client:
            version = client.set("cluster/key", b"via node1")
            entry = client.get("cluster/key")
        assert entry is not None
        assert (entry.value, entry.version) == (b"via node1", version)

        # The table (and the Ctrl-C hint after it) is printed once all nodes serve.
        wait_for(lambda: "Ctrl-C" in output(), timeout=30, what="the cluster table")
        pids = table_pids(output())
        assert sorted(pids) == ["node1", "node2", "node3"], output()
        assert all(parent_pid(pid) == cluster.pid for pid in pids.values()), output()
        assert sorted(p.name for p in (tmp_path / "D").iterdir()) == ["node1", "node2", "node3"]

        os.kill(cluster.pid, signal.SIGINT)
        assert cluster.wait(timeout=30) == 0, output()
        still_running = {node_id for node_id, pid in pids.items() if parent_pid(pid) is not None}
        assert not still_running, output()
        assert output().count(" stopped ") == 3, output()


def test_local_cluster_names_the_node_that_died_and_a_command_that_runs(tmp_path: Path) -> None:
    with local_cluster(tmp_path) as (cluster, output, _):
        wait_for(lambda: "Ctrl-C" in output(), timeout=60, what="the cluster table")
        # Started as `python -m ringkv`, with no ringkv on the PATH to count on.
        assert f"Try: {sys.executable} -m ringkv set hello world" in output()
        pids = table_pids(output())
        os.kill(pids["node2"], signal.SIGKILL)
        assert cluster.wait(timeout=30) == 1, output()
        assert f"node2 (pid {pids['node2']}) was killed by SIGKILL" in output()
