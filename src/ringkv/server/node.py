"""A ringkv node: storage, peers, services and the gRPC server, from start to clean stop."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import socket
import time
from collections.abc import Callable
from contextlib import AsyncExitStack

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ringkv.core.election import ElectionConfig
from ringkv.core.errors import Unavailable
from ringkv.core.hlc import HybridLogicalClock
from ringkv.core.membership import Membership, RingMaker
from ringkv.core.validation import LARGEST_MESSAGE_BYTES
from ringkv.server import descriptors, running_loop
from ringkv.server.cluster.clock_guard import ClockGuard, ClockProber
from ringkv.server.cluster.clock_mark import ClockMark
from ringkv.server.cluster.cluster_view import ClusterView
from ringkv.server.cluster.leader_lease import LeaderLease
from ringkv.server.cluster.membership import MembershipManager, monotonic_ms
from ringkv.server.cluster.membership_file import MembershipFile
from ringkv.server.config import HostPort, NodeConfig
from ringkv.server.counters import Counters
from ringkv.server.data.anti_entropy import AntiEntropy, RepairSchedule
from ringkv.server.data.change_feed import ChangeFeed
from ringkv.server.data.commit import DEFAULT_MAX_BATCH, CommitQueue
from ringkv.server.data.coordinator import Coordinator
from ringkv.server.data.hints import HintReplayer
from ringkv.server.data.key_scan import KeyScanner
from ringkv.server.data.local_store import LocalStore
from ringkv.server.data.rebalance import Rebalancer
from ringkv.server.data.tree_cache import TreeCache
from ringkv.server.data.watch_coordinator import WatchCoordinator
from ringkv.server.services.admin_service import AdminService
from ringkv.server.services.cluster_service import ClusterService
from ringkv.server.services.forward_service import ForwardService
from ringkv.server.services.kv_service import KeyValueService
from ringkv.server.services.metrics import MetricsServer, NodeCollector, NodeMetrics
from ringkv.server.services.metrics import bind as bind_metrics
from ringkv.server.services.replica_service import ReplicaService
from ringkv.server.transport import rpc
from ringkv.server.transport.auth import (
    SERVER_KEEPALIVE_OPTIONS,
    SIDE_CHANNEL_OPTIONS,
    NodeSecurity,
    Policy,
)
from ringkv.server.transport.link import REQUEST_HEAD, LinkDialer, LinkServer, bind_link_socket
from ringkv.server.transport.peers import Fencing, Peer, PeerProber
from ringkv.storage import FsyncMode, files, open_engine

log = logging.getLogger("ringkv.node")

# Room for a key, a value at the limit and the rest of a request.
_PROBE_INTERVAL_S = 0.5
_MAX_CONNECTION_IDLE_MS = 5 * 60 * 1000


def wall_clock(offset_ms: int = 0) -> Callable[[], int]:
    """Unix time in milliseconds, shifted by ``offset_ms``."""

    def now_ms() -> int:
        return time.time_ns() // 1_000_000 + offset_ms

    return now_ms


async def serve(
    config: NodeConfig,
    *,
    stop: asyncio.Event | None = None,
) -> None:
    """Run a node until SIGTERM or SIGINT (or ``stop``), then shut down cleanly.

    In-flight requests get ``shutdown_grace_s`` to finish; then background
    replication ends, pending writes are committed and the engine is closed.
    """
    security = NodeSecurity.load(config)
    # Bind first: a node that cannot listen should not touch its data dir.
    server, port = _bind(config, security)
    link_socket = _bind_link(config)
    async with AsyncExitStack() as resources:
        if link_socket is not None:
            resources.callback(link_socket.close)
        link_dialer = (
            LinkDialer(security.link_token, security.link_client_tls(), LARGEST_MESSAGE_BYTES)
            if link_socket is not None
            else None
        )
        fd_limit = descriptors.raise_limit()
        fd_watch = asyncio.get_running_loop().create_task(descriptors.watch(fd_limit))
        resources.callback(fd_watch.cancel)
        metrics_socket = bind_metrics(config.metrics_addr) if config.metrics_addr else None
        if metrics_socket is not None:
            resources.callback(metrics_socket.close)
        engine = open_engine(
            config.engine,
            config.data_path,
            config.fsync,
            change_log_entries=config.watch_log_entries,
        )
        resources.callback(engine.close)
        if config.engine == "lmdb":
            files.claim(config.data_path, config.node_id)
        max_batch = 1 if config.fsync is FsyncMode.ALWAYS else DEFAULT_MAX_BATCH
        now_ms = wall_clock(config.clock_offset_ms)
        clock = HybridLogicalClock(
            config.node_id,
            now_ms=now_ms,
            max_peer_lead_ms=round(config.max_clock_offset_s * 1000),
        )
        clock_mark = ClockMark(config.data_path if config.engine == "lmdb" else None, clock, now_ms)
        clock_mark.resume()
        # A log that starts empty (a new data dir, the memory engine) holds
        # nothing of what this node stored before: no watch resumes below now.
        # (Not below now plus the clock lead a peer may have given a previous
        # run: a watch from now, begun on a just-started cluster, would be
        # refused.)
        started_empty = engine.change_log_state().last_seq == 0
        changes = ChangeFeed(
            engine, clock, floor=clock.tick(now_ms()).timestamp if started_empty else 0
        )
        commits = CommitQueue(engine, max_batch=max_batch, on_commit=changes.notify)
        resources.push_async_callback(commits.close)
        store = LocalStore(engine, commits)
        counters = Counters()

        def offer_table(table: Membership) -> None:
            # A table that leaves this node out is not taken from a replica's
            # refusal: joining and being removed are the membership layer's.
            if config.node_id in table.addresses:
                membership.offer(table)

        fencing = Fencing(lambda: view.membership, offer_table)

        def open_peer(node_id: str, address: str) -> Peer:
            return Peer(
                node_id,
                address,
                clock,
                config.peer_timeout_s,
                counters=counters,
                open_channel=security.open_channel,
                fencing=fencing,
                link_dialer=link_dialer,
            )

        advertised = HostPort(config.advertised.host, config.advertised.port or port)
        seeds = {peer.node_id: str(peer.address) for peer in config.peers}
        rings = RingMaker(config.vnodes)
        # Until the node finds its cluster it routes by its flags (epoch 0).
        provisional = Membership(
            0, Membership.bootstrap({config.node_id: str(advertised), **seeds}).members
        )
        view = ClusterView(config.node_id, provisional, config.replicas, rings, open_peer)
        resources.push_async_callback(view.close)
        prober = PeerProber(view.peers, _PROBE_INTERVAL_S)
        resources.push_async_callback(prober.close)
        clock_guard = ClockGuard(
            view,
            now_ms,
            time.monotonic,
            max_offset_ms=config.max_clock_offset_s * 1000,
            # A few missed probes, as when a pause or a cut link stops them.
            fresh_for_s=3 * config.heartbeat_interval_s + config.peer_timeout_s,
        )
        clock_prober = ClockProber(
            view,
            clock_guard,
            clock,
            now_ms,
            time.monotonic,
            interval_s=config.heartbeat_interval_s,
            timeout_s=config.peer_timeout_s,
            open_channel=lambda address: security.open_channel(address, SIDE_CHANNEL_OPTIONS),
        )
        resources.push_async_callback(clock_prober.close)
        lease = LeaderLease(int(config.election_timeout_s * 1000), monotonic_ms)
        coordinator = Coordinator(
            view,
            store,
            clock,
            now_ms,
            counters,
            clock_guard=clock_guard,
            lease=lease,
            clock_mark=clock_mark,
        )
        resources.push_async_callback(coordinator.close)
        replayer = HintReplayer(
            engine,
            store,
            view.peers,
            counters,
            now_ms,
            hint_ttl_ms=int(config.hint_ttl_s * 1000),
            interval_s=config.hint_replay_interval_s,
        )
        resources.push_async_callback(replayer.close)
        stop = stop or _stop_on_signals()
        membership = MembershipManager(
            view,
            address=str(advertised),
            seeds=seeds,
            saved=MembershipFile(config.data_path if config.engine == "lmdb" else None),
            election=ElectionConfig(
                heartbeat_interval_ms=int(config.heartbeat_interval_s * 1000),
                election_timeout_ms=int(config.election_timeout_s * 1000),
                # Half a heartbeat to answer and a fifth as jitter: a failover
                # then takes at most an election timeout plus one heartbeat.
                answer_timeout_ms=max(50, int(config.heartbeat_interval_s * 500)),
                jitter_ms=int(config.heartbeat_interval_s * 200),
            ),
            remove_dead_after_ms=int(config.dead_after_s * 1000),
            rings=rings,
            on_removed=stop.set,
            lease=lease,
            joins_existing=config.joins_existing,
            wall_ms=now_ms,
            clock_of=clock_guard.offset_of,
            open_channel=security.open_channel,
        )
        resources.push_async_callback(membership.close)
        rebalancer = Rebalancer(
            view,
            store,
            engine,
            settle_delay_s=2 * config.heartbeat_interval_s,
            cleanup_delay_s=2 * config.election_timeout_s,
            quorum_patience_s=4 * config.election_timeout_s,
        )
        membership.rebalancer = rebalancer
        resources.push_async_callback(rebalancer.close)
        trees = TreeCache(engine, counters)
        store.observe(trees)
        repairs = RepairSchedule(
            AntiEntropy(
                view,
                store,
                engine,
                now_ms,
                tombstone_grace_ms=int(config.tombstone_grace_s * 1000),
                trees=trees,
            ),
            counters,
            config.anti_entropy_interval_s,
        )
        resources.push_async_callback(repairs.close)

        kv = KeyValueService(
            view,
            coordinator,
            KeyScanner(view, engine, now_ms, lease),
            WatchCoordinator(view, changes, clock, now_ms),
            config.limits,
            read_level=config.read_level,
            write_level=config.write_level,
            request_timeout_s=config.request_timeout_s,
            counters=counters,
            clock_guard=clock_guard,
        )
        forward_service = ForwardService(kv)
        replica_service = ReplicaService(
            store,
            clock,
            now_ms,
            engine=engine,
            tables=view,
            limits=config.limits,
            trees=trees,
            changes=changes,
            link_port=link_socket.getsockname()[1] if link_socket is not None else 0,
        )
        services: list[rpc.Service] = [
            kv,
            forward_service,
            ClusterService(
                view,
                engine,
                counters,
                membership,
                repairs,
                clock_guard=clock_guard,
                member_port_offset=security.member_port_offset,
                rebalancer=rebalancer,
            ),
            replica_service,
            AdminService(
                config.node_id,
                engine,
                now_ms,
                data_dir=config.data_path if config.engine == "lmdb" else None,
            ),
        ]

        def on_serving() -> None:
            clock_prober.start()
            membership.start()
            repairs.start()

        gate = rpc.Gate(
            config.max_concurrent_calls,
            config.max_unsent_answer_mib * 1024 * 1024,
            send_timeout_s=config.answer_send_timeout_s or None,
        )
        metrics: NodeMetrics | None = None
        metrics_server: MetricsServer | None = None
        if metrics_socket is not None:
            metrics = NodeMetrics(
                NodeCollector(
                    view,
                    engine,
                    counters,
                    membership,
                    clock_guard,
                    rebalancer=rebalancer,
                    lease=lease,
                    gate=gate,
                )
            )
            metrics_server = MetricsServer(metrics)
            await metrics_server.start(metrics_socket)
            resources.push_async_callback(metrics_server.close)

        observe = metrics.requests.observe if metrics is not None else None
        if link_socket is not None:
            link_server = LinkServer(
                config.node_id,
                {**forward_service.link_methods(), **replica_service.link_methods()},
                gate,
                security.policy().admit_member,
                max_frame_bytes=config.limits.message_bytes + REQUEST_HEAD.size,
                observe=observe,
            )
            await link_server.start(link_socket, security.link_server_tls())
            # Closed before what its calls use: the gate drained them already.
            resources.push_async_callback(link_server.close)

        await _serve_until_stopped(
            config,
            server,
            port,
            services,
            stop=stop,
            on_serving=on_serving,
            gate=gate,
            observe=observe,
            metrics_port=metrics_server.port if metrics_server is not None else None,
            policy=security.policy(),
            fd_limit=fd_limit,
            link_port=link_socket.getsockname()[1] if link_socket is not None else None,
        )
    log.info("stopped")


def _bind(config: NodeConfig, security: NodeSecurity | None = None) -> tuple[grpc.aio.Server, int]:
    member_listen = config.member_listen
    _check_address_free(config.listen)
    if member_listen is not None:
        _check_address_free(member_listen)
    limit = config.limits.message_bytes
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            ("grpc.so_reuseport", 0),
            # A connection without a call for this long is closed (clients
            # reconnect on their next call), so idle ones do not hold
            # descriptors for good. Members call each other every heartbeat.
            ("grpc.max_connection_idle_ms", _MAX_CONNECTION_IDLE_MS),
            *SERVER_KEEPALIVE_OPTIONS,
        ]
    )
    credentials = security.server_credentials() if security is not None else None
    address = config.bind_address
    try:
        if credentials is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials)
        if member_listen is not None and security is not None:
            address = str(member_listen)
            server.add_secure_port(address, security.member_credentials())
    except RuntimeError:
        raise Unavailable(f"cannot listen on {address}") from None
    return server, port


def _bind_link(config: NodeConfig) -> socket.socket | None:
    """The member link's listening socket, on the listen host; None when it is off."""
    if config.link_port is None:
        return None
    host = config.listen.host or "0.0.0.0"
    try:
        return bind_link_socket(host, config.link_port)
    except OSError as error:
        address = HostPort(host, config.link_port)
        raise Unavailable(
            f"cannot listen on {address} (--link-port): {error.strerror or error}"
        ) from None


def _check_address_free(listen: HostPort) -> None:
    """Fail with the OS's reason (grpc would only log its own line) if the port is taken."""
    host = listen.host or "0.0.0.0"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    address = HostPort(host, listen.port)
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, listen.port))
        except OSError as error:
            reason = error.strerror or str(error)
            raise Unavailable(f"cannot listen on {address}: {reason}") from None


async def _serve_until_stopped(
    config: NodeConfig,
    server: grpc.aio.Server,
    port: int,
    services: list[rpc.Service],
    *,
    stop: asyncio.Event,
    on_serving: Callable[[], None],
    gate: rpc.Gate,
    observe: rpc.RequestObserver | None = None,
    metrics_port: int | None = None,
    policy: Policy | None = None,
    fd_limit: int | None = None,
    link_port: int | None = None,
) -> None:
    server.add_generic_rpc_handlers(
        [rpc.generic_handler(s, gate, observe, policy) for s in services]
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [s.name for s in services] + [health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )
    tune_garbage_collector()  # its full collection before the first call, not during
    await server.start()
    on_serving()
    for name in ["", *(s.name for s in services)]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info(
        "serving",
        extra={
            "address": config.bind_address,
            "port": port,
            "engine": config.engine,
            "data_dir": str(config.data_path) if config.engine == "lmdb" else None,
            "fsync": config.fsync.value,
            "peers": ",".join(p.node_id for p in config.peers) or None,
            "replicas": config.replicas,
            "metrics_port": metrics_port,
            "tls": config.tls_cert is not None,
            "mutual_tls": config.tls_ca is not None,
            "member_port": config.member_listen.port if config.member_listen else None,
            "link_port": link_port,
            "fd_limit": fd_limit,
            "tokens": ",".join(
                role
                for role, path in (
                    ("client", config.auth_token_file),
                    ("operator", config.operator_token_file),
                    ("member", config.member_token_file),
                )
                if path is not None
            )
            or None,
        },
    )
    await stop.wait()
    log.info("shutting down", extra={"grace_s": config.shutdown_grace_s})
    loop = asyncio.get_running_loop()
    deadline = loop.time() + config.shutdown_grace_s
    await health_servicer.enter_graceful_shutdown()
    await gate.drain(config.shutdown_grace_s)
    await server.stop(max(0.0, deadline - loop.time()))


GC_YOUNG_THRESHOLD = 20_000
"""Tracked objects allocated and not yet freed between collections of the
youngest generation (Python's default is 700). A request in flight holds a
few hundred (its call, task, futures, messages, records): with 64 in flight
the count passed 700 every few requests, and each collection scanned, and
promoted, objects still in use. The collector took 7% of the event loop's
samples under write load (bench/flame.py)."""


def tune_garbage_collector() -> None:
    """Collect cycles less often, and never scan what startup built again.

    ``gc.freeze`` moves every object alive now (modules, protobuf descriptors,
    the ring's tables) to a generation the collector skips, so an old-generation
    collection scans only what requests left behind. What is frozen is never
    collected: an object of startup's that later becomes cyclic garbage (a
    provisional member table replaced after discovery) stays, once; nothing
    made after this call is frozen.
    """
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


def _stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


def run(config: NodeConfig) -> None:
    """Run a node on uvloop (asyncio's own loop where uvloop is missing)."""
    try:
        import uvloop  # noqa: PLC0415 - optional on platforms without it

        loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:  # pragma: no cover
        loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(_serve_on_a_remembered_loop(config))


async def _serve_on_a_remembered_loop(config: NodeConfig) -> None:
    running_loop.remember(asyncio.get_running_loop())
    try:
        await serve(config)
    finally:
        running_loop.forget()
