"""Real ringkv node processes for integration tests.

Each node runs as ``python -m ringkv node`` on 127.0.0.1 with its own data
dir and a JSON log file. A node asked for port 0 reports the port it bound in
its "serving" log event, so tests never race for free ports.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ringkv.client.admin import cluster_state
from ringkv.client.channels import PLAINTEXT, Security
from ringkv.client.health import wait_until_serving
from ringkv.core.errors import RingkvError
from ringkv.core.records import Record
from ringkv.storage.lmdb_engine import LmdbEngine

START_TIMEOUT_S = 30.0


def wait_for(
    condition: Callable[[], bool], *, timeout: float, interval: float = 0.05, what: str
) -> None:
    """Poll ``condition`` until it holds; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@dataclass
class NodeProcess:
    """One ``ringkv node`` process and the files it leaves behind."""

    node_id: str
    workdir: Path
    extra_args: list[str] = field(default_factory=list)
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    security: Security = PLAINTEXT
    """How the test reaches the node (TLS, client certificate, token)."""

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"node-{self.starts}.log"

    @property
    def host(self) -> str:
        """The address the node listens on and is reached at."""
        return "127.0.0.1"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "ringkv", "node",
            "-id", self.node_id,
            "-addr", self.address,
            "--data-dir", str(self.data_dir),
            "--log-format", "json",
            *self.extra_args,
        ]  # fmt: skip

    def start(self, timeout: float = START_TIMEOUT_S) -> None:
        """Start the process and wait until it serves."""
        self.launch()
        self.wait_serving(timeout)

    def launch(self) -> None:
        """Start the process without waiting for it."""
        assert self.process is None or self.process.poll() is not None, "already running"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, env=child_env()
            )

    def wait_serving(self, timeout: float = START_TIMEOUT_S) -> None:
        """Wait until the launched process serves."""
        serving = self._wait_for_event("serving", timeout)
        self.port = int(serving["port"])
        if not wait_until_serving(self.address, timeout=timeout, security=self.security):
            raise AssertionError(f"{self.node_id} never reported SERVING\n{self.log_text()}")

    def _wait_for_event(self, message: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.events():
                if event.get("msg") == message:
                    return event
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(
                    f"{self.node_id} exited with {self.process.returncode}\n{self.log_text()}"
                )
            time.sleep(0.05)
        raise AssertionError(f"{self.node_id} did not log {message!r}\n{self.log_text()}")

    def events(self) -> Iterator[dict[str, Any]]:
        """The JSON log events of the current run."""
        if not self.log_path.exists():
            return
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                yield json.loads(line)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL: no chance to flush or clean up."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def signal(self, sig: signal.Signals) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def wait(self, timeout: float = 20.0) -> int:
        """Wait for the process to exit; its exit status."""
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait: the graceful shutdown path."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.signal(signal.SIGTERM)
        return self.wait(timeout)


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    # The child imports ringkv from this checkout even without an install.
    src = str(Path(__file__).resolve().parents[2] / "src")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    return env


class NodeFactory:
    """Starts nodes for one test and kills every one of them afterwards."""

    def __init__(self, root: Path) -> None:
        self._root = root
        self.nodes: list[NodeProcess] = []

    def __call__(
        self,
        node_id: str = "node1",
        *args: str,
        start: bool = True,
        security: Security = PLAINTEXT,
    ) -> NodeProcess:
        node = NodeProcess(
            node_id, self._root / f"{node_id}-{len(self.nodes)}", list(args), security=security
        )
        self.nodes.append(node)
        if start:
            node.start()
        return node

    def cleanup(self) -> None:
        for node in self.nodes:
            node.kill()


def free_ports(count: int, *, partner_offset: int = 0) -> list[int]:
    """Ports free on 127.0.0.1 right now (held together so they are distinct);
    with ``partner_offset``, each port plus the offset is free too (a member port)."""
    sockets: list[socket.socket] = []

    def hold(port: int) -> int | None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            sock.close()
            return None
        sockets.append(sock)
        return int(sock.getsockname()[1])

    ports: list[int] = []
    try:
        for _ in range(count * 50):
            port = hold(0)
            assert port is not None
            partner_free = partner_offset == 0 or (
                0 < port + partner_offset < 65536 and hold(port + partner_offset) is not None
            )
            if partner_free:
                ports.append(port)
            if len(ports) == count:
                return ports
        raise AssertionError(f"found no {count} free ports with partners {partner_offset} away")
    finally:
        for sock in sockets:
            sock.close()


class ClusterFactory:
    """Starts clusters of nodes that name each other as peers, as the seed's
    command lines do; every node is killed when the test ends."""

    def __init__(self, nodes: NodeFactory) -> None:
        self._nodes = nodes

    def __call__(
        self,
        size: int = 3,
        *args: str,
        replicas: int = 3,
        start: bool = True,
        security: Security = PLAINTEXT,
        port_offset: int = 0,
    ) -> list[NodeProcess]:
        """``port_offset``: each node's member port is its port plus this, also free."""
        ports = free_ports(size, partner_offset=port_offset)
        ids = [f"node{i + 1}" for i in range(size)]
        members = []
        for node_id, port in zip(ids, ports, strict=True):
            peers = ",".join(
                f"{peer}=127.0.0.1:{peer_port}"
                for peer, peer_port in zip(ids, ports, strict=True)
                if peer != node_id
            )
            node = self._nodes(
                node_id,
                "-peers",
                peers,
                "-replicas",
                str(replicas),
                *args,
                start=False,
                security=security,
            )
            node.port = port
            members.append(node)
        if start:
            for node in members:
                node.launch()
            for node in members:
                node.wait_serving()
        return members


def agreed_leader(members: Sequence[NodeProcess]) -> tuple[str, int] | None:
    """The leader and term every given node reports, if they all agree on one."""
    seen = set()
    for node in members:
        try:
            state = cluster_state(node.address, timeout=1.0, security=node.security)
        except RingkvError:
            return None
        if not state.leader_id:
            return None
        seen.add((state.leader_id, state.term))
    return seen.pop() if len(seen) == 1 else None


def wait_for_leader(
    members: Sequence[NodeProcess], leader: str | None = None, *, timeout: float = 30.0
) -> tuple[str, int]:
    """Wait until every node follows one leader (``leader``, if given); it and its term."""
    found: list[tuple[str, int]] = []

    def agreed() -> bool:
        result = agreed_leader(members)
        if result is not None and leader in (None, result[0]):
            found.append(result)
            return True
        return False

    wait_for(
        agreed,
        timeout=timeout,
        interval=0.05,
        what=f"every node to follow {leader or 'one leader'}",
    )
    return found[-1]


def stop_all(members: Sequence[NodeProcess]) -> None:
    """SIGTERM every running node at once, then wait for each to exit cleanly."""
    running = [n for n in members if n.process is not None and n.process.poll() is None]
    for node in running:
        node.signal(signal.SIGTERM)
    for node in running:
        assert node.wait(timeout=30) == 0, f"{node.node_id} did not stop cleanly\n{node.log_text()}"


def stored_records(node: NodeProcess) -> dict[str, Record]:
    """Every record (tombstones included) in a stopped node's LMDB data dir, by key."""
    engine = LmdbEngine(node.data_dir)
    try:
        return {record.key.decode(): record for record in engine.scan(0, 2**64)}
    finally:
        engine.close()
