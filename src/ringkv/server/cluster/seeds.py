"""Talking to the ``-peers`` a node starts with: their member tables, and joining.

A starting node knows its seeds only by address. Each call dials a channel of
its own: failed calls to a seed that is not up yet would put a peer's
channel into reconnect backoff, and the first replica calls after it comes
up would fail.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

import grpc

from ringkv.api import kv_pb2, kv_pb2_grpc
from ringkv.core.membership import Membership
from ringkv.server.transport.peers import ChannelOpener
from ringkv.server.transport.wire import membership_from_wire

log = logging.getLogger("ringkv.membership")

_JOIN_RETRY_S = 1.0
"""How long a node waits after every seed refused to admit it."""


class Seeds:
    """The seed nodes of one node, by id and address."""

    def __init__(
        self, node_id: str, address: str, seeds: Mapping[str, str], open_channel: ChannelOpener
    ) -> None:
        self._node_id = node_id
        self._address = address
        self.addresses = dict(seeds)
        self._open_channel = open_channel

    def __bool__(self) -> bool:
        return bool(self.addresses)

    async def newest_table(self) -> Membership | None:
        """The newest member table any seed reports, or None if none has one."""
        answers = await asyncio.gather(
            *(self._table_of(address) for address in self.addresses.values()),
            return_exceptions=True,
        )
        best: Membership | None = None
        for answer in answers:
            if isinstance(answer, Membership) and (best is None or answer.newer_than(best)):
                best = answer
        return best

    async def _table_of(self, address: str) -> Membership | None:
        async with self._open_channel(address) as channel:
            response = await kv_pb2_grpc.ClusterStub(channel).GetClusterState(
                kv_pb2.GetClusterStateRequest(), timeout=1.0
            )
        return membership_from_wire(response.table)

    async def join(self) -> Membership:
        """Ask to be admitted until a member admits this node; the table it is in."""
        request = kv_pb2.JoinRequest(node_id=self._node_id, address=self._address)
        while True:
            for seed, address in self.addresses.items():
                try:
                    async with self._open_channel(address) as channel:
                        response = await kv_pb2_grpc.ClusterStub(channel).Join(request, timeout=5.0)
                except grpc.aio.AioRpcError as error:
                    log.info("join refused", extra={"peer": seed, "error": error.details()})
                    continue
                table = membership_from_wire(response.members)
                if table is not None and self._node_id in table.addresses:
                    log.info("joined", extra={"epoch": table.epoch})
                    return table
            await asyncio.sleep(_JOIN_RETRY_S)
