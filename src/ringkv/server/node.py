"""A ringkv node: storage, services and the gRPC server, from start to clean stop."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Awaitable, Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ringkv.core.errors import Unavailable
from ringkv.core.hlc import HybridLogicalClock
from ringkv.server import rpc
from ringkv.server.cluster_service import ClusterService
from ringkv.server.commit import DEFAULT_MAX_BATCH, CommitQueue
from ringkv.server.config import HostPort, NodeConfig
from ringkv.server.kv_service import KeyValueService
from ringkv.server.local_store import LocalStore
from ringkv.storage import FsyncMode, open_engine

log = logging.getLogger("ringkv.node")

# Room for a key, a value at the limit and the rest of a request.
_MESSAGE_OVERHEAD_BYTES = 64 << 10


def wall_clock_ms() -> int:
    """Unix time in milliseconds."""
    return time.time_ns() // 1_000_000


async def serve(
    config: NodeConfig,
    *,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[int], Awaitable[None]] | None = None,
) -> None:
    """Run a node until SIGTERM or SIGINT (or ``stop``), then shut down cleanly.

    In-flight requests get ``shutdown_grace_s`` to finish; pending writes are
    committed and the engine is closed before this returns.
    """
    engine = open_engine(config.engine, config.data_path, config.fsync)
    try:
        max_batch = 1 if config.fsync is FsyncMode.ALWAYS else DEFAULT_MAX_BATCH
        commits = CommitQueue(engine, max_batch=max_batch)
        store = LocalStore(engine, commits, HybridLogicalClock(config.node_id), wall_clock_ms)
        try:
            await _serve_until_stopped(config, store, stop or _stop_on_signals(), on_ready)
        finally:
            await commits.close()
    finally:
        engine.close()
    log.info("stopped")


async def _serve_until_stopped(
    config: NodeConfig,
    store: LocalStore,
    stop: asyncio.Event,
    on_ready: Callable[[int], Awaitable[None]] | None,
) -> None:
    limit = config.limits.max_key_bytes + config.limits.max_value_bytes + _MESSAGE_OVERHEAD_BYTES
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            ("grpc.so_reuseport", 0),
        ]
    )
    try:
        port = server.add_insecure_port(config.bind_address)
    except RuntimeError:
        raise Unavailable(f"cannot listen on {config.bind_address}") from None
    advertised = HostPort(config.advertised.host, config.advertised.port or port)
    services: list[rpc.Service] = [
        KeyValueService(config.node_id, store, config.limits),
        ClusterService(config.node_id, str(advertised)),
    ]
    server.add_generic_rpc_handlers([rpc.generic_handler(s) for s in services])
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [s.name for s in services] + [health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )
    await server.start()
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
        },
    )
    if on_ready is not None:
        await on_ready(port)
    await stop.wait()
    log.info("shutting down", extra={"grace_s": config.shutdown_grace_s})
    await health_servicer.enter_graceful_shutdown()
    await server.stop(config.shutdown_grace_s)


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
        runner.run(serve(config))
