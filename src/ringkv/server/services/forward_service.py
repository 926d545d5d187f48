"""The member API ``ringkv.internal.Forward``: plain writes other nodes got
from clients and sent on to this node, their keys' owner, many to a call
(``ringkv.server.transport.forwarding``)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator
from typing import Protocol

from ringkv.api import forward_pb2, kv_pb2
from ringkv.core.errors import InternalError, InvalidArgument, RingkvError
from ringkv.server.transport.errors import status_code, status_details
from ringkv.server.transport.link import FORWARD_WRITE, LinkMethod
from ringkv.server.transport.rpc import Context, StreamMethod

log = logging.getLogger(__name__)


class ForwardedWriteHandler(Protocol):
    """Runs one forwarded write as a client's (``KeyValueService``)."""

    async def set_forwarded(
        self, request: kv_pb2.SetRequest, timeout_s: float
    ) -> kv_pb2.SetResponse: ...

    async def delete_forwarded(
        self, request: kv_pb2.DeleteRequest, timeout_s: float
    ) -> kv_pb2.DeleteResponse: ...


class ForwardService:
    """Coordinates forwarded writes as ``kv.KeyValue`` does, and answers each
    as soon as it is done.

    A call is a member call: the node that forwarded its writes admitted
    each of them against its own ``--max-concurrent-calls``, as with replica
    calls, so they are not counted again here. The metrics count the call,
    not its writes; each write's outcome is counted where a client sent it.
    """

    name = "ringkv.internal.Forward"

    def __init__(self, kv: ForwardedWriteHandler) -> None:
        self._kv = kv

    def methods(self) -> dict[str, StreamMethod]:
        return {"Writes": StreamMethod(forward_pb2.ForwardedWrites, self.writes)}

    def link_methods(self) -> dict[int, LinkMethod]:
        """On the member link a forwarded write travels alone: a frame costs
        little, so sharing one buys nothing."""
        return {
            FORWARD_WRITE: LinkMethod(self.name, "Write", forward_pb2.ForwardedWrite, self.write)
        }

    async def write(self, write: forward_pb2.ForwardedWrite) -> forward_pb2.ForwardedAnswer:
        """One forwarded write's answer, an error included."""
        return await self._answer(0, write)

    async def writes(
        self, request: forward_pb2.ForwardedWrites, _: Context
    ) -> AsyncGenerator[forward_pb2.ForwardedAnswers, None]:
        pending = {
            asyncio.ensure_future(self._answer(index, write))
            for index, write in enumerate(request.writes)
        }
        try:
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                yield forward_pb2.ForwardedAnswers(answers=[task.result() for task in done])
        finally:
            # The caller left: what has not run yet need not. The call ends
            # once they have stopped, so the gate counts it until then.
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)

    async def _answer(
        self, index: int, write: forward_pb2.ForwardedWrite
    ) -> forward_pb2.ForwardedAnswer:
        """The write's answer; an error is the status a call of its own would have had."""
        timeout_s = write.timeout_ms / 1000
        try:
            kind = write.WhichOneof("write")
            if kind == "set":
                response = await self._kv.set_forwarded(write.set, timeout_s)
                return forward_pb2.ForwardedAnswer(index=index, set=response)
            if kind == "delete":
                deleted = await self._kv.delete_forwarded(write.delete, timeout_s)
                return forward_pb2.ForwardedAnswer(index=index, delete=deleted)
            raise InvalidArgument(
                "a forwarded write is a set or a delete", reason="MALFORMED_REQUEST"
            )
        except RingkvError as error:
            failed = error
        except Exception:
            log.exception("unexpected error in a forwarded write")
            failed = InternalError("internal error in a forwarded write")
        return forward_pb2.ForwardedAnswer(
            index=index, error=status_details(failed, status_code(failed))
        )
