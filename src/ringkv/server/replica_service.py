"""The internal peer API, service ``ringkv.internal.Replica``: this node's replica only."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from ringkv.api import replica_pb2
from ringkv.core.hlc import HybridLogicalClock
from ringkv.core.records import ack
from ringkv.server.local_store import LocalStore
from ringkv.server.rpc import Context, Method
from ringkv.server.wire import record_from_wire, record_to_wire

log = logging.getLogger(__name__)


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
        records = [record_from_wire(r) for r in request.records]
        # One record that cannot be stored must not fail the others in the call.
        applied = await asyncio.gather(
            *(self._store.apply(record, hint_for=hint_for) for record in records),
            return_exceptions=True,
        )
        now = self._now_ms()
        response = replica_pb2.WriteResponse(clock=self._clock.last)
        for record, result in zip(records, applied, strict=True):
            if isinstance(result, BaseException):
                log.warning("replica write failed", extra={"error": str(result)})
                response.replaced_live.append(False)
                response.newer.append(0)
                response.failed.append(True)
                continue
            answer = ack(record, result, now)
            response.replaced_live.append(answer.replaced_live)
            response.newer.append(answer.newer)
            response.failed.append(False)
        return response
