"""The ``ringkv node`` process: signals, flags, errors, logs, engines and data dirs.

Every test runs real node processes. Nodes that need exact command lines (the
seed's flags, a chosen working directory, text logs) are started here with
``python -m ringkv node ...``; all of them are killed at teardown.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import grpc
import pytest

import ringkv
from ringkv.api import kv_pb2, kv_pb2_grpc
from ringkv.client.health import check, wait_until_serving
from ringkv.core.errors import RingkvError, Unavailable
from tests.support.load import ConcurrentWriter, assert_all_present
from tests.support.nodes import NodeFactory, NodeProcess, child_env, wait_for
from tests.support.tmpfs import fill, small_tmpfs

RINGKV = [sys.executable, "-m", "ringkv"]
SEED_PEERS = "node2=127.0.0.1:50052,node3=127.0.0.1:50053"
ISO_TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z ")
QUICK_EXIT_S = 20.0
"""How long a node that must refuse to start may take to exit."""


@dataclass
class RawNode:
    """A ``ringkv node`` started with exactly the flags a test chose."""

    process: subprocess.Popen[bytes]
    log_path: Path

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_lines(self) -> list[str]:
        """The complete lines logged so far (not one the node is still writing)."""
        return complete_lines(self.log_text())

    def wait_serving(self, timeout: float = 30.0) -> str:
        """Wait for the "serving" log line (text or JSON) and health; the address."""
        port: int | None = None

        def serving() -> bool:
            nonlocal port
            port = _serving_port(self.log_lines())
            if port is None and self.process.poll() is not None:
                raise AssertionError(
                    f"node exited with {self.process.returncode}\n{self.log_text()}"
                )
            return port is not None

        wait_for(serving, timeout=timeout, what="the serving log line")
        address = f"127.0.0.1:{port}"
        assert wait_until_serving(address, timeout=timeout), self.log_text()
        return address

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 20.0) -> int:
        self.process.send_signal(sig)
        return self.process.wait(timeout=timeout)


def _serving_port(lines: list[str]) -> int | None:
    for line in lines:
        if line.startswith("{"):
            event = json.loads(line)
            if event.get("msg") == "serving":
                return int(event["port"])
        elif match := re.search(r" serving .*\bport=(\d+)", line):
            return int(match.group(1))
    return None


class Spawn(Protocol):
    def __call__(self, *args: str, cwd: Path = ...) -> RawNode: ...


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Spawn]:
    """Start ``ringkv node ARGS`` in ``cwd`` (default tmp_path); all killed at teardown."""
    started: list[RawNode] = []

    def start(*args: str, cwd: Path = tmp_path) -> RawNode:
        cwd.mkdir(parents=True, exist_ok=True)
        log_path = tmp_path / f"raw-node-{len(started)}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [*RINGKV, "node", *args],
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=child_env(),
            )
        node = RawNode(process, log_path)
        started.append(node)
        return node

    try:
        yield start
    finally:
        for node in started:
            if node.process.poll() is None:
                node.process.kill()
            node.process.wait(timeout=10)


def run_node(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``ringkv node ARGS`` for a node that must refuse to start; its result.

    gRPC's own logging is left at its default, as a user would have it.
    """
    env = child_env()
    env.pop("GRPC_VERBOSITY", None)
    return subprocess.run(
        [*RINGKV, "node", *args],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env,
        timeout=QUICK_EXIT_S,
        check=False,
    )


def complete_lines(text: str) -> list[str]:
    return text[: text.rfind("\n") + 1].splitlines()


def messages(node: NodeProcess) -> list[str]:
    """The "msg" of every complete JSON log line of the node's current run."""
    lines = complete_lines(node.log_text())
    return [str(json.loads(line).get("msg")) for line in lines if line.startswith("{")]


def cluster_state(address: str) -> kv_pb2.GetClusterStateResponse:
    with grpc.insecure_channel(address) as channel:
        stub = kv_pb2_grpc.ClusterStub(channel)
        return stub.GetClusterState(kv_pb2.GetClusterStateRequest(), timeout=5.0)


# (a), (b): graceful shutdown


def test_sigterm_under_load_exits_0_and_keeps_acknowledged_writes(nodes: NodeFactory) -> None:
    grace = 10.0
    node = nodes("node1", "--shutdown-grace", str(grace))
    late_timeout = 5.0
    late_acked: dict[str, bytes] = {}
    late_failures: list[RingkvError] = []
    late_durations: list[float] = []

    def late_write(key: str) -> None:
        """One write sent after shutdown began: acknowledged or UNAVAILABLE, never a hang."""
        begun = time.monotonic()
        retry = ringkv.RetryPolicy(attempts=1)
        with ringkv.Client(node.address, timeout=late_timeout, retry=retry) as client:
            try:
                client.set(key, key.encode())
            except RingkvError as error:
                late_failures.append(error)
            else:
                late_acked[key] = key.encode()
        late_durations.append(time.monotonic() - begun)

    writer = ConcurrentWriter(node.address, prefix="sigterm")
    with writer:
        writer.wait_for_acks(200)
        in_flight = writer.in_flight
        signalled = time.monotonic()
        node.signal(signal.SIGTERM)
        # The shutdown began once the node logged it and its health service
        # stopped answering SERVING (the step right before server.stop()).
        wait_for(
            lambda: "shutting down" in messages(node) and not check(node.address, timeout=1.0),
            timeout=10,
            interval=0.01,
            what="the shutdown to begin",
        )
        for attempt in range(200):  # while the node drains, then once after it exited
            late_write(f"late/{attempt:03d}")
            if node.process is not None and node.process.poll() is not None:
                break
        status = node.wait(timeout=grace + 5)
        exited_after = time.monotonic() - signalled
        late_write("late/after-exit")

    assert in_flight > 0, "no write was in flight at the SIGTERM"
    assert status == 0, node.log_text()
    assert exited_after < grace, f"exited {exited_after:.1f}s after SIGTERM, grace is {grace}s"
    events = messages(node)
    assert "stopped" in events, node.log_text()
    assert events.index("shutting down") < events.index("stopped")
    # Sent after the shutdown began: refused as UNAVAILABLE (or, in the instant
    # before the server stopped listening, served), and never left hanging.
    assert "late/after-exit" not in late_acked
    assert late_failures, "no request was refused after the shutdown began"
    assert all(isinstance(error, Unavailable) for error in late_failures), {
        (error.reason, error.message) for error in late_failures
    }
    assert max(late_durations) < late_timeout, f"a request took {max(late_durations):.1f}s"
    # In flight at the SIGTERM: served, or refused as the node shuts down (or,
    # once it stopped listening, as unreachable); a deadline (a hang) or
    # anything else fails.
    assert all(error.reason in {"SHUTTING_DOWN", "UNAVAILABLE"} for error in writer.failures), {
        (error.reason, error.message) for error in writer.failures
    }

    node.start()
    assert_all_present(node.address, writer.acked | late_acked)


def test_sigterm_refuses_in_flight_requests_as_unavailable(nodes: NodeFactory) -> None:
    """Every request is either served or refused with UNAVAILABLE, which the client
    may safely retry elsewhere; CANCELLED leaves it unsure whether a write happened."""
    node = nodes("node1")
    writer = ConcurrentWriter(node.address, prefix="in-flight", concurrency=64)
    with writer:
        writer.wait_for_acks(200)
        node.signal(signal.SIGTERM)
        assert node.wait(timeout=20) == 0

    assert writer.failures
    assert all(isinstance(error, Unavailable) for error in writer.failures), sorted(
        {(error.reason, error.message) for error in writer.failures}
    )


def test_sigint_exits_0(nodes: NodeFactory) -> None:
    node = nodes("node1")
    with ringkv.Client(node.address) as client:
        client.set("before-sigint", b"kept")
    node.signal(signal.SIGINT)
    assert node.wait(timeout=20) == 0, node.log_text()
    events = messages(node)
    assert events.index("shutting down") < events.index("stopped")
    node.start()
    with ringkv.Client(node.address) as client:
        entry = client.get("before-sigint")
    assert entry is not None
    assert entry.value == b"kept"


# (c): the seed's flags and the GNU forms


@pytest.mark.parametrize(
    "flags",
    [
        pytest.param(
            ["-id", "node7", "-addr", "127.0.0.1:0", "-peers", SEED_PEERS, "-replicas", "2"],
            id="seed",
        ),
        pytest.param(
            ["--id=node7", "--addr=127.0.0.1:0", f"--peers={SEED_PEERS}", "--replicas=2"],
            id="gnu",
        ),
    ],
)
def test_seed_and_gnu_flags_start_the_named_node(
    spawn: Spawn, tmp_path: Path, flags: list[str]
) -> None:
    node = spawn(*flags)
    address = node.wait_serving()

    state = cluster_state(address)
    assert list(state.node_ids) == ["node2", "node3", "node7"]
    assert list(state.addresses) == ["127.0.0.1:50052", "127.0.0.1:50053", address]
    assert state.replicas == 2
    with ringkv.Client(address, token_aware=False) as client:
        assert client.ping() == "node7"
    serving = next(line for line in node.log_lines() if " serving " in line)
    assert "peers=node2,node3" in serving
    assert "node=node7" in serving
    assert node.stop() == 0, node.log_text()


# (d): bad flag values


@pytest.mark.parametrize(
    ("flags", "mentions"),
    [
        pytest.param(["-replicas", "0"], "replicas", id="replicas-0"),
        pytest.param(["-replicas", "x"], "'x'", id="replicas-x"),
        pytest.param(["-addr", "foo"], "'foo'", id="addr-no-port"),
        pytest.param(["-addr", "127.0.0.1:70000"], "70000", id="addr-port-range"),
        pytest.param(["-peers", "bad"], "'bad'", id="peers-bad"),
        pytest.param(["-peers", "a=1.2.3.4:5,a=1.2.3.4:6"], "'a'", id="peers-duplicate"),
        pytest.param(["-id", "node1", "-peers", "node1=127.0.0.1:5"], "own id", id="peers-self"),
        pytest.param(["--engine", "nosuch"], "nosuch", id="engine"),
        pytest.param(["--fsync", "sometimes"], "sometimes", id="fsync"),
        pytest.param(["--log-format", "xml"], "xml", id="log-format"),
        pytest.param(["--max-value-bytes", "0"], "max value bytes", id="max-value-bytes"),
        pytest.param(["-id", "has space"], "'has space'", id="id-with-space"),
    ],
)
def test_bad_flag_exits_2_with_one_line(tmp_path: Path, flags: list[str], mentions: str) -> None:
    begun = time.monotonic()
    result = run_node("-addr", "127.0.0.1:0", *flags, cwd=tmp_path)

    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("ringkv node: error: ")
    assert mentions in lines[0]
    assert result.stdout == ""
    assert time.monotonic() - begun < QUICK_EXIT_S
    assert list(tmp_path.iterdir()) == [], "a node that refused to start created files"


# (e), (f): resources another node holds


def test_second_node_on_the_same_data_dir_exits_1(nodes: NodeFactory, tmp_path: Path) -> None:
    first = nodes("node1")
    result = run_node(
        "-id", "node2", "-addr", "127.0.0.1:0", "--data-dir", str(first.data_dir), cwd=tmp_path
    )

    assert result.returncode == 1, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("ringkv node: error: ")
    assert str(first.data_dir) in lines[0]
    assert "in use" in lines[0]
    assert first.process is not None
    assert first.process.poll() is None
    with ringkv.Client(first.address) as client:
        client.set("still", b"serving")
        entry = client.get("still")
    assert entry is not None
    assert entry.value == b"serving"


def _listen_on_used_port(nodes: NodeFactory, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    first = nodes("node1")
    result = run_node(
        "-id", "node2", "-addr", first.address, "--data-dir", str(tmp_path / "node2"), cwd=tmp_path
    )
    assert first.process is not None
    assert first.process.poll() is None
    with ringkv.Client(first.address) as client:
        assert client.ping() == "node1"
    return result


def test_listening_on_a_used_port_exits_1(nodes: NodeFactory, tmp_path: Path) -> None:
    result = _listen_on_used_port(nodes, tmp_path)

    assert result.returncode == 1, result.stderr
    last = result.stderr.splitlines()[-1]
    assert last.startswith("ringkv node: error: cannot listen on 127.0.0.1:"), result.stderr


def test_listening_on_a_used_port_reports_one_line(nodes: NodeFactory, tmp_path: Path) -> None:
    result = _listen_on_used_port(nodes, tmp_path)

    assert result.returncode == 1, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("ringkv node: error: cannot listen on 127.0.0.1:")


# (g): log formats


LONE_NODE_EVENTS = [
    "bootstrapping",
    "member table adopted",
    "leading",
    "serving",
    "shutting down",
    "stopped",
]
"""What a node without peers logs from start to a clean stop."""


def test_json_log_lines_parse_and_name_the_node(nodes: NodeFactory) -> None:
    node = nodes("node1", "--log-format", "json")
    with ringkv.Client(node.address) as client:
        client.set("logged", b"json")
    assert node.stop() == 0

    lines = node.log_text().splitlines()
    events = [json.loads(line) for line in lines]
    assert all(isinstance(event, dict) for event in events)
    assert all(event["node"] == "node1" for event in events)
    assert [event["msg"] for event in events] == LONE_NODE_EVENTS
    assert all(ISO_TIMESTAMP.match(event["ts"] + " ") for event in events)


def test_text_log_lines_start_with_an_iso_timestamp(spawn: Spawn, tmp_path: Path) -> None:
    node = spawn("-id", "node1", "-addr", "127.0.0.1:0", "--log-format", "text")
    node.wait_serving()
    assert node.stop() == 0

    lines = node.log_lines()
    assert len(lines) == len(LONE_NODE_EVENTS), lines
    for line, message in zip(lines, LONE_NODE_EVENTS, strict=True):
        assert ISO_TIMESTAMP.match(line), line
        assert f" INFO {message}" in line
        assert line.endswith("node=node1")


# (h), (i): engines and data dirs


@pytest.mark.parametrize(("engine", "keeps_data"), [("memory", False), ("lmdb", True)])
def test_restart_keeps_data_only_with_lmdb(
    nodes: NodeFactory, engine: str, keeps_data: bool
) -> None:
    node = nodes("node1", "--engine", engine)
    with ringkv.Client(node.address) as client:
        client.set("survivor", b"maybe")
        assert client.get("survivor") is not None
    assert node.stop() == 0

    node.start()
    with ringkv.Client(node.address) as client:
        entry = client.get("survivor")
    assert (entry is not None) is keeps_data
    assert (node.data_dir / "data.mdb").is_file() is keeps_data


def test_default_data_dir_is_data_slash_node_id_in_the_working_dir(
    spawn: Spawn, tmp_path: Path
) -> None:
    workdir = tmp_path / "cwd"
    node = spawn("-id", "nodeX", "-addr", "127.0.0.1:0", cwd=workdir)
    address = node.wait_serving()
    with ringkv.Client(address) as client:
        client.set("where", b"here")
    serving = next(line for line in node.log_lines() if " serving " in line)
    assert node.stop() == 0

    assert f"data_dir={Path('data', 'nodeX')} " in serving
    assert (workdir / "data" / "nodeX" / "data.mdb").is_file()
    assert sorted(p.name for p in workdir.iterdir()) == ["data"]
    assert sorted(p.name for p in (workdir / "data").iterdir()) == ["nodeX"]


# A full disk


@pytest.mark.needs_root
def test_a_node_restarted_on_a_full_disk_serves_what_it_stored(
    nodes: NodeFactory, tmp_path: Path
) -> None:
    """Found by the fault suite (a restart while the disk was full): the node
    re-saved its unchanged member table at startup, hit ENOSPC and exited."""
    with small_tmpfs(tmp_path / "disk", size="4m") as disk:
        node = nodes("node1", "--data-dir", str(disk / "data"))
        try:
            with ringkv.Client(node.address, token_aware=False) as client:
                client.set("kept", b"before the disk filled")
            assert node.stop() == 0, node.log_text()
            fill(disk / "ballast")
            node.start()
            with ringkv.Client(node.address, token_aware=False) as client:
                entry = client.get("kept")
                assert entry is not None
                assert entry.value == b"before the disk filled"
                with pytest.raises(ringkv.errors.StorageFull):
                    client.set("more", b"x" * 65536)
        finally:
            node.kill()  # before the disk is unmounted under it


def test_a_node_restarted_with_its_clock_set_back_stamps_above_what_it_stamped_before(
    nodes: NodeFactory, tmp_path: Path
) -> None:
    """Found by the replication simulation: the hybrid clock restarts from the
    wall clock, and one stepped back would reissue timestamps the node used
    before, so a later write of a key could share the version of an earlier
    one and be taken for a copy of it. The clock starts past a mark kept in
    the data dir."""
    node = nodes("node1", "--data-dir", str(tmp_path / "data"))
    with ringkv.Client(node.address, token_aware=False) as client:
        before = client.set("first", b"before the restart")
    assert node.stop() == 0, node.log_text()
    node.extra_args += ["--clock-offset-ms", "-60000"]
    node.start()
    with ringkv.Client(node.address, token_aware=False) as client:
        # Another key: the node's copy of "first" cannot lift the clock.
        after = client.set("second", b"after the restart, a minute behind")
    assert after > before


@pytest.mark.needs_root
def test_a_full_disk_is_resource_exhausted_and_the_node_keeps_serving(
    nodes: NodeFactory, tmp_path: Path
) -> None:
    """Writes fail with RESOURCE_EXHAUSTED (STORAGE_FULL) once the disk is full;
    the node neither crashes nor loses what it stored, and still reads."""
    with small_tmpfs(tmp_path / "disk", size="2m") as disk:
        node = nodes("node1", "--data-dir", str(disk / "data"))
        try:
            value = bytes(range(256)) * 256  # 64 KiB
            stored: list[str] = []
            full: ringkv.errors.StorageFull | None = None
            with ringkv.Client(node.address, token_aware=False) as client:
                for i in range(200):  # 12.5 MiB: far past a 2 MiB disk
                    try:
                        client.set(f"fill/{i:03d}", value)
                    except ringkv.errors.StorageFull as error:
                        full = error
                        break
                    stored.append(f"fill/{i:03d}")
                assert full is not None, "200 writes of 64 KiB fitted on a 2 MiB disk"
                assert full.reason == "STORAGE_FULL"
                assert stored, "not even one write fitted"
                assert client.ping() == "node1"
                for key in stored:
                    entry = client.get(key)
                    assert entry is not None
                    assert entry.value == value
            assert node.process is not None
            assert node.process.poll() is None
            assert node.stop() == 0, node.log_text()
        finally:
            node.kill()  # before the disk is unmounted under it
