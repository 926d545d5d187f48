"""The client API, service ``kv.KeyValue``: validate, call the store, answer.

Every check runs before anything is written, so a rejected request changes
nothing. Until the cluster issues land every level is met by this node's
own replica; levels are still validated so clients see the final contract.
"""

from __future__ import annotations

from ringkv.api import kv_pb2
from ringkv.core.consistency import Consistency
from ringkv.core.validation import Limits, expected_version, ttl_ms
from ringkv.server.local_store import LocalStore
from ringkv.server.rpc import Context, Method


class KeyValueService:
    """Handlers of ``kv.KeyValue``."""

    name = "kv.KeyValue"

    def __init__(self, node_id: str, store: LocalStore, limits: Limits) -> None:
        self._node_id = node_id
        self._store = store
        self._limits = limits

    def methods(self) -> dict[str, Method]:
        return {
            "Get": Method(kv_pb2.GetRequest, self.get),
            "Set": Method(kv_pb2.SetRequest, self.set),
            "Delete": Method(kv_pb2.DeleteRequest, self.delete),
            "Replicate": Method(kv_pb2.ReplicateRequest, self.replicate),
            "Ping": Method(kv_pb2.PingRequest, self.ping),
        }

    async def get(self, request: kv_pb2.GetRequest, _: Context) -> kv_pb2.GetResponse:
        key = self._limits.key(request.key)
        Consistency.from_wire(request.consistency)
        record = self._store.read(key)
        if record is None:
            return kv_pb2.GetResponse(found=False)
        return kv_pb2.GetResponse(
            value=record.value,
            found=True,
            version=record.version.timestamp,
            expires_at_ms=record.expires_at_ms,
        )

    async def set(self, request: kv_pb2.SetRequest, _: Context) -> kv_pb2.SetResponse:
        key = self._limits.key(request.key)
        value = self._limits.value(request.value)
        expected = expected_version(request.version)
        ttl = ttl_ms(request.ttl_ms)
        Consistency.from_wire(request.consistency)
        written = await self._store.write(key, value, ttl_ms=ttl, expected=expected)
        return kv_pb2.SetResponse(ok=True, version=written.record.version.timestamp)

    async def delete(self, request: kv_pb2.DeleteRequest, _: Context) -> kv_pb2.DeleteResponse:
        key = self._limits.key(request.key)
        expected = expected_version(request.version)
        Consistency.from_wire(request.consistency)
        written = await self._store.write(key, b"", tombstone=True, expected=expected)
        return kv_pb2.DeleteResponse(
            ok=True, version=written.record.version.timestamp, found=written.replaced_live
        )

    async def replicate(
        self, request: kv_pb2.ReplicateRequest, _: Context
    ) -> kv_pb2.ReplicateResponse:
        key = self._limits.key(request.key)
        value = b"" if request.is_delete else self._limits.value(request.value)
        await self._store.write(key, value, tombstone=request.is_delete)
        return kv_pb2.ReplicateResponse(ok=True)

    async def ping(self, _request: kv_pb2.PingRequest, _: Context) -> kv_pb2.PingResponse:
        return kv_pb2.PingResponse(node_id=self._node_id)
