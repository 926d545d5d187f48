"""The internal peer API, service ``ringkv.internal.Replica``: this node's replica only."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from ringkv.api import replica_pb2
from ringkv.core.hlc import HybridLogicalClock
from ringkv.server.local_store import LocalStore
from ringkv.server.rpc import Context, Method
from ringkv.server.wire import record_from_wire, record_to_wire


class ReplicaService:
    """Versioned reads and writes of the local store, for coordinators on other nodes."""

    name = "ringkv.internal.Replica"

    def __init__(
        self, store: LocalStore, clock: HybridLogicalClock, now_ms: Callable[[], int]
    ) -> None:
        self._store = store
        self._clock = clock
        self._now_ms = now_ms

    def methods(self) -> dict[str, Method]:
        return {
            "Read": Method(replica_pb2.ReadRequest, self.read),
            "Write": Method(replica_pb2.WriteRequest, self.write),
        }

    async def read(self, request: replica_pb2.ReadRequest, _: Context) -> replica_pb2.ReadResponse:
        self._clock.observe(request.clock)
        results = []
        for key in request.keys:
            record = self._store.read(key)
            results.append(
                replica_pb2.ReadResult(found=True, record=record_to_wire(record))
                if record is not None
                else replica_pb2.ReadResult(found=False)
            )
        return replica_pb2.ReadResponse(results=results, clock=self._clock.last)

    async def write(
        self, request: replica_pb2.WriteRequest, _: Context
    ) -> replica_pb2.WriteResponse:
        self._clock.observe(request.clock)
        hint_for = request.hint_for or None
        applied = await asyncio.gather(
            *(self._store.apply(record_from_wire(r), hint_for=hint_for) for r in request.records)
        )
        now = self._now_ms()
        return replica_pb2.WriteResponse(
            replaced_live=[result.previous_was_live(now) for result in applied],
            clock=self._clock.last,
        )
