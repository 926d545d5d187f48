"""Asking a node whether it serves, through the standard gRPC health service."""

from __future__ import annotations

import time

import grpc
from grpc_health.v1 import health_pb2

from ringkv.client.channels import PLAINTEXT, Security

_CHECK = "/grpc.health.v1.Health/Check"


def check(
    address: str, *, service: str = "", timeout: float = 1.0, security: Security = PLAINTEXT
) -> bool:
    """Whether the node at ``address`` reports SERVING for ``service``."""
    with security.channel(address) as channel:
        call = channel.unary_unary(
            _CHECK,
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        try:
            reply = call(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def wait_until_serving(
    address: str, *, timeout: float, poll_interval: float = 0.1, security: Security = PLAINTEXT
) -> bool:
    """Poll ``check`` until the node serves or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        if check(address, timeout=min(1.0, remaining), security=security):
            return True
        time.sleep(poll_interval)
