"""A grpc.aio server that does nothing: the floor under any Python node's client call.

    PYTHONPATH=src .venv/bin/python bench/bare_grpc.py PORT

Serves two methods on 127.0.0.1:PORT, both answering every request with an
empty message, on uvloop, with grpc's default options (the node's message
size and keepalive options were measured to make no difference):

- ``/bare.Bare/Unary``: a unary handler returns its answer, which grpc
  sends with the status in one batch;
- ``/bare.Bare/StreamOfOne``: a stream handler writes its one answer, then
  grpc sends the status: what a ringkv node does with a client's answer so
  it can give up on one its caller does not read (``--answer-send-timeout``).

The wire cannot tell the two apart, so one unary client calls both.
``bench/budget.py`` drives three of these with the load generator ringkv and
etcd get, to set a node's client call beside the cheapest one grpc.aio serves.
"""

from __future__ import annotations

import argparse
from typing import Any

import grpc
import uvloop

SERVICE = "bare.Bare"
UNARY = f"/{SERVICE}/Unary"
STREAM_OF_ONE = f"/{SERVICE}/StreamOfOne"


async def _unary(_request: bytes, _context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    return b""


async def _stream_of_one(_request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> None:
    await context.write(b"")


async def serve(port: int) -> None:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
        "Unary": grpc.unary_unary_rpc_method_handler(_unary),
        "StreamOfOne": grpc.unary_stream_rpc_method_handler(_stream_of_one),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("port", type=int)
    uvloop.run(serve(parser.parse_args().port))


if __name__ == "__main__":
    main()
