"""gRPC servers that do nothing: the floor under any Python node's client call.

    PYTHONPATH=src .venv/bin/python bench/bare_grpc.py PORT [--threads N]

Serves two methods on 127.0.0.1:PORT, both answering every request with an
empty message, with grpc's default options (the node's message size and
keepalive options were measured to make no difference):

- ``/bare.Bare/Unary``: a unary handler returns its answer, which grpc
  sends with the status in one batch;
- ``/bare.Bare/StreamOfOne``: a stream handler writes its one answer, then
  grpc sends the status: what a ringkv node does with a client's answer so
  it can give up on one its caller does not read (``--answer-send-timeout``).

By default the server is grpc.aio on uvloop, as a node's is. With
``--threads N`` it is grpc's synchronous server, whose handlers run on N
threads: cheaper per empty call, but a handler there has no event loop to
coordinate a write on without a hand-off to one.

The wire cannot tell the two methods apart, so one unary client calls both.
``bench/budget.py`` drives three of these with the load generator ringkv and
etcd get, to set a node's client call beside the cheapest ones Python's grpc
serves.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import uvloop

SERVICE = "bare.Bare"
UNARY = f"/{SERVICE}/Unary"
STREAM_OF_ONE = f"/{SERVICE}/StreamOfOne"
OPTIONS = [("grpc.so_reuseport", 0)]


async def _unary(_request: bytes, _context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    return b""


async def _stream_of_one(_request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> None:
    await context.write(b"")


def _unary_threaded(_request: bytes, _context: grpc.ServicerContext) -> bytes:
    return b""


def _stream_of_one_threaded(_request: bytes, _context: grpc.ServicerContext) -> Iterator[bytes]:
    yield b""


def _handler(unary: Any, stream_of_one: Any) -> grpc.GenericRpcHandler:
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "StreamOfOne": grpc.unary_stream_rpc_method_handler(stream_of_one),
    }
    return grpc.method_handlers_generic_handler(SERVICE, handlers)


async def serve_aio(port: int) -> None:
    server = grpc.aio.server(options=OPTIONS)
    server.add_generic_rpc_handlers((_handler(_unary, _stream_of_one),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def serve_threaded(port: int, threads: int) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=threads), options=OPTIONS)
    server.add_generic_rpc_handlers((_handler(_unary_threaded, _stream_of_one_threaded),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("port", type=int)
    parser.add_argument("--threads", type=int, help="grpc's synchronous server on N threads")
    args = parser.parse_args()
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be at least 1")
    if args.threads is not None:
        serve_threaded(args.port, args.threads)
    else:
        uvloop.run(serve_aio(args.port))


if __name__ == "__main__":
    main()
