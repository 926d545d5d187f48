"""Smoke tests of NetnsLab with real processes: echo servers in namespaces, reached
(or not) by short-timeout clients from other namespaces and from the host.

These pin down what partition tests rely on: every node reaches every other
node and the host through the bridge; a cut drops traffic both ways and looks
like a real partition (a timeout, not an error); heal() restores every link;
and nothing a lab built outlives it, even when the test fails or is killed.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support import netns
from tests.support.netns import HOST, Cut, Endpoint, NetnsError, NetnsLab, cleanup_stale
from tests.support.nodes import wait_for

pytestmark = pytest.mark.needs_root

REPO = Path(__file__).resolve().parents[2]
ECHO_PORT = 7000
"""Each namespace has its own ports, so a fixed port cannot clash across labs."""
CONNECT_TIMEOUT_S = 0.5
"""Plenty on one bridge; short, because every cut link costs one of these."""
WAIT_S = 10.0

ECHO_SERVER = """
import socket, sys
server = socket.create_server((sys.argv[1], int(sys.argv[2])))
while True:
    conn, _ = server.accept()
    with conn:
        conn.settimeout(2)
        try:
            conn.sendall(conn.recv(64))
        except OSError:
            pass
"""

CLIENT = """
import errno, socket, sys
try:
    address = (sys.argv[1], int(sys.argv[2]))
    with socket.create_connection(address, timeout=float(sys.argv[3])) as conn:
        conn.sendall(b"ping")
        print("ok" if conn.recv(64) == b"ping" else "garbled")
except TimeoutError:
    print("timeout")
except OSError as error:
    print(errno.errorcode.get(error.errno or 0, repr(error)))
"""


@pytest.fixture
def lab() -> Iterator[NetnsLab]:
    netns.require_netns()
    with NetnsLab(3) as built:
        yield built


def reach(lab: NetnsLab, src: Endpoint, dst_ip: str, port: int = ECHO_PORT) -> str:
    """Connect from ``src`` to ``dst_ip``: "ok", "timeout", or the errno's name."""
    argv = [sys.executable, "-I", "-c", CLIENT, dst_ip, str(port), str(CONNECT_TIMEOUT_S)]
    if src == HOST:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=WAIT_S, check=False)
    else:
        done = lab.run(int(src), argv, timeout=WAIT_S)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def start_echo(lab: NetnsLab, i: int) -> subprocess.Popen[bytes]:
    """An echo server in namespace ``i`` on its lab address, once it accepts connections."""
    server: subprocess.Popen[bytes] = lab.popen(
        i,
        [sys.executable, "-I", "-c", ECHO_SERVER, lab.ips[i], str(ECHO_PORT)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def serving() -> bool:
        assert server.poll() is None, f"echo server in ns {i} exited with {server.returncode}"
        return reach(lab, HOST, lab.ips[i]) == "ok"

    wait_for(serving, timeout=WAIT_S, what=f"the echo server in ns {i}")
    return server


@contextlib.contextmanager
def host_echo(ip: str) -> Iterator[int]:
    """An echo server in this process on ``ip``; yields its port."""
    server = socket.create_server((ip, 0))
    server.settimeout(0.1)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(2)
                with contextlib.suppress(OSError):
                    conn.sendall(conn.recv(64))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join(timeout=WAIT_S)
        server.close()


def eventually_ok(
    lab: NetnsLab, src: Endpoint, dst_ip: str, port: int = ECHO_PORT, note: str = ""
) -> None:
    """Succeeds at the first echo; retries, within a deadline, a connect slowed by a busy
    machine, so only a link that stays down fails."""
    wait_for(
        lambda: reach(lab, src, dst_ip, port) == "ok",
        timeout=WAIT_S,
        what=f"{src} -> {dst_ip}:{port} {note}".strip(),
    )


def route_dev(lab: NetnsLab, src: Endpoint, dst_ip: str) -> str:
    """The device ``src`` sends traffic for ``dst_ip`` out of (its kernel's answer)."""
    argv = ["ip", "-j", "route", "get", dst_ip]
    if src == HOST:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=WAIT_S, check=True)
    else:
        done = lab.run(int(src), argv, timeout=WAIT_S, check=True)
    return str(json.loads(done.stdout)[0]["dev"])


def namespaces() -> set[str]:
    out = subprocess.run(
        ["ip", "-j", "netns", "list"], capture_output=True, text=True, check=True
    ).stdout
    return {ns["name"] for ns in json.loads(out or "[]")}


def links() -> set[str]:
    out = subprocess.run(
        ["ip", "-j", "link", "show"], capture_output=True, text=True, check=True
    ).stdout
    return {link["ifname"] for link in json.loads(out)}


def host_routes_into(net: ipaddress.IPv4Network) -> list[str]:
    out = subprocess.run(
        ["ip", "-j", "-4", "route", "show", "table", "all"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [
        route["dst"]
        for route in json.loads(out)
        if route["dst"] != "default" and ipaddress.IPv4Network(route["dst"]).overlaps(net)
    ]


def assert_gone(net: ipaddress.IPv4Network, names: list[str], bridge: str) -> None:
    lab_id = bridge.removeprefix(netns.BRIDGE_PREFIX)
    assert not set(names) & namespaces()
    assert not [link for link in links() if lab_id in link]
    assert host_routes_into(net) == []


def process_gone(pid: int) -> bool:
    """Exited: no such process, or a zombie nobody has reaped (PID 1 may not reap)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def read_line(process: subprocess.Popen[str], timeout: float) -> str:
    """The next stdout line of ``process``, or fail after ``timeout`` seconds."""
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            raise AssertionError(f"no output from pid {process.pid} in {timeout}s")
    return process.stdout.readline()


# Connectivity


def test_every_node_reaches_every_other_node_and_the_host(lab: NetnsLab) -> None:
    """With bridge-nf-call-iptables on, bridged traffic crosses the host firewall;
    this is where a firewall that drops it would show."""
    servers = [start_echo(lab, i) for i in range(lab.count)]
    pids = subprocess.run(
        ["ip", "netns", "pids", lab.names[0]], capture_output=True, text=True, check=True
    ).stdout.split()
    assert str(servers[0].pid) in pids, "popen() should return the process in the namespace"

    bridge_nf = Path("/proc/sys/net/bridge/bridge-nf-call-iptables")
    hint = (
        f"(bridge-nf-call-iptables={bridge_nf.read_text().strip()})" if bridge_nf.exists() else ""
    )
    with host_echo(lab.host_ip) as host_port:
        for src in range(lab.count):
            for dst in range(lab.count):
                if dst != src:
                    eventually_ok(lab, src, lab.ips[dst], note=hint)
            eventually_ok(lab, src, lab.host_ip, host_port, note=hint)
    for dst in range(lab.count):
        eventually_ok(lab, HOST, lab.ips[dst], note=hint)


# Cuts


def test_isolate_cuts_a_node_off_both_ways_and_heal_restores_it(lab: NetnsLab) -> None:
    start_echo(lab, 0)
    start_echo(lab, 2)

    lab.isolate(0)
    assert lab.cuts == {frozenset((0, 1)), frozenset((0, 2)), frozenset((0, HOST))}
    # Both ends of every cut route into their sink, so one-way traffic (UDP) is cut too.
    for i, j in [(0, 1), (0, 2)]:
        assert route_dev(lab, i, lab.ips[j]) == route_dev(lab, j, lab.ips[i]) == netns.NS_SINK
    assert route_dev(lab, HOST, lab.ips[0]).startswith(netns.SINK_PREFIX)
    assert route_dev(lab, 0, lab.host_ip) == netns.NS_SINK
    assert route_dev(lab, 1, lab.ips[2]) == "eth0"
    assert reach(lab, 1, lab.ips[0]) == "timeout"  # silent, like a real partition
    assert reach(lab, HOST, lab.ips[0]) == "timeout"
    assert reach(lab, 0, lab.ips[2]) == "timeout"  # and the other way
    eventually_ok(lab, 1, lab.ips[2])  # the rest of the lab is untouched

    lab.isolate(0)  # cutting again is harmless
    lab.heal()
    assert lab.cuts == frozenset()
    eventually_ok(lab, 1, lab.ips[0])
    eventually_ok(lab, HOST, lab.ips[0])
    eventually_ok(lab, 0, lab.ips[2])


def test_partition_splits_the_groups_and_the_host_still_sees_every_node(lab: NetnsLab) -> None:
    for i in range(lab.count):
        start_echo(lab, i)

    lab.partition([0], [1, 2])
    assert reach(lab, 1, lab.ips[0]) == "timeout"
    assert reach(lab, 0, lab.ips[2]) == "timeout"
    eventually_ok(lab, 1, lab.ips[2])
    eventually_ok(lab, 2, lab.ips[1])
    for i in range(lab.count):
        eventually_ok(lab, HOST, lab.ips[i])

    lab.heal()
    eventually_ok(lab, 1, lab.ips[0])
    eventually_ok(lab, 0, lab.ips[2])


@pytest.mark.parametrize(
    ("cut", "error"),
    [("blackhole", "EINVAL"), ("unreachable", "EHOSTUNREACH"), ("prohibit", "EACCES")],
)
def test_kernel_route_types_fail_the_local_sender_at_once(cut: Cut, error: str) -> None:
    """Unlike "drop", these route types make a local connect() fail immediately:
    fine for fast failure paths, wrong for simulating a partition's timeouts."""
    netns.require_netns()
    with NetnsLab(2, cut=cut) as lab:
        start_echo(lab, 0)
        lab.isolate(0)
        assert reach(lab, 1, lab.ips[0]) == error
        assert reach(lab, HOST, lab.ips[0]) == error
        lab.heal()
        eventually_ok(lab, 1, lab.ips[0])


def test_bad_cuts_are_refused(lab: NetnsLab) -> None:
    with pytest.raises(ValueError, match="more than one group"):
        lab.partition([0, 1], [1, 2])
    with pytest.raises(ValueError, match="no node 3"):
        lab.isolate(3)
    with pytest.raises(ValueError, match="from itself"):
        lab.cut(1, 1)
    assert lab.cuts == frozenset()


# Cleanup


@dataclass
class Leftovers:
    """What a failing test left running and built, to look for after its lab exited."""

    sleepers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    orphan: int = 0


def fail_inside(lab: NetnsLab, leftovers: Leftovers) -> None:
    with lab:
        leftovers.sleepers = [lab.popen(i, ["sleep", "60"]) for i in range(lab.count)]
        # A grandchild in its own session, which killing the child's group misses.
        spawner: subprocess.Popen[str] = lab.popen(
            0,
            [
                sys.executable,
                "-I",
                "-c",
                "import subprocess; "
                "print(subprocess.Popen(['sleep', '60'], start_new_session=True).pid)",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        leftovers.orphan = int(read_line(spawner, WAIT_S))
        lab.isolate(0)
        raise RuntimeError("the test failed")


def test_exit_removes_everything_even_when_the_test_fails() -> None:
    netns.require_netns()
    lab = NetnsLab(2)
    leftovers = Leftovers()
    with pytest.raises(RuntimeError, match="the test failed"):
        fail_inside(lab, leftovers)

    assert [sleeper.returncode for sleeper in leftovers.sleepers] == [-signal.SIGKILL] * 2
    orphan = leftovers.orphan
    wait_for(lambda: process_gone(orphan), timeout=WAIT_S, what=f"orphan {orphan} to die")
    assert_gone(lab.network, lab.names, lab.bridge)
    lab.close()  # idempotent


def test_a_setup_that_fails_half_way_removes_what_it_built(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    netns.require_netns()
    lab = NetnsLab(3)
    real_ip = netns._ip

    def failing_ip(*args: str, netns: str | None = None, stdin: str | None = None) -> str:
        if args == ("netns", "add", lab.names[2]):
            raise NetnsError("injected failure")
        return real_ip(*args, netns=netns, stdin=stdin)

    monkeypatch.setattr(netns, "_ip", failing_ip)
    with pytest.raises(NetnsError, match="injected failure"), lab:
        pass
    monkeypatch.undo()

    assert_gone(lab.network, lab.names, lab.bridge)


def test_cleanup_stale_removes_the_lab_of_a_killed_process() -> None:
    """A SIGKILLed run cannot clean up; the next lab removes what it left.
    Live labs, like the one open here, are left alone."""
    netns.require_netns()
    owner_code = """
import json, time
from tests.support.netns import NetnsLab
lab = NetnsLab(2, cut="blackhole").__enter__()  # blackhole: host routes outlive links
sleeper = lab.popen(0, ["sleep", "60"])
lab.isolate(0)
print(json.dumps([str(lab.network), lab.names, lab.bridge, sleeper.pid]), flush=True)
time.sleep(60)
"""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    owner = subprocess.Popen(
        [sys.executable, "-c", owner_code], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        net_text, names, bridge, sleeper = json.loads(read_line(owner, WAIT_S))
    finally:
        owner.kill()
        owner.wait(timeout=WAIT_S)
        assert owner.stdout is not None
        owner.stdout.close()
    net = ipaddress.IPv4Network(net_text)

    with NetnsLab(1) as live:
        cleanup_stale()  # another xdist worker's lab may have beaten us to it
        assert_gone(net, names, bridge)
        wait_for(lambda: process_gone(sleeper), timeout=WAIT_S, what=f"sleeper {sleeper}")
        assert set(live.names) <= namespaces()
        assert live.bridge in links()
