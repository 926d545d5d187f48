"""docker-compose.yml's cluster, run without a Docker engine.

Each compose service gets its own network namespace (``tests/support/netns.py``)
standing in for its container, and runs the exact command line Docker would
start: the Dockerfile's ENTRYPOINT followed by the service's ``command``, with
``ringkv`` run as ``python -m ringkv`` from this checkout and each named
volume's mount point (``/data``) replaced by a temporary directory, which is
also the working directory (the image's WORKDIR). As Docker's embedded DNS
does, service names resolve inside every "container": iproute2's
``ip netns exec`` bind-mounts ``/etc/netns/<namespace>/hosts`` over
/etc/hosts, so the test writes one such file per namespace mapping node1..node3
to their lab addresses (and removes it afterwards).

Published ports: Docker maps host port 5005N to port 50051 of container nodeN.
Every namespace has its own ports, so here each node listens on 50051 of its
own namespace, and the test, in the host's namespace, talks to
``<lab ip of nodeN>:50051``: the same node and port behind the host's
``127.0.0.1:5005N``. A fourth namespace plays the Docker host's shell, where
the service names do not resolve (no hosts file, no route to any DNS server),
to check what a client outside the compose network sees: the CLI learns
advertised addresses like ``node2:50051`` from GetClusterState that it cannot
reach, and must still be served through the published port it was given.

What this does not cover: building the image, Docker's networking and port
publishing, restart policies and health-check scheduling (no engine here);
tests/unit/test_deploy_files.py checks those parts of the files statically.

Needs root (namespaces); CI runs as root and must run it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import ringkv
from ringkv.client.admin import ClusterState, cluster_state
from ringkv.client.health import wait_until_serving
from ringkv.core.errors import RingkvError
from tests.support.deploy_files import compose_argv, load_compose, mounts, port_mappings
from tests.support.netns import NetnsLab, require_netns
from tests.support.nodes import child_env, wait_for

pytestmark = pytest.mark.needs_root

HOSTS_DIR = Path("/etc/netns")
"""Where ``ip netns exec`` finds per-namespace files to bind over /etc."""
NAMED_NETNS_DIR = Path("/run/netns")
START_TIMEOUT_S = 30.0
CLUSTER_TIMEOUT_S = 45.0
COMMAND_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 20.0
RINGKV = [sys.executable, "-m", "ringkv"]


@dataclass
class Container:
    """One compose service, run as a process in its own namespace."""

    name: str
    index: int
    """Its namespace in the lab."""
    spec: dict[str, Any]
    volumes: dict[str, Path]
    """Mount point in the container -> the temporary directory standing in."""
    logs: Path
    port: int
    """The container port the host publishes."""
    ip: str = ""
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    log_files: list[Path] = field(default_factory=list)

    @property
    def published(self) -> str:
        """Where the host reaches it (Docker: 127.0.0.1:5005N)."""
        return f"{self.ip}:{self.port}"

    def argv(self) -> list[str]:
        """The container's command line: ENTRYPOINT + command, ``ringkv`` from this
        checkout, volume paths mapped to their temporary directories."""
        argv = compose_argv(self.spec)
        assert argv[0] == "ringkv", argv
        return [*RINGKV, *(self._local_path(word) for word in argv[1:])]

    def _local_path(self, word: str) -> str:
        flag, eq, value = word.partition("=")
        if eq and flag.startswith("-"):
            return f"{flag}={self._local_path(value)}"
        for target, local in self.volumes.items():
            if word == target or word.startswith(target.rstrip("/") + "/"):
                return str(local) + word[len(target) :]
        return word

    def start(self, lab: NetnsLab) -> None:
        assert self.process is None or self.process.poll() is not None, "already running"
        self.starts += 1
        log = self.logs / f"{self.name}-{self.starts}.log"
        self.log_files.append(log)
        with log.open("wb") as out:
            self.process = lab.popen(
                self.index,
                self.argv(),
                stdout=out,
                stderr=subprocess.STDOUT,
                env=child_env(),
                cwd=next(iter(self.volumes.values())),
            )

    def stop(self) -> int:
        """SIGTERM, as ``docker stop`` sends, and wait for the exit status."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=STOP_TIMEOUT_S)

    def log_text(self) -> str:
        return "\n".join(
            f"--- {path.name}\n{path.read_text(errors='replace')}"
            for path in self.log_files
            if path.exists()
        )


def stale_hosts_dirs() -> list[Path]:
    """Hosts dirs of lab namespaces that no longer exist (a run killed outright)."""
    if not HOSTS_DIR.is_dir():
        return []
    alive = set(os.listdir(NAMED_NETNS_DIR)) if NAMED_NETNS_DIR.is_dir() else set()
    return [p for p in HOSTS_DIR.glob("rkv-*") if p.is_dir() and p.name not in alive]


@contextlib.contextmanager
def resolvable_names(lab: NetnsLab, names: dict[str, str], namespaces: list[int]) -> Iterator[None]:
    """Make ``names`` (host -> IP) resolve inside the given namespaces of ``lab``,
    through /etc/netns/<namespace>/hosts; removed again on exit, pass or fail."""
    for stale in stale_hosts_dirs():
        shutil.rmtree(stale, ignore_errors=True)
    created_root = not HOSTS_DIR.exists()
    HOSTS_DIR.mkdir(exist_ok=True)
    written: list[Path] = []
    text = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n" + "".join(
        f"{ip}\t{name}\n" for name, ip in names.items()
    )
    try:
        for i in namespaces:
            directory = HOSTS_DIR / lab.names[i]
            directory.mkdir()
            written.append(directory)
            (directory / "hosts").write_text(text)
        yield
    finally:
        for directory in written:
            shutil.rmtree(directory, ignore_errors=True)
        if created_root:
            with contextlib.suppress(OSError):
                HOSTS_DIR.rmdir()


@pytest.fixture
def compose_cluster(tmp_path: Path) -> Iterator[tuple[NetnsLab, list[Container]]]:
    """The compose file's services, started in their namespaces; all killed at the end."""
    require_netns()
    specs: dict[str, dict[str, Any]] = load_compose()["services"]
    containers = []
    for index, (name, spec) in enumerate(sorted(specs.items())):
        volumes = {}
        for mount in mounts(spec):
            local = tmp_path / "volumes" / (mount.source or f"{name}-anonymous")
            local.mkdir(parents=True)
            volumes[mount.target] = local
        assert volumes, f"{name} has no volume to work in"
        (mapping,) = port_mappings(spec)
        containers.append(
            Container(name, index, spec, volumes, tmp_path, port=mapping.container_port)
        )
    # One namespace per service, and one more for the Docker host's shell.
    with NetnsLab(len(containers) + 1) as lab:
        for container in containers:
            container.ip = lab.ips[container.index]
        names = {c.name: c.ip for c in containers}
        with resolvable_names(lab, names, [c.index for c in containers]):
            try:
                for container in containers:
                    container.start(lab)
                for container in containers:
                    if not wait_until_serving(container.published, timeout=START_TIMEOUT_S):
                        raise AssertionError(
                            f"{container.name} never served\n{container.log_text()}"
                        )
                yield lab, containers
            except BaseException:
                for container in containers:
                    print(container.log_text())
                raise
            finally:
                # The lab SIGKILLs whatever is left when it closes; stop
                # gracefully first so that logs end cleanly.
                for container in containers:
                    if container.process is not None and container.process.poll() is None:
                        with contextlib.suppress(subprocess.TimeoutExpired):
                            container.stop()


def state_of(container: Container) -> ClusterState | None:
    try:
        return cluster_state(container.published, timeout=1.0)
    except RingkvError:
        return None


def one_cluster(containers: list[Container]) -> bool:
    """Every node lists every service at its advertised name, all alive and in
    the ring, and all follow one leader."""
    expected = {c.name: f"{c.name}:{c.port}" for c in containers}
    leaders = set()
    for container in containers:
        state = state_of(container)
        if state is None or not state.leader_id:
            return False
        if {m.node_id: m.address for m in state.members} != expected:
            return False
        if any(m.state != "alive" or m.status != "normal" for m in state.members):
            return False
        leaders.add((state.leader_id, state.term))
    return len(leaders) == 1


def run_in(lab: NetnsLab, index: int, argv: list[str]) -> subprocess.CompletedProcess[str]:
    """Run a command to completion inside namespace ``index`` (as ``docker exec`` would
    for a service's namespace), with this checkout's ringkv importable."""
    return subprocess.run(
        lab.command(index, argv),
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        env=child_env(),
        check=False,
    )


def test_compose_services_form_one_cluster_and_serve_through_their_published_ports(
    compose_cluster: tuple[NetnsLab, list[Container]],
) -> None:
    lab, containers = compose_cluster
    started = time.monotonic()
    docker_host = len(containers)  # the namespace with no service names
    by_name = {c.name: c for c in containers}

    # One cluster of node1..node3, one leader: the highest id (bully).
    wait_for(
        lambda: one_cluster(containers),
        timeout=CLUSTER_TIMEOUT_S,
        interval=0.2,
        what="the compose services to form one cluster",
    )
    states = [state_of(c) for c in containers]
    assert all(s is not None and s.leader_id == "node3" for s in states), states
    assert all(s is not None and s.replicas == 2 for s in states), states
    print(f"one cluster {time.monotonic() - started:.1f}s after the nodes served")

    # Each container's health check, run inside it as Docker would.
    for container in containers:
        test = container.spec["healthcheck"]["test"]
        assert test[:2] == ["CMD", "ringkv"], test
        done = run_in(lab, container.index, [*RINGKV, *test[2:]])
        assert done.returncode == 0, (container.name, done.stderr)
        assert "SERVING" in done.stderr

    # Writes through each published port are read back through every one.
    written = {}
    for container in containers:
        with ringkv.Client(container.published, token_aware=False, timeout=5.0) as client:
            for i in range(20):
                key = f"via-{container.name}/{i}"
                client.set(key, key.encode())
                written[key] = key.encode()
            assert client.set(f"cas-{container.name}", b"1", if_absent=True) > 0
    for container in containers:
        with ringkv.Client(container.published, token_aware=False, timeout=5.0) as client:
            got = client.get_many(sorted(written))
            assert {k: e.value if e else None for k, e in got.items()} == written, container.name
            deleted = f"via-{container.name}/0"
            assert client.delete(deleted)
            assert client.get(deleted) is None
            del written[deleted]

    print(f"health checks, reads and writes done at {time.monotonic() - started:.1f}s")
    # The CLI on the Docker host: the advertised node names do not resolve
    # there, yet each published port serves it (each key read back through
    # another port).
    for n, container in enumerate(containers):
        key = f"cli-{container.name}"
        done = run_in(
            lab, docker_host, [*RINGKV, "set", key, "v", "--endpoint", container.published]
        )
        assert done.returncode == 0, (container.name, done.stderr)
        reader = containers[(n + 1) % len(containers)]
        done = run_in(lab, docker_host, [*RINGKV, "get", key, "--endpoint", reader.published])
        assert (done.returncode, done.stdout) == (0, "v"), (reader.name, done.stderr)
    unresolved = run_in(lab, docker_host, ["getent", "hosts", "node1"])
    assert unresolved.returncode != 0, "service names should not resolve on the host"
    # Inside the compose network (`docker compose exec node1 ringkv ...`, whose
    # default endpoint is the node itself) the names resolve, so conditional
    # writes, which are never retried on another address, work too.
    done = run_in(lab, by_name["node1"].index, [*RINGKV, "set", "cli-cas", "v", "--if-absent"])
    assert done.returncode == 0, done.stderr
    print(f"CLI from the Docker host done at {time.monotonic() - started:.1f}s")
    # `docker stop node1`: its health check fails; the others keep serving.
    node1 = by_name["node1"]
    assert node1.stop() == 0, node1.log_text()
    done = run_in(lab, docker_host, [*RINGKV, "health", "--endpoint", node1.published])
    assert done.returncode == 1
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    with ringkv.Client(by_name["node2"].published, token_aware=False, timeout=10.0) as client:
        client.set("while-node1-was-down", b"yes")

    print(f"node1 stopped, health check failing, at {time.monotonic() - started:.1f}s")
    # `docker start node1` (or its restart policy): the same command, the same
    # volume; it resumes its membership and catches up.
    node1.start(lab)
    assert wait_until_serving(node1.published, timeout=START_TIMEOUT_S), node1.log_text()
    wait_for(
        lambda: one_cluster(containers),
        timeout=CLUSTER_TIMEOUT_S,
        interval=0.2,
        what="node1 to be back in the cluster",
    )
    with ringkv.Client(node1.published, token_aware=False, timeout=5.0) as client:
        entry = client.get("while-node1-was-down")
        assert entry is not None and entry.value == b"yes"
        entry = client.get("via-node1/1")
        assert entry is not None and entry.value == b"via-node1/1"
    print(f"whole scenario took {time.monotonic() - started:.1f}s")
