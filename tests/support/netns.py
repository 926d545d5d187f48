"""Network namespaces for partition tests: one namespace per node, links cut with routes.

A ``NetnsLab`` gives each ringkv node process its own network stack, so a test
can cut the network between real processes without touching the processes.
It uses nothing but iproute2: one bridge on the host, and per node a namespace
``rkv-<tag>-<i>`` joined to the bridge by a veth pair::

    host: bridge rkb<id> 10.a.b.254/24
            |-- rkh<id>-0 <veth> eth0 10.a.b.1/24   in namespace rkv-<tag>-0
            |-- rkh<id>-1 <veth> eth0 10.a.b.2/24   in namespace rkv-<tag>-1
            ...

A cut between two endpoints (two nodes, or a node and the host) is a pair of
/32 routes, one on each side, each sending traffic for the other side's
address somewhere it never arrives. A /32 beats the connected /24, so this
works even though every namespace sits on the same L2 bridge. Routes are
tagged with protocol ``ROUTE_PROTO``, so healing is a flush of exactly them.

How a cut behaves for the *sender* depends on where the route points, which
matters for what a partition test observes (``cut=`` picks it):

``"drop"`` (default)
    The route points at a "sink" veth whose peer discards every frame. Sends
    succeed and packets vanish: connects and RPCs time out, exactly like a
    real partition.
``"blackhole"`` / ``"unreachable"`` / ``"prohibit"``
    Kernel route types. A *local* sender fails at once (``EINVAL``,
    ``EHOSTUNREACH`` and ``EACCES`` respectively); only the far side sees a
    silent drop. Useful for fast failure paths, not for timeouts.

Namespaces get no default route: a node reaches its lab's /24 and nothing
else, so labs running side by side (pytest-xdist) cannot see each other.
Cuts cover the IPv4 lab addresses only; bind nodes to ``lab.ips[i]``.

Everything a lab creates is removed when it exits, pass or fail, and also when
its setup fails half-way. A run killed outright (SIGKILL, a lost CI runner)
cannot clean up; ``cleanup_stale()``, which every new lab runs first, removes
what such runs left. The bridge's alias names the owning process for that.

With ``bridge-nf-call-iptables`` set (br_netfilter loaded), bridged traffic
passes the host's iptables FORWARD chain; this module does not change that
host-global setting, so a host firewall that drops forwarded traffic will
break the lab (the smoke tests in tests/chaos/test_netns_lab.py show it).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import ipaddress
import json
import os
import random
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal, Self

from tests.support.tmpfs import cannot_run

Cut = Literal["drop", "blackhole", "unreachable", "prohibit"]
"""Where a cut's routes send traffic; see the module docstring."""

HOST: Final = "host"
"""The host (the test process's own network namespace) as a cut endpoint."""

Endpoint = int | Literal["host"]

ROUTE_PROTO: Final = "183"
"""Routing protocol number that marks routes a lab added (unassigned by IANA/Linux)."""

POOL: Final = ipaddress.IPv4Network("10.200.0.0/13")
"""Labs take a random /24 from here that no host route or address overlaps."""

NS_PREFIX: Final = "rkv-"
BRIDGE_PREFIX: Final = "rkb"
VETH_PREFIX: Final = "rkh"
SINK_PREFIX: Final = "rks"
NS_SINK: Final = "rkvsink"
ALIAS_PREFIX: Final = "ringkv-netns-lab"

IP_TIMEOUT_S: Final = 30.0
"""No ``ip`` command should take long; bound them so a wedged kernel fails the test."""
KILL_WAIT_S: Final = 10.0
"""How long a SIGKILLed process may take to be reaped before we report it."""

_TAG = re.compile(r"[A-Za-z0-9_.]{1,40}")
_NS_NAME = re.compile(rf"{NS_PREFIX}(.+)-(\d+)")


class NetnsError(RuntimeError):
    """An ``ip`` command failed, or a lab could not be built or removed."""


# iproute2


@functools.cache
def _ip_path() -> str:
    path = shutil.which("ip")
    if path is None:
        raise NetnsError("iproute2's `ip` command is not installed")
    return path


def _ip(*args: str, netns: str | None = None, stdin: str | None = None) -> str:
    """Run ``ip [-n netns] args...``; raise with its stderr when it fails."""
    argv = [_ip_path(), *(["-n", netns] if netns is not None else []), *args]
    try:
        done = subprocess.run(
            argv,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=IP_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as error:
        raise NetnsError(f"`{shlex.join(argv)}` did not finish in {IP_TIMEOUT_S}s") from error
    if done.returncode != 0:
        detail = f"\ninput:\n{stdin}" if stdin is not None else ""
        raise NetnsError(
            f"`{shlex.join(argv)}` failed (exit {done.returncode}): {done.stderr.strip()}{detail}"
        )
    return done.stdout


def _ip_batch(lines: Sequence[str], *, netns: str | None = None) -> None:
    """Run several ``ip`` commands in one process; it stops at the first failure."""
    if lines:
        _ip("-batch", "-", netns=netns, stdin="\n".join(lines) + "\n")


def _ip_json(*args: str) -> list[dict[str, Any]]:
    out = _ip("-j", *args).strip()
    if not out:  # `ip -j netns list` prints nothing when there are none
        return []
    parsed: list[dict[str, Any]] = json.loads(out)
    return parsed


def _links() -> set[str]:
    return {str(link["ifname"]) for link in _ip_json("link", "show")}


def _namespaces() -> set[str]:
    return {str(ns["name"]) for ns in _ip_json("netns", "list")}


def _kill_namespace_processes(name: str) -> None:
    """SIGKILL whatever still runs in namespace ``name``, children of children included.

    Deleting a namespace's name does not end it: it lives on (with its veth)
    as long as one process is inside, so nothing may outlive the lab.
    """
    for pid in _ip("netns", "pids", name).split():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)


def _remove(
    namespaces: Iterable[str], links: Iterable[str], net: str | None, bridge: str | None
) -> list[str]:
    """Remove what exists of the given namespaces, host links, host routes into ``net``
    and ``bridge``; return the errors. Hold ``_global_lock()`` while calling this.

    Host veth ends go first: deleting one deletes its pair at once, whereas a
    deleted namespace frees its devices later, in the background. The bridge
    goes last, so that its alias names the owner of anything left behind by a
    teardown that was itself killed.
    """
    errors: list[str] = []

    def attempt(action: str, args: Sequence[str], still_there: Callable[[], bool]) -> None:
        try:
            _ip(*args)
        except NetnsError as error:
            if still_there():
                errors.append(f"{action}: {error}")

    wanted_ns = [name for name in namespaces if name in _namespaces()]
    for name in wanted_ns:
        try:
            _kill_namespace_processes(name)
        except NetnsError as error:
            if name in _namespaces():
                errors.append(f"killing processes in {name}: {error}")
    if net is not None:
        flush = ["route", "flush", "root", net, "proto", ROUTE_PROTO]
        attempt("removing host routes", flush, lambda: True)
    present_links = _links()
    for link in links:
        if link in present_links:
            attempt(f"deleting {link}", ["link", "del", link], _in(link, _links))
    for name in wanted_ns:
        attempt(f"deleting namespace {name}", ["netns", "del", name], _in(name, _namespaces))
    if bridge is not None and bridge in present_links:
        attempt(f"deleting {bridge}", ["link", "del", bridge], _in(bridge, _links))
    return errors


def _in(name: str, listing: Callable[[], set[str]]) -> Callable[[], bool]:
    return lambda: name in listing()


# Locking and ownership


@contextlib.contextmanager
def _global_lock() -> Iterator[None]:
    """Serialise lab setup and stale cleanup across processes (pytest-xdist workers).

    Under the lock, a subnet is chosen and claimed before anyone else looks,
    and every namespace of a lab being built already has its owning bridge,
    so ``cleanup_stale`` never mistakes a lab in progress for a leftover.
    """
    directory = Path("/run") if os.access("/run", os.W_OK) else Path(tempfile.gettempdir())
    with (directory / "ringkv-netns.lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _start_time(pid: int) -> str | None:
    """A process's start time in clock ticks: with the pid, it names one process forever."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22; the name may hold spaces


def _pid_namespace() -> str:
    return os.readlink("/proc/self/ns/pid")


@dataclass(frozen=True)
class _Owner:
    """Who built a lab, as written in its bridge's alias."""

    bridge: str
    pid: int
    start: str
    pidns: str
    tag: str
    net: str

    def alias(self) -> str:
        return (
            f"{ALIAS_PREFIX} pid={self.pid} start={self.start} pidns={self.pidns}"
            f" tag={self.tag} net={self.net}"
        )

    @classmethod
    def parse(cls, bridge: str, alias: str) -> _Owner | None:
        words = alias.split()
        if not words or words[0] != ALIAS_PREFIX:
            return None
        fields = dict(word.split("=", 1) for word in words[1:] if "=" in word)
        try:
            return cls(
                bridge,
                int(fields["pid"]),
                fields["start"],
                fields["pidns"],
                fields["tag"],
                fields["net"],
            )
        except (KeyError, ValueError):
            return None

    def alive(self) -> bool:
        if self.pidns != _pid_namespace():
            return True  # another PID namespace's process: we cannot tell, so leave it be
        return _start_time(self.pid) == self.start


def cleanup_stale() -> list[str]:
    """Remove labs whose owning process is gone; return what was removed.

    Safe while other labs run (in this process or other pytest-xdist
    workers): only labs whose owner has exited are touched.
    """
    with _global_lock():
        return _cleanup_stale_locked()


def _cleanup_stale_locked() -> list[str]:
    live_tags: set[str] = set()
    live_ids: set[str] = set()
    stale: list[_Owner] = []
    for link in _ip_json("link", "show", "type", "bridge"):
        name = str(link["ifname"])
        if not name.startswith(BRIDGE_PREFIX):
            continue
        owner = _Owner.parse(name, str(link.get("ifalias", "")))
        if owner is None:
            continue  # not a lab's bridge
        if owner.alive():
            live_tags.add(owner.tag)
            live_ids.add(name.removeprefix(BRIDGE_PREFIX))
        else:
            stale.append(owner)

    all_links = _links()
    removed: list[str] = []
    errors: list[str] = []
    for owner in stale:
        lab_id = owner.bridge.removeprefix(BRIDGE_PREFIX)
        namespaces = [
            name
            for name in _namespaces()
            if (match := _NS_NAME.fullmatch(name)) and match[1] == owner.tag
        ]
        links = sorted(link for link in all_links if link.startswith(f"{VETH_PREFIX}{lab_id}-"))
        links.append(f"{SINK_PREFIX}{lab_id}")
        errors += _remove(namespaces, links, owner.net, owner.bridge)
        removed += [*namespaces, owner.bridge]

    # Namespaces of a lab that lost its bridge (a teardown killed half-way), and
    # sinks whose bridge is gone.
    orphans = [
        name
        for name in _namespaces()
        if (match := _NS_NAME.fullmatch(name)) and match[1] not in live_tags
    ]
    sinks = [
        link
        for link in _links()
        if re.fullmatch(rf"{SINK_PREFIX}[0-9a-f]{{6}}", link)
        and link.removeprefix(SINK_PREFIX) not in live_ids
    ]
    errors += _remove(orphans, sinks, None, None)
    removed += orphans + sinks
    if errors:
        raise NetnsError("could not remove stale labs:\n" + "\n".join(errors))
    return removed


# Skipping


def require_netns() -> None:
    """Skip the test unless network namespace labs can be built here; in CI, fail instead.

    CI runs as root precisely so that these tests run, so a skip there would
    hide a broken runner.
    """
    if os.geteuid() != 0:
        cannot_run("needs root to create network namespaces")
    if shutil.which("ip") is None:
        cannot_run("needs iproute2's `ip` command")
    problem = _probe()
    if problem is not None:
        cannot_run(f"cannot build a network namespace lab: {problem}")


@functools.cache
def _probe() -> str | None:
    """Try the kernel features a lab needs (namespaces, veth, bridge) in a throwaway namespace."""
    with _global_lock():  # or a concurrent cleanup_stale would take it for a leftover
        return _probe_locked()


def _probe_locked() -> str | None:
    name = f"{NS_PREFIX}probe{secrets.token_hex(3)}-0"
    try:
        _ip("netns", "add", name)
    except NetnsError as error:
        return str(error)
    try:
        # Names, not "a": `ip link add a` reads "a" as "address".
        _ip_batch(
            ["link add probe0 type veth peer name probe1", "link add probebr type bridge"],
            netns=name,
        )
    except NetnsError as error:
        return str(error)
    finally:
        with contextlib.suppress(NetnsError):
            _ip("netns", "del", name)
    return None


# The lab


class NetnsLab:
    """``count`` network namespaces on one bridge, with routes to cut links between them.

    Use as a context manager; on exit (or a failed setup) every process
    started through the lab is killed and every namespace, link and route it
    made is removed. Namespace ``i`` has address ``ips[i]``; the host (this
    process) is ``host_ip`` on the bridge, so it reaches every node directly.
    """

    def __init__(self, count: int, *, tag: str | None = None, cut: Cut = "drop") -> None:
        if not 1 <= count <= 253:
            raise ValueError(f"a lab holds 1 to 253 namespaces, not {count}")
        if tag is not None and not _TAG.fullmatch(tag):
            raise ValueError(f"tag {tag!r} must match {_TAG.pattern}")
        if cut not in ("drop", "blackhole", "unreachable", "prohibit"):
            raise ValueError(f"unknown cut kind {cut!r}")
        self._id = secrets.token_hex(3)
        self.count = count
        self.tag = tag if tag is not None else self._id
        self.cut_kind: Cut = cut
        self.bridge = f"{BRIDGE_PREFIX}{self._id}"
        self._names = [f"{NS_PREFIX}{self.tag}-{i}" for i in range(count)]
        self._host_veths = [f"{VETH_PREFIX}{self._id}-{i}" for i in range(count)]
        self._host_sink = f"{SINK_PREFIX}{self._id}"
        self._net: ipaddress.IPv4Network | None = None
        self._created_namespaces: list[str] = []
        self._created_links: list[str] = []
        self._processes: list[subprocess.Popen[Any]] = []
        self._cuts: set[frozenset[Endpoint]] = set()
        self._state: Literal["new", "open", "closed"] = "new"

    # Addresses and names

    @property
    def names(self) -> list[str]:
        """Namespace names, ``rkv-<tag>-<i>``."""
        return list(self._names)

    @property
    def network(self) -> ipaddress.IPv4Network:
        """The lab's /24."""
        if self._net is None:
            raise NetnsError("the lab has no network until it is entered")
        return self._net

    @property
    def ips(self) -> list[str]:
        """Namespace ``i``'s address is ``ips[i]`` (``.i+1`` in the lab's /24)."""
        base = self.network.network_address
        return [str(base + i + 1) for i in range(self.count)]

    @property
    def host_ip(self) -> str:
        """The host's address on the bridge (``.254``): the only host address nodes can reach."""
        return str(self.network.network_address + 254)

    @property
    def cuts(self) -> frozenset[frozenset[Endpoint]]:
        """The links cut now, each an unordered pair of endpoints."""
        return frozenset(self._cuts)

    # Lifecycle

    def __enter__(self) -> Self:
        if self._state != "new":
            raise NetnsError("a NetnsLab can be entered only once")
        self._state = "open"
        try:
            with _global_lock():
                _cleanup_stale_locked()
                self._build()
        except BaseException as error:
            try:
                self.close()
            except NetnsError as cleanup_error:
                error.add_note(f"and cleaning up the half-built lab failed too: {cleanup_error}")
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _build(self) -> None:
        self._net = _free_subnet()
        owner = _Owner(
            self.bridge,
            os.getpid(),
            _start_time(os.getpid()) or "?",
            _pid_namespace(),
            self.tag,
            str(self._net),
        )
        _ip("link", "add", "name", self.bridge, "type", "bridge")
        self._created_links.append(self.bridge)
        _ip_batch(
            [
                f"link set {self.bridge} alias {shlex.quote(owner.alias())}",
                f"addr add {self.host_ip}/24 dev {self.bridge}",
                f"link set {self.bridge} up",
            ]
        )
        if self.cut_kind == "drop":
            sink_peer = f"{self._host_sink}p"
            _ip("link", "add", self._host_sink, "type", "veth", "peer", "name", sink_peer)
            self._created_links.append(self._host_sink)
            _ip_batch([f"link set {self._host_sink} arp off up", f"link set {sink_peer} up"])
        for name, veth, ip in zip(self._names, self._host_veths, self.ips, strict=True):
            _ip("netns", "add", name)
            self._created_namespaces.append(name)
            _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", name)
            self._created_links.append(veth)
            _ip("link", "set", veth, "master", self.bridge, "up")
            inside = ["link set lo up", f"addr add {ip}/24 dev eth0", "link set eth0 up"]
            if self.cut_kind == "drop":
                inside += _sink_commands(NS_SINK, f"{NS_SINK}-peer")
            _ip_batch(inside, netns=name)

    def close(self) -> None:
        """Kill the lab's processes and remove everything it created. Safe to call twice."""
        if self._state == "closed":
            return
        self._state = "closed"
        errors = self._kill_processes()
        bridge = self.bridge if self.bridge in self._created_links else None
        with _global_lock():  # so cleanup_stale never sees a half-removed lab
            errors += _remove(
                self._created_namespaces,
                [link for link in self._created_links if link != bridge],
                str(self._net) if self._net is not None else None,
                bridge,
            )
        self._cuts.clear()
        if errors:
            raise NetnsError(f"lab {self.tag} was not fully removed:\n" + "\n".join(errors))

    def _kill_processes(self) -> list[str]:
        errors: list[str] = []
        for process in self._processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    # popen() starts each in its own session unless told otherwise.
                    if os.getpgid(process.pid) == process.pid:
                        os.killpg(process.pid, signal.SIGKILL)
                    else:
                        process.kill()
            try:
                process.wait(timeout=KILL_WAIT_S)
            except subprocess.TimeoutExpired:
                errors.append(f"pid {process.pid} survived SIGKILL for {KILL_WAIT_S}s")
            for stream in (process.stdin, process.stdout, process.stderr):
                if stream is not None:
                    stream.close()
        return errors

    # Processes

    def command(self, i: int, argv: Sequence[str]) -> list[str]:
        """The command line that runs ``argv`` in namespace ``i``, for callers that spawn it
        themselves (the lab will not track or kill such processes)."""
        return [_ip_path(), "netns", "exec", self._name(i), *argv]

    def popen(self, i: int, argv: Sequence[str], **popen_kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` in namespace ``i``; the lab SIGKILLs it (and its process group) on exit.

        ``ip netns exec`` execs ``argv`` in place, so the returned process is
        ``argv`` itself. It gets its own session unless ``start_new_session``
        is given, so killing its group catches its children too. Read its
        pipes before the lab exits: they are closed then.
        """
        self._check_open()
        popen_kwargs.setdefault("start_new_session", True)
        process: subprocess.Popen[Any] = subprocess.Popen(self.command(i, argv), **popen_kwargs)
        self._processes.append(process)
        return process

    def run(
        self,
        i: int,
        argv: Sequence[str],
        *,
        timeout: float = 30.0,
        check: bool = False,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` to completion in namespace ``i``, capturing text output.

        A bounded ``timeout`` is always applied: a client stuck on a cut link
        must fail the test, not hang it.
        """
        self._check_open()
        return subprocess.run(
            self.command(i, argv),
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
        )

    # Partitions

    def cut(self, a: Endpoint, b: Endpoint) -> None:
        """Drop all traffic between ``a`` and ``b`` (node indexes or ``HOST``), both ways."""
        self._add_cuts([(a, b)])

    def isolate(self, i: int, *, include_host: bool = True) -> None:
        """Cut node ``i`` off from every other node and, unless told otherwise, the host."""
        pairs: list[tuple[Endpoint, Endpoint]] = [(i, j) for j in range(self.count) if j != i]
        if include_host:
            pairs.append((i, HOST))
        self._add_cuts(pairs)

    def partition(self, *groups: Iterable[int]) -> None:
        """Cut every link between nodes in different groups, e.g. ``partition([0], [1, 2])``.

        Links within a group stay up, nodes in no group keep all their links,
        and the host still reaches everyone, so the test can observe each
        side. Cuts add up until ``heal()``.
        """
        sides = [sorted(set(group)) for group in groups]
        seen: set[int] = set()
        for side in sides:
            for i in side:
                self._name(i)  # validates i
                if i in seen:
                    raise ValueError(f"node {i} is in more than one group: {sides}")
                seen.add(i)
        pairs: list[tuple[Endpoint, Endpoint]] = [
            (a, b)
            for n, side in enumerate(sides)
            for other in sides[n + 1 :]
            for a in side
            for b in other
        ]
        self._add_cuts(pairs)

    def heal(self) -> None:
        """Remove every route the lab added: all links are up again."""
        self._check_open()
        self._cuts.clear()
        for name in self._names:
            _ip("route", "flush", "proto", ROUTE_PROTO, netns=name)
        _ip("route", "flush", "root", str(self.network), "proto", ROUTE_PROTO)

    def _add_cuts(self, pairs: Iterable[tuple[Endpoint, Endpoint]]) -> None:
        self._check_open()
        new: set[frozenset[Endpoint]] = set()
        for a, b in pairs:
            if self._address(a) == self._address(b):  # also validates both
                raise ValueError(f"cannot cut {a!r} from itself")
            pair = frozenset((a, b))
            if pair not in self._cuts:
                new.add(pair)
        routes: dict[Endpoint, list[str]] = {}
        for pair in new:
            a, b = sorted(pair, key=str)
            routes.setdefault(a, []).append(self._route(a, self._address(b)))
            routes.setdefault(b, []).append(self._route(b, self._address(a)))
        for endpoint, commands in routes.items():
            _ip_batch(commands, netns=None if endpoint == HOST else self._name(int(endpoint)))
        self._cuts |= new

    def _route(self, at: Endpoint, dest: str) -> str:
        """The route, at endpoint ``at``, that keeps traffic for ``dest`` from arriving.

        ``replace`` rather than ``add``: re-cutting a cut link is harmless.
        """
        if self.cut_kind == "drop":
            sink = self._host_sink if at == HOST else NS_SINK
            return f"route replace {dest}/32 dev {sink} proto {ROUTE_PROTO}"
        return f"route replace {self.cut_kind} {dest}/32 proto {ROUTE_PROTO}"

    # Helpers

    def _address(self, endpoint: Endpoint) -> str:
        if endpoint == HOST:
            return self.host_ip
        return self.ips[self._index(endpoint)]

    def _name(self, i: int) -> str:
        return self._names[self._index(i)]

    def _index(self, i: object) -> int:
        if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < self.count:
            raise ValueError(f"no node {i!r} in a lab of {self.count}")
        return i

    def _check_open(self) -> None:
        if self._state != "open":
            raise NetnsError(f"the lab is {self._state}, not open")


def _sink_commands(sink: str, peer: str) -> list[str]:
    """A veth pair that swallows whatever is routed into ``sink``.

    ``sink`` is NOARP, so frames leave addressed to its own MAC; ``peer``,
    being up, gives the link a carrier (a route over a link without one can
    be ignored, per ``ignore_routes_with_linkdown``) and discards every frame
    as addressed to another host. Sends succeed; nothing arrives.
    """
    return [
        f"link add {sink} type veth peer name {peer}",
        f"link set {sink} arp off up",
        f"link set {peer} up",
    ]


def _free_subnet() -> ipaddress.IPv4Network:
    """A random /24 of ``POOL`` that overlaps no host route (any table) or address."""
    used: list[ipaddress.IPv4Network] = []
    for route in _ip_json("-4", "route", "show", "table", "all"):
        dst = str(route.get("dst", "default"))
        if dst != "default":
            used.append(ipaddress.IPv4Network(dst, strict=False))
    for link in _ip_json("-4", "addr", "show"):
        for addr in link.get("addr_info", []):
            used.append(ipaddress.IPv4Network(f"{addr['local']}/{addr['prefixlen']}", strict=False))
    candidates = list(POOL.subnets(new_prefix=24))
    random.SystemRandom().shuffle(candidates)
    for candidate in candidates:
        if not any(candidate.overlaps(net) for net in used):
            return candidate
    raise NetnsError(f"every /24 in {POOL} overlaps a host route or address")
