"""Prometheus metrics of a node, served over HTTP at ``/metrics`` (``--metrics-addr``).

Two kinds of metric, kept in a registry of the node's own (so several nodes
in one process never share one):

- Request counts and latencies, recorded as each call leaves its handler
  (before its answer is sent): ``server/transport/rpc.py`` tells
  :meth:`RequestMetrics.observe` of every call of every service, with
  the level it ran at and its status code.
- Everything else mirrors state the node keeps anyway (``Counters``, the
  cluster view, the engine's stats, the rebalancer's progress) and is read
  from the live objects when Prometheus scrapes (:class:`NodeCollector`), so
  nothing is counted twice.

The HTTP server runs on the node's event loop: a scrape reads the state
between two steps of the node, never half-way through one, and no thread
touches the engine or the view. Metric names, types and labels are listed in
``docs/operations.md``.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import gzip
import itertools
import logging
import socket
from collections.abc import Iterable, Iterator
from typing import Protocol

import grpc
from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.exposition import choose_encoder, gzip_accepted
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)

from ringkv.core.errors import Unavailable
from ringkv.core.membership import Liveness, MemberStatus
from ringkv.server.cluster.clock_guard import ClockGuard
from ringkv.server.cluster.cluster_view import ClusterView
from ringkv.server.cluster.leader_lease import LeaderLease
from ringkv.server.config import HostPort
from ringkv.server.counters import Counters
from ringkv.server.data.rebalance import Rebalancer
from ringkv.server.transport.rpc import Gate
from ringkv.storage import Engine

log = logging.getLogger(__name__)

LATENCY_BUCKETS_S = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
"""Request latency buckets: from a local read (~100 us) to the request timeout."""

METRICS_PATH = "/metrics"
_REQUEST_TIMEOUT_S = 10.0
"""How long a scraper may take to send its request."""
_MAX_REQUEST_HEAD = 16 << 10


class _Calls:
    """The calls of one (service, method, level, code): count, latency sum, buckets."""

    __slots__ = ("buckets", "count", "seconds")

    def __init__(self) -> None:
        self.count = 0
        self.seconds = 0.0
        self.buckets = [0] * (len(LATENCY_BUCKETS_S) + 1)
        """Calls per bucket (not cumulative); the last is past every bound."""


class RequestMetrics:
    """Counts and latency histograms of served calls.

    Plain numbers updated on the event loop, turned into metric families
    when scraped: about a microsecond per call, where prometheus_client's
    own Counter and Histogram (a lock each, per-call label lookups) take
    several.
    """

    def __init__(self) -> None:
        self._calls: dict[tuple[str, str, str, grpc.StatusCode], _Calls] = {}

    def observe(
        self, service: str, method: str, level: str, code: grpc.StatusCode, seconds: float
    ) -> None:
        """Count one call and its latency (an ``rpc.RequestObserver``)."""
        key = (service, method, level, code)
        calls = self._calls.get(key)
        if calls is None:
            calls = self._calls[key] = _Calls()
        calls.count += 1
        calls.seconds += seconds
        # Bucket i counts calls that took at most LATENCY_BUCKETS_S[i].
        calls.buckets[bisect.bisect_left(LATENCY_BUCKETS_S, seconds)] += 1

    def collect(self) -> Iterator[Metric]:
        labels = ("service", "method", "level", "code")
        requests = CounterMetricFamily(
            "ringkv_requests",
            "Calls served, by service, method, consistency level and status code.",
            labels=labels,
        )
        latency = HistogramMetricFamily(
            "ringkv_request_duration_seconds",
            "Time calls spent in their handler, by service, method, level and status code.",
            labels=labels,
        )
        bounds = [*(repr(bound) for bound in LATENCY_BUCKETS_S), "+Inf"]
        for (service, method, level, code), calls in sorted(
            self._calls.items(), key=lambda item: (*item[0][:3], item[0][3].name)
        ):
            values = (service, method, level, code.name)
            requests.add_metric(values, calls.count)
            cumulative = itertools.accumulate(calls.buckets)
            latency.add_metric(values, list(zip(bounds, cumulative, strict=True)), calls.seconds)
        yield requests
        yield latency


class NodeMetrics:
    """A node's metrics registry (its own, not prometheus_client's global
    one): request metrics plus the collectors given."""

    def __init__(self, *collectors: _Collector, process: bool = True) -> None:
        self.registry = CollectorRegistry()
        self.requests = RequestMetrics()
        """Where ``server/transport/rpc.py`` reports each call."""
        self.registry.register(self.requests)
        if process:
            ProcessCollector(registry=self.registry)
        for collector in collectors:
            self.registry.register(collector)

    def exposition(self, accept: str = "") -> tuple[bytes, str]:
        """The registry's samples in the format ``accept`` asks for, and its content type."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type


class _Collector(Protocol):
    def collect(self) -> Iterable[Metric]: ...


class _Membership(Protocol):
    """What the collector reads of the membership manager."""

    @property
    def synced_epoch(self) -> int: ...


class NodeCollector:
    """Reads a node's live state at scrape time: counters, ring, leader, storage, pulls."""

    def __init__(
        self,
        view: ClusterView,
        engine: Engine,
        counters: Counters,
        membership: _Membership,
        clock_guard: ClockGuard | None = None,
        *,
        rebalancer: Rebalancer | None = None,
        lease: LeaderLease | None = None,
        gate: Gate | None = None,
    ) -> None:
        self._gate = gate
        self._clock_guard = clock_guard
        self._rebalancer = rebalancer
        self._lease = lease
        self._view = view
        self._engine = engine
        self._counters = counters
        self._membership = membership

    def describe(self) -> list[Metric]:
        # Nothing to check for clashes at registration, and no scrape before the node is up.
        return []

    def collect(self) -> Iterator[Metric]:
        yield from self._counter_metrics()
        yield from self._cluster_metrics()
        yield from self._storage_metrics()

    def _counter_metrics(self) -> Iterator[Metric]:
        counters = self._counters
        for name, help_text, value in [
            (
                "forwarded_writes",
                "Writes passed on to their key's owner.",
                counters.forwarded_writes,
            ),
            (
                "read_repairs",
                "Stale replicas sent the newest version after a read.",
                counters.read_repairs,
            ),
            (
                "hints_replayed",
                "Hints delivered to the node they were held for.",
                counters.hints_replayed,
            ),
            ("hints_expired", "Hints dropped unsent after the hint TTL.", counters.hints_expired),
            (
                "anti_entropy_rounds",
                "Anti-entropy rounds run (scheduled or asked for).",
                counters.repair_rounds,
            ),
            (
                "anti_entropy_keys_repaired",
                "Keys anti-entropy pulled from or pushed to another replica.",
                counters.keys_repaired,
            ),
            (
                "anti_entropy_leaves_differing",
                "Merkle-tree leaves found different from another replica's.",
                counters.leaves_differing,
            ),
            (
                "merkle_tree_builds",
                "Merkle trees built from a scan (the rest are kept up to date on write).",
                counters.merkle_tree_builds,
            ),
            (
                "merkle_leaves_rescanned",
                "Merkle-tree leaves scanned again after a change a kept tree could not apply.",
                counters.merkle_leaves_rescanned,
            ),
            (
                "tombstones_purged",
                "Tombstones and expired values purged after the grace period.",
                counters.tombstones_purged,
            ),
        ]:
            yield CounterMetricFamily(f"ringkv_{name}", help_text, value=value)
        errors = CounterMetricFamily(
            "ringkv_replica_errors",
            "Failed calls to another replica, by peer and call (read, write, scan, merkle).",
            labels=("peer", "call"),
        )
        for (peer, call), count in sorted(counters.replica_errors.items()):
            errors.add_metric((peer, call), count)
        yield errors

    def _cluster_metrics(self) -> Iterator[Metric]:
        view = self._view
        yield InfoMetricFamily("ringkv_node", "This node's id.", value={"node_id": view.node_id})
        yield GaugeMetricFamily(
            "ringkv_ring_epoch", "Epoch of the member table in effect.", value=view.epoch
        )
        yield GaugeMetricFamily(
            "ringkv_synced_epoch",
            "Latest epoch whose gained ranges this node has pulled.",
            value=self._membership.synced_epoch,
        )
        yield GaugeMetricFamily(
            "ringkv_leader_term", "Term of the leader this node follows.", value=view.term
        )
        yield GaugeMetricFamily(
            "ringkv_is_leader",
            "1 if this node is the leader it follows, else 0.",
            value=int(bool(view.leader_id) and view.leader_id == view.node_id),
        )
        members = GaugeMetricFamily(
            "ringkv_members",
            "Members of the table by state (alive, suspect, dead: the leader's failure "
            "detector) and status (joining, normal, leaving).",
            labels=("state", "status"),
        )
        counts = {(state, status): 0 for state in Liveness for status in MemberStatus}
        for member in view.membership.members:
            counts[view.liveness.get(member.node_id, Liveness.ALIVE), member.status] += 1
        for (state, status), count in counts.items():
            members.add_metric((state.value, status.value), count)
        yield members
        peers = GaugeMetricFamily(
            "ringkv_peer_up",
            "1 if calls to the peer succeed (the data path's view), 0 while it is probed.",
            labels=("peer",),
        )
        for node_id, peer in sorted(view.peers.items()):
            peers.add_metric((node_id,), int(peer.alive))
        yield peers
        if self._gate is not None:
            yield GaugeMetricFamily(
                "ringkv_unsent_answer_bytes",
                "Bytes of client and operator answers not yet read by their callers "
                "(past --max-unsent-answer-mib new calls are refused OVERLOADED).",
                value=self._gate.unsent_bytes,
            )
            yield CounterMetricFamily(
                "ringkv_answers_not_read",
                "Client and operator answers given up because their callers had not read "
                "them within --answer-send-timeout (each call ended DEADLINE_EXCEEDED, "
                "ANSWER_NOT_READ).",
                value=self._gate.answers_not_read,
            )
            yield GaugeMetricFamily(
                "ringkv_watches",
                "Client watches this node serves now (at most --max-concurrent-calls).",
                value=self._gate.watches,
            )
        if self._lease is not None:
            yield GaugeMetricFamily(
                "ringkv_leader_lease",
                "1 while this node leads or heard its leader within the election timeout "
                "and coordinates requests; 0 while it refuses them (NO_LEADER_LEASE).",
                value=int(self._lease.held),
            )
        if self._clock_guard is not None:
            check = self._clock_guard.check()
            yield GaugeMetricFamily(
                "ringkv_clock_offset_seconds",
                "This node's clock minus the median of its peers' clocks.",
                value=check.offset_ms / 1000,
            )
            yield GaugeMetricFamily(
                "ringkv_clock_may_stamp",
                "1 while this node's clock is within --max-clock-offset of a majority of "
                "the members and it stamps writes; 0 while it forwards them.",
                value=int(check.may_stamp),
            )

    def _storage_metrics(self) -> Iterator[Metric]:
        stats = self._engine.stats()
        yield GaugeMetricFamily(
            "ringkv_storage_records",
            "Stored records, tombstones and expired values included.",
            value=stats.records,
        )
        yield GaugeMetricFamily(
            "ringkv_storage_bytes", "Bytes the records occupy.", value=stats.bytes_used
        )
        yield GaugeMetricFamily(
            "ringkv_hints_pending", "Hints held for other nodes.", value=stats.hints
        )
        progress = self._rebalancer.progress if self._rebalancer is not None else None
        yield GaugeMetricFamily(
            "ringkv_ranges_to_pull",
            "Token ranges this node gains in the latest membership change.",
            value=progress.ranges_total if progress else 0,
        )
        yield GaugeMetricFamily(
            "ringkv_ranges_pulled",
            "Of those, the ranges pulled so far.",
            value=progress.ranges_done if progress else 0,
        )
        yield GaugeMetricFamily(
            "ringkv_records_pulled",
            "Records received while pulling those ranges.",
            value=progress.records if progress else 0,
        )


def bind(address: HostPort) -> socket.socket:
    """A socket bound to the metrics address, or Unavailable saying why not."""
    host = address.host or "0.0.0.0"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, address.port))
    except OSError as error:
        sock.close()
        reason = error.strerror or str(error)
        raise Unavailable(f"cannot listen on metrics address {address}: {reason}") from None
    return sock


class MetricsServer:
    """``GET /metrics`` over HTTP/1.1 on the running event loop, one request
    per connection."""

    def __init__(self, metrics: NodeMetrics) -> None:
        self._metrics = metrics
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.StreamWriter] = set()

    async def start(self, sock: socket.socket) -> None:
        """Serve on a bound socket (see :func:`bind`); a request head longer
        than 16 KiB is dropped unanswered."""
        self._server = await asyncio.start_server(self._handle, sock=sock, limit=_MAX_REQUEST_HEAD)

    @property
    def port(self) -> int:
        """The port bound (the one the OS chose for port 0)."""
        assert self._server is not None, "not started"
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._connections.add(writer)
        try:
            async with asyncio.timeout(_REQUEST_TIMEOUT_S):
                head = await reader.readuntil(b"\r\n\r\n")
            writer.write(self._respond(head))
            await writer.drain()
        except (
            TimeoutError,
            ConnectionError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
        ):
            pass  # the scraper gave up or sent no complete request: nothing to answer
        finally:
            self._connections.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    def _respond(self, head: bytes) -> bytes:
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        parts = request_line.split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return _response(400, "text/plain", b"bad request\n")
        method, target, _ = parts
        if target.split("?", 1)[0] != METRICS_PATH:
            return _response(404, "text/plain", b"not found: metrics are at /metrics\n")
        if method not in ("GET", "HEAD"):
            return _response(405, "text/plain", b"GET or HEAD only\n", ("Allow: GET, HEAD",))
        headers = {}
        for line in header_lines:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        try:
            body, content_type = self._metrics.exposition(headers.get("accept", ""))
        except Exception:
            log.exception("metrics collection failed")
            return _response(500, "text/plain", b"metrics collection failed\n")
        extra: tuple[str, ...] = ()
        if gzip_accepted(headers.get("accept-encoding", "")):
            body = gzip.compress(body, compresslevel=1)
            extra = ("Content-Encoding: gzip",)
        return _response(200, content_type, body, extra, head_only=method == "HEAD")

    async def close(self) -> None:
        """Stop listening and drop open connections."""
        if self._server is None:
            return
        self._server.close()
        for writer in list(self._connections):
            writer.close()
        await self._server.wait_closed()


_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    500: "Internal Server Error",
}


def _response(
    status: int,
    content_type: str,
    body: bytes,
    extra_headers: tuple[str, ...] = (),
    *,
    head_only: bool = False,
) -> bytes:
    lines = [
        f"HTTP/1.1 {status} {_REASONS[status]}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *extra_headers,
    ]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + body
