"""Watches of a real cluster: every change at least once and in version order
per key while the replica a watch follows, or the node serving it, is killed;
resuming from a version; ``ringkv watch``."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import grpc

import ringkv
from ringkv.api import kv_pb2, kv_pb2_grpc
from tests.integration.test_cli import RINGKV, cli_env
from tests.integration.test_membership import FAST, wait_for_members
from tests.support.metrics import METRICS, scrape
from tests.support.nodes import (
    ClusterFactory,
    NodeFactory,
    NodeProcess,
    free_ports,
    wait_for,
    wait_for_leader,
)

WRITES = 1000
KEYS = 200
WATCH_TIMEOUT_S = 60.0
RETRIED = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


class WatchOutput:
    """``ringkv watch --json`` running, its lines collected as they come."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process
        self.events: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._readers = [
            threading.Thread(target=self._read, daemon=True),
            threading.Thread(target=self._read_errors, daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._lock:
                self.events.append(json.loads(line))

    def _read_errors(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.errors.append(line.decode(errors="replace"))

    def join(self) -> None:
        for reader in self._readers:
            reader.join(timeout=10)

    def seen(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.events)


@contextmanager
def watching(*args: str) -> Iterator[WatchOutput]:
    process = subprocess.Popen(
        [*RINGKV, "watch", "--json", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cli_env(),
    )
    output = WatchOutput(process)
    try:
        yield output
    finally:
        process.kill()
        process.wait(timeout=10)
        output.join()
        assert process.stdout is not None and process.stderr is not None
        process.stdout.close()
        process.stderr.close()


def watch_coordinator(members: list[NodeProcess]) -> tuple[NodeProcess, list[str]]:
    """The node serving the one watch, and the nodes it follows now."""
    found: list[tuple[NodeProcess, list[str]]] = []

    def started() -> bool:
        for node in members:
            follows = [e for e in node.events() if e.get("msg") == "watch following"]
            if follows:
                found.append((node, str(follows[-1]["nodes"]).split(",")))
                return True
        return False

    wait_for(started, timeout=30.0, what="a node to serve the watch")
    return found[-1]


def write_and_delete(members: list[NodeProcess], first: int, count: int) -> dict[str, list[int]]:
    """Writes and deletes through each live node in turn; each key's versions."""
    written: dict[str, list[int]] = defaultdict(list)
    channels = [grpc.insecure_channel(node.address) for node in members]
    try:
        stubs = [kv_pb2_grpc.KeyValueStub(channel) for channel in channels]
        for number in range(first, first + count):
            key = f"w/{number % KEYS}"
            for attempt in range(len(stubs) * 4):
                stub = stubs[(number + attempt) % len(stubs)]
                try:
                    if number % 4 == 3:
                        version = stub.Delete(kv_pb2.DeleteRequest(key=key), timeout=10).version
                    else:
                        request = kv_pb2.SetRequest(key=key, value=str(number).encode())
                        version = stub.Set(request, timeout=10).version
                    break
                except grpc.RpcError as error:
                    # A killed node, or a paused one that owns the key: the
                    # next one takes the write (an uncertain one may land too:
                    # a version the watch may show, not one it must).
                    if error.code() not in RETRIED:
                        raise
            else:
                raise AssertionError(f"no node took write {number}")
            written[key].append(version)
    finally:
        for channel in channels:
            channel.close()
    return written


def check_every_change_in_order(
    watch: WatchOutput, written: dict[str, list[int]], *, what: str
) -> None:
    wanted = {(key, version) for key, versions in written.items() for version in versions}
    wait_for(
        lambda: wanted <= {(e["key"], e["version"]) for e in watch.seen()},
        timeout=WATCH_TIMEOUT_S,
        what=f"{what} (ringkv watch said: {''.join(watch.errors)!r})",
    )
    by_key: dict[str, list[int]] = defaultdict(list)
    for event in watch.seen():
        by_key[event["key"]].append(event["version"])
    for key, versions in by_key.items():
        assert versions == sorted(set(versions)), f"{key}: {versions}"


def test_a_watch_misses_nothing_when_the_replica_it_follows_is_killed(
    cluster: ClusterFactory,
) -> None:
    members = cluster(4)
    wait_for_leader(members)
    endpoint = ",".join(node.address for node in members)
    with watching("w/", "--endpoint", endpoint) as watch:
        coordinator, followed = watch_coordinator(members)
        remote = [n for n in members if n.node_id in followed and n is not coordinator]
        assert remote, f"{coordinator.node_id} follows only itself: {followed}"
        written = write_and_delete(members, 0, WRITES // 2)
        remote[0].kill()
        live = [n for n in members if n is not remote[0]]
        later = write_and_delete(live, WRITES // 2, WRITES // 2)
        for key, versions in later.items():
            written[key] += versions
        check_every_change_in_order(watch, written, what="every change to reach the watch")
        kinds = {e["kind"] for e in watch.seen()}
        assert kinds == {"put", "delete"}
        # Moved off the killed node: it follows others now.
        wait_for(
            lambda: remote[0].node_id not in watch_coordinator(members)[1],
            timeout=30.0,
            what="the watch to follow another replica",
        )


def test_a_watch_moves_to_another_node_and_resumes_from_a_version(
    cluster: ClusterFactory,
) -> None:
    members = cluster(3)
    wait_for_leader(members)
    endpoint = ",".join(node.address for node in members)
    with watching("w/", "--endpoint", endpoint) as watch:
        coordinator, _ = watch_coordinator(members)
        written = write_and_delete(members, 0, 200)
        check_every_change_in_order(watch, written, what="the first changes")
        # A graceful stop ends the watch stream at once (it would otherwise
        # hold the shutdown up): the client goes on through another node.
        assert coordinator.stop() == 0
        live = [n for n in members if n is not coordinator]
        later = write_and_delete(live, 200, 200)
        check_every_change_in_order(watch, later, what="the changes after the kill")
        delivered = [e["version"] for e in watch.seen()]

    # Resuming from a delivered version: nothing at or below it again.
    middle = sorted(delivered)[len(delivered) // 2]
    with ringkv.Client([n.address for n in live]) as client:
        events = client.watch("w/", from_version=middle)
        resumed = [next(events) for _ in range(10)]
        events.close()
    assert all(event.version > middle for event in resumed)


def test_a_watch_and_a_scan_go_on_across_a_join(nodes: NodeFactory) -> None:
    """A fourth node joins while a watch runs: the watch follows the new ring
    (the joiner's log starts at its start, so it is passed over for what
    came before), and a scan after the join still lists each key once."""
    members = ClusterFactory(nodes)(3, *FAST)
    wait_for_leader(members)
    endpoint = ",".join(node.address for node in members)
    with watching("w/", "--endpoint", endpoint) as watch:
        watch_coordinator(members)
        written = write_and_delete(members, 0, 300)
        (port,) = free_ports(1)
        joiner = nodes("node4", "-peers", f"node1={members[0].address}", *FAST, start=False)
        joiner.extra_args += ["-replicas", "3"]
        joiner.port = port
        joiner.start()
        everyone = [*members, joiner]
        wait_for_members(
            members, {node.node_id: "normal" for node in everyone}, timeout=WATCH_TIMEOUT_S
        )
        later = write_and_delete(everyone, 300, 300)
        for key, versions in later.items():
            written[key] += versions
        check_every_change_in_order(watch, written, what="every change across the join")

    with ringkv.Client([node.address for node in everyone]) as client:
        listed = [entry.key for entry in client.scan("w/", consistency="quorum")]
        live = {key for key in written if client.get(key) is not None}
    assert sorted(listed) == sorted(live)


def test_a_watch_whose_node_stops_answering_moves_to_another(cluster: ClusterFactory) -> None:
    """The node serving the watch is paused (SIGSTOP: its connection stays
    open, nothing comes): the client takes the silence for a failure and
    goes on through another node, missing nothing."""
    members = cluster(3, *FAST, *METRICS)
    wait_for_leader(members)
    endpoint = ",".join(node.address for node in members)
    with watching("w/", "--endpoint", endpoint) as watch:
        coordinator, _ = watch_coordinator(members)
        assert [scrape(node).get("ringkv_watches") for node in members].count(1) == 1
        assert scrape(coordinator).get("ringkv_watches") == 1
        written = write_and_delete(members, 0, 100)
        check_every_change_in_order(watch, written, what="the changes before the pause")
        coordinator.signal(signal.SIGSTOP)
        try:
            live = [node for node in members if node is not coordinator]
            wait_for_leader(live)
            later = write_and_delete(live, 100, 100)
            check_every_change_in_order(watch, later, what="the changes during the pause")
        finally:
            coordinator.signal(signal.SIGCONT)
