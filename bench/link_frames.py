"""CPU per replica call: a gRPC unary call against a frame on the member link.

    PYTHONPATH=src .venv/bin/python bench/link_frames.py   # --calls 20000 --concurrency 1,16

A server process serves one replica read handler twice, through the node's
own edges: as a gRPC method (``rpc.generic_handler``, its gate and parsing)
and on the member link (``LinkServer``). A client in this process calls each
``--calls`` times at each concurrency, on uvloop as a node runs, and the
table shows calls a second and the CPU (user and system) each call cost the
client and the server, from ``getrusage`` and ``/proc``. Transports
alternate, so both meet the same machine. A benchmark, not a test: the
numbers move with the machine's load, the ratio much less.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import resource
import time
from collections.abc import Awaitable, Callable
from multiprocessing.connection import Connection

import grpc
import uvloop
from cluster import cpu_seconds
from rich.console import Console
from rich.table import Table

from ringkv.api import replica_pb2, replica_pb2_grpc
from ringkv.server.transport import rpc
from ringkv.server.transport.auth import Policy, Tokens
from ringkv.server.transport.link import (
    REPLICA_READ,
    LinkClient,
    LinkMethod,
    LinkServer,
    bind_link_socket,
)

SERVICE = "ringkv.internal.Replica"
MAX_FRAME = 1 << 20


async def read(request: replica_pb2.ReadRequest, _: object = None) -> replica_pb2.ReadResponse:
    """A replica's answer to a one-key read, found: what a QUORUM read asks a peer."""
    record = replica_pb2.Record(key=request.keys[0], value=b"v" * 100)
    return replica_pb2.ReadResponse(results=[replica_pb2.ReadResult(found=True, record=record)])


class ReadService:
    name = SERVICE

    def methods(self) -> dict[str, rpc.Method]:
        return {"Read": rpc.Method(replica_pb2.ReadRequest, read)}


def serve(conn: Connection) -> None:
    async def main() -> None:
        gate = rpc.Gate()
        server = grpc.aio.server()
        grpc_port = server.add_insecure_port("127.0.0.1:0")
        server.add_generic_rpc_handlers([rpc.generic_handler(ReadService(), gate)])
        await server.start()
        sock = bind_link_socket("127.0.0.1", 0)
        link = LinkServer(
            "server",
            {REPLICA_READ: LinkMethod(SERVICE, "Read", replica_pb2.ReadRequest, read)},
            gate,
            Policy(Tokens(), member_certs=False).admit_member,
            max_frame_bytes=MAX_FRAME,
        )
        await link.start(sock, None)
        conn.send((grpc_port, sock.getsockname()[1]))
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)
        await link.close()
        await server.stop(None)

    uvloop.run(main())


def own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def measure(
    call: Callable[[], Awaitable[object]], calls: int, concurrency: int, server_pid: int
) -> tuple[float, float, float]:
    """Calls a second, client and server CPU µs per call."""
    for _ in range(200):  # warm up: connections, caches
        await call()
    per_worker = calls // concurrency

    async def worker() -> None:
        for _ in range(per_worker):
            await call()

    started, client_before, server_before = (
        time.perf_counter(),
        own_cpu_s(),
        cpu_seconds(server_pid),
    )
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    done = per_worker * concurrency
    client_us = (own_cpu_s() - client_before) / done * 1e6
    server_us = (cpu_seconds(server_pid) - server_before) / done * 1e6
    return done / elapsed, client_us, server_us


async def run(
    grpc_port: int, link_port: int, server_pid: int, *, calls: int, levels: list[int], rounds: int
) -> list[tuple[str, int, tuple[float, float, float]]]:
    request = replica_pb2.ReadRequest(keys=[b"key-000042"])
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}")
    stub = replica_pb2_grpc.ReplicaStub(channel)
    link = LinkClient(
        "server", "127.0.0.1", link_port, token=None, tls=None, max_frame_bytes=MAX_FRAME
    )
    raw = request.SerializeToString()

    async def over_grpc() -> object:
        return await stub.Read(request, timeout=5)

    async def over_link() -> object:
        return replica_pb2.ReadResponse.FromString(await link.call(REPLICA_READ, raw, 5))

    results = []
    for concurrency in levels:
        for _ in range(rounds):
            for name, call in (("gRPC unary", over_grpc), ("member link", over_link)):
                numbers = await measure(call, calls, concurrency, server_pid)
                results.append((name, concurrency, numbers))
    link.close()
    await channel.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=20_000, help="calls per run")
    parser.add_argument("--concurrency", default="1,16", help="calls in flight")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds")
    args = parser.parse_args()
    levels = [int(level) for level in args.concurrency.split(",")]
    ours, theirs = multiprocessing.Pipe()
    server = multiprocessing.get_context("fork").Process(target=serve, args=(theirs,))
    server.start()
    try:
        grpc_port, link_port = ours.recv()
        assert server.pid is not None
        results = uvloop.run(
            run(
                grpc_port,
                link_port,
                server.pid,
                calls=args.calls,
                levels=levels,
                rounds=args.rounds,
            )
        )
    finally:
        ours.send("stop")
        server.join(10)
        if server.is_alive():
            server.kill()
    table = Table(title="one replica read, CPU per call (both processes on this machine)")
    for column in ("transport", "in flight", "calls/s", "client µs", "server µs", "both µs"):
        table.add_column(column, justify="right")
    for name, concurrency, (rate, client_us, server_us) in results:
        table.add_row(
            name,
            str(concurrency),
            f"{rate:,.0f}",
            f"{client_us:.0f}",
            f"{server_us:.0f}",
            f"{client_us + server_us:.0f}",
        )
    Console().print(table)


if __name__ == "__main__":
    main()
