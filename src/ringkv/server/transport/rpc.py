"""Turning async handler functions into gRPC services.

Requests arrive as raw bytes and are parsed here rather than by grpc, so a
malformed message (bad wire format, invalid UTF-8 in a string field) gets
INVALID_ARGUMENT with a reason instead of grpc's opaque INTERNAL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias

import grpc
from google.protobuf.message import DecodeError, Message
from google.rpc import status_pb2

from ringkv.api.headers import STATUS_DETAILS
from ringkv.api.status import error_info
from ringkv.core.errors import (
    DeadlineExceeded,
    InternalError,
    InvalidArgument,
    Overloaded,
    RingkvError,
    Unavailable,
)
from ringkv.server.transport.auth import Access, Policy, access_of
from ringkv.server.transport.errors import abort_with, status_code

log = logging.getLogger(__name__)

_OVERLOAD_LOG_S = 10.0
"""An overload that lasts is logged once per this many seconds of quiet."""

SHUTTING_DOWN = "SHUTTING_DOWN"
"""The reason a closing node gives: nothing of the request ran there."""

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
Handler = Callable[[Any, Context], Awaitable[Message]]
StreamHandler = Callable[[Any, Context], AsyncGenerator[Message, None]]


@dataclass(frozen=True, slots=True)
class Method:
    """One unary RPC: its request type and the coroutine that serves it."""

    request_type: type[Message]
    handler: Handler
    level: Callable[[Any], str] | None = None
    """The consistency level a parsed request runs at, as metrics label it."""


@dataclass(frozen=True, slots=True)
class StreamMethod:
    """One server-streaming RPC: its request type and the async generator
    that yields its responses."""

    request_type: type[Message]
    handler: StreamHandler
    endless: bool = False
    """The stream runs until the caller leaves (a watch): when the node
    starts to shut down it ends with UNAVAILABLE (SHUTTING_DOWN) at once, so
    the caller goes on elsewhere, instead of holding the shutdown up."""


class Service(Protocol):
    """A gRPC service made of unary and server-streaming methods."""

    name: str
    """The full service name, such as ``kv.KeyValue``."""

    def methods(self) -> Mapping[str, Method | StreamMethod]:
        """The service's methods by name."""
        ...


class RequestObserver(Protocol):
    """Told of every call a handler served: where, at which level, with which
    outcome and how long the handler took (the node's metrics)."""

    def __call__(
        self, service: str, method: str, level: str, code: grpc.StatusCode, seconds: float
    ) -> None: ...


_STATUS_CODES = {code.value[0]: code for code in grpc.StatusCode}


@dataclass(frozen=True, slots=True)
class PeerStatus:
    """How another node ended a call, or one item of a batched call."""

    code: grpc.StatusCode
    details: str
    trailing_metadata: tuple[tuple[str, str | bytes], ...]

    @classmethod
    def of_call(cls, error: grpc.aio.AioRpcError) -> PeerStatus:
        return cls(error.code(), error.details() or "", tuple(error.trailing_metadata() or ()))

    @classmethod
    def of_status(cls, serialized: bytes) -> PeerStatus:
        """From a serialized google.rpc.Status (``status_details``)."""
        status = status_pb2.Status.FromString(serialized)
        code = _STATUS_CODES.get(status.code, grpc.StatusCode.UNKNOWN)
        return cls(code, status.message, ((STATUS_DETAILS, serialized),))

    @property
    def reason(self) -> str | None:
        """The ErrorInfo's reason; None when grpc itself ended the call."""
        info = error_info(self.trailing_metadata)
        return None if info is None else info.reason


class RelayedError(Exception):
    """Another node's error answer, passed on to the caller unchanged."""

    def __init__(self, status: PeerStatus) -> None:
        super().__init__(status.details)
        self.status = status


def parse_request(request_type: type[Message], raw: bytes) -> Message:
    """Parse a request, or InvalidArgument saying what is wrong with it."""
    try:
        return request_type.FromString(raw)
    except DecodeError as exc:
        if "UTF-8" in str(exc):
            raise InvalidArgument(
                "a string field is not valid UTF-8", reason="INVALID_UTF8"
            ) from None
        raise InvalidArgument(
            f"malformed {request_type.DESCRIPTOR.full_name}", reason="MALFORMED_REQUEST"
        ) from None


UNSENT_SHARE = 4
"""One connection holds at most 1/UNSENT_SHARE of the unsent-answer budget."""


class Gate:
    """Counts calls inside handlers; once closed it refuses new calls.

    A node that is shutting down closes the gate and waits for it to drain
    before stopping the gRPC server: calls that arrive meanwhile get a
    retryable UNAVAILABLE (reason SHUTTING_DOWN) instead of being cancelled
    mid-way by the stop.

    It also counts the bytes of client and operator answers that have left
    their handlers but not the node (``unsent``): a caller that does not
    read its answers (a slow reader, or a hostile one that opened its flow
    control window to nothing) leaves them in grpc's buffers, where no
    deadline frees them. Past ``max_unsent_bytes`` new calls are refused
    OVERLOADED until callers read or leave; the handlers' limits bound what
    the calls already inside can add. One connection may hold no more than
    a quarter of it (``UNSENT_SHARE``) once its answers are counted: past
    that its own calls are refused, so one caller that never reads, calling
    one call after another, cannot shut out the others. Calls it sends at
    once are all admitted before any answer is counted, so a burst can
    overshoot by as many answers as it had calls inside handlers (bounded by
    ``max_calls``).

    The budget bounds the bytes; ``send_timeout_s`` bounds the time. A
    client or operator answer is written to its call (``Gate.send_within``), and
    one its caller has not taken within that time ends the call, which frees
    it: a reader that never reads holds at most its share, and that only for
    as long.
    """

    def __init__(
        self,
        max_calls: int | None = None,
        max_unsent_bytes: int | None = None,
        *,
        send_timeout_s: float | None = None,
    ) -> None:
        self.send_timeout_s = send_timeout_s
        """How long a client or operator answer may wait for its caller to read
        it before the call is ended DEADLINE_EXCEEDED (ANSWER_NOT_READ); None: for good."""
        self._active = 0
        self._limited = 0
        self._streams = 0
        self._max_calls = max_calls
        self._max_unsent_bytes = max_unsent_bytes
        self.unsent_bytes = 0
        self._unsent_by_caller: dict[str, int] = {}
        self._closed = False
        self.closing = asyncio.Event()
        """Set once the gate closes."""
        self._arrivals = 0
        self._overloaded_since: float | None = None
        self.answers_not_read = 0
        """Answers given up because their callers had not read them within
        ``send_timeout_s``. A unary call among them was counted OK in the
        request metrics as its answer left the handler, before it was known."""

    def enter(self, access: Access, caller: str = "", *, endless: bool = False) -> None:
        """Count a call in, or refuse it: UNAVAILABLE once closed, OVERLOADED
        when ``max_calls`` client and operator calls are inside already.

        Member calls are never turned away for load: they carry heartbeats
        and the replication of calls already admitted somewhere, and their
        number is bounded by the client calls the cluster admits.

        ``endless`` streams (watches) are counted apart, up to ``max_calls``
        of them: they stay for as long as their callers, and must not use
        up the calls that come and go.
        """
        self._arrivals += 1
        if self._closed:
            raise Unavailable("the node is shutting down", reason=SHUTTING_DOWN)
        if endless and access is not Access.MEMBER:
            if self._max_calls is not None and self._streams >= self._max_calls:
                self._note_overload()
                raise Overloaded(
                    f"the node serves its limit of {self._max_calls} watches; "
                    "close some, or watch through another node",
                    metadata={"limit": str(self._max_calls)},
                )
            self._streams += 1
        elif access is not Access.MEMBER:
            if self._max_calls is not None and self._limited >= self._max_calls:
                self._note_overload()
                raise Overloaded(
                    f"the node is serving its limit of {self._max_calls} calls; back off and retry",
                    metadata={"limit": str(self._max_calls)},
                )
            unsent_limit = self._max_unsent_bytes
            if unsent_limit is not None and self.unsent_bytes >= unsent_limit:
                self._note_overload()
                raise Overloaded(
                    f"{self.unsent_bytes} bytes of answers wait for callers to read them, "
                    f"past the limit of {unsent_limit}; back off and retry",
                    metadata={"unsent_bytes": str(self.unsent_bytes)},
                )
            mine = self._unsent_by_caller.get(caller, 0)
            if unsent_limit is not None and mine >= unsent_limit // UNSENT_SHARE:
                self._note_overload()
                raise Overloaded(
                    f"{mine} bytes of answers to this connection wait for it to read them, "
                    f"past its share of {unsent_limit // UNSENT_SHARE}; read them, then retry",
                    metadata={"unsent_bytes": str(mine)},
                )
            self._limited += 1
        self._active += 1

    @property
    def watches(self) -> int:
        """Client and operator streams that run until their callers leave."""
        return self._streams

    def leave(self, access: Access, *, endless: bool = False) -> None:
        self._active -= 1
        if endless and access is not Access.MEMBER:
            self._streams -= 1
        elif access is not Access.MEMBER:
            self._limited -= 1

    def answered(self, access: Access, answer: bytes, context: Context, caller: str = "") -> None:
        """Count an answer as unsent until its call is over (sent, or broken off)."""
        size = len(answer)
        if access is Access.MEMBER or not size:
            # An empty answer (a Get of an absent key) holds nothing, and would
            # leave its caller's entry at zero for another's callback to drop.
            return
        self.unsent_bytes += size
        self._unsent_by_caller[caller] = self._unsent_by_caller.get(caller, 0) + size

        def sent(_: Context) -> None:
            self.unsent_bytes -= size
            left = self._unsent_by_caller[caller] - size
            if left:
                self._unsent_by_caller[caller] = left
            else:
                del self._unsent_by_caller[caller]

        # The stubs type the callback as a class of theirs; grpc calls any callable.
        context.add_done_callback(sent)  # type: ignore[arg-type]

    def _note_overload(self) -> None:
        """Log the first refusal of each overload, not every one."""
        now = time.monotonic()
        if self._overloaded_since is None or now - self._overloaded_since > _OVERLOAD_LOG_S:
            log.warning(
                "overloaded: refusing calls",
                extra={"limit": self._max_calls, "unsent_bytes": self.unsent_bytes},
            )
        self._overloaded_since = now

    async def send_within(self, context: Context, answer: bytes, timeout_s: float | None) -> None:
        """Write ``answer`` to its call. Raises DeadlineExceeded (ANSWER_NOT_READ)
        if the caller has not taken it (flow control) within ``timeout_s``; the
        call must then be ended, which frees the answer."""
        try:
            async with asyncio.timeout(timeout_s):
                await context.write(answer)
        except TimeoutError:
            self.answers_not_read += 1
            log.warning(
                "an answer was not read in time; the call is ended",
                extra={"peer": context.peer(), "bytes": len(answer), "timeout_s": timeout_s},
            )
            raise DeadlineExceeded(
                f"the answer was not read within {timeout_s:g} s", reason="ANSWER_NOT_READ"
            ) from None

    async def drain(self, timeout_s: float, *, quiet_s: float = 0.05) -> None:
        """Close, then wait (at most ``timeout_s``) until no call is inside a
        handler and none arrived for ``quiet_s``.

        Calls already on their way when the gate closes still reach a handler
        and are refused there; the quiet period lets them. Refused callers
        retry elsewhere, so the arrivals stop.
        """
        self._closed = True
        self.closing.set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline:
            arrivals = self._arrivals
            await asyncio.sleep(quiet_s)
            if self._active == 0 and self._arrivals == arrivals:
                return


def _level_label(method: Method, request: Message | None) -> str:
    """The request's level for metrics; empty when it has none or is invalid."""
    if method.level is None or request is None:
        return ""
    try:
        return method.level(request)
    except Exception:  # a label must never fail the call it describes
        return ""


def _serve(
    method: Method,
    service: str,
    method_name: str,
    gate: Gate,
    observe: RequestObserver | None,
    *,
    policy: Policy | None = None,
) -> Callable[[bytes, Context], Awaitable[bytes]]:
    full_name = f"{service}/{method_name}"
    access = access_of(service, method_name)

    async def serve(raw: bytes, context: Context) -> bytes:
        started = time.perf_counter()
        request: Message | None = None

        def note(code: grpc.StatusCode) -> None:
            # Before the answer leaves: a caller that has its answer finds
            # the call in the metrics.
            if observe is not None:
                level = _level_label(method, request)
                observe(service, method_name, level, code, time.perf_counter() - started)

        caller = context.peer()
        try:
            gate.enter(access, caller)
        except RingkvError as error:
            note(status_code(error))
            await abort_with(context, error)
        try:
            if policy is not None:
                policy.check(access, context)
            request = parse_request(method.request_type, raw)
            response = await method.handler(request, context)
        except RingkvError as error:
            note(status_code(error))
            await abort_with(context, error)
        except RelayedError as relayed:
            answer = relayed.status
            note(answer.code)
            await context.abort(
                answer.code, answer.details, trailing_metadata=answer.trailing_metadata
            )
        except asyncio.CancelledError:  # the caller cancelled, or its deadline passed
            note(grpc.StatusCode.CANCELLED)
            raise
        except Exception:
            log.exception("unexpected error in %s", full_name)
            note(grpc.StatusCode.INTERNAL)
            await abort_with(context, InternalError(f"internal error in {full_name}"))
        finally:
            gate.leave(access)
        note(grpc.StatusCode.OK)
        serialized = response.SerializeToString()
        gate.answered(access, serialized, context, caller)
        return serialized

    return serve


def _sending(
    answer: Callable[[bytes, Context], Awaitable[bytes]], gate: Gate
) -> Callable[[bytes, Context], Awaitable[None]]:
    async def send(raw: bytes, context: Context) -> None:
        serialized = await answer(raw, context)
        try:
            await gate.send_within(context, serialized, gate.send_timeout_s)
        except DeadlineExceeded as error:
            await abort_with(context, error)

    return send


def _serve_stream(
    method: StreamMethod,
    service: str,
    method_name: str,
    gate: Gate,
    observe: RequestObserver | None,
    *,
    policy: Policy | None = None,
) -> Callable[[bytes, Context], Awaitable[None]]:
    """Like ``_serve``, for a method that yields its responses: the call stays
    inside the gate until the last one is sent, and an error after some
    responses ends the stream with its status."""
    full_name = f"{service}/{method_name}"
    access = access_of(service, method_name)

    # An endless stream (a watch) is not timed: its caller reads as events
    # come, and each waits for the one before it, so it holds one at most.
    timed = access is not Access.MEMBER and not method.endless
    timeout_s = gate.send_timeout_s if timed else None

    async def serve(raw: bytes, context: Context) -> None:
        started = time.perf_counter()
        code = grpc.StatusCode.CANCELLED
        try:
            try:
                gate.enter(access, endless=method.endless)
            except RingkvError as error:
                code = status_code(error)
                await abort_with(context, error)
            try:
                if policy is not None:
                    policy.check(access, context)
                request = parse_request(method.request_type, raw)
                async with aclosing(method.handler(request, context)) as responses:
                    stream = _until(responses, gate.closing) if method.endless else responses
                    async for response in stream:
                        await gate.send_within(context, response.SerializeToString(), timeout_s)
                code = grpc.StatusCode.OK
            except RingkvError as error:
                code = status_code(error)
                await abort_with(context, error)
            except Exception:
                log.exception("unexpected error in %s", full_name)
                code = grpc.StatusCode.INTERNAL
                await abort_with(context, InternalError(f"internal error in {full_name}"))
            finally:
                gate.leave(access, endless=method.endless)
        finally:
            if observe is not None:
                observe(service, method_name, "", code, time.perf_counter() - started)

    return serve


async def _until(
    responses: AsyncGenerator[Message, None], closing: asyncio.Event
) -> AsyncGenerator[Message, None]:
    """``responses`` until ``closing`` is set; then Unavailable (SHUTTING_DOWN).

    Each response is awaited in a task of its own, raced against the gate; a
    task still running when this ends (the gate closed, or the caller left
    and this task was cancelled) is cancelled and waited for, so the
    generator is idle again before the caller closes it.
    """
    closed = asyncio.ensure_future(closing.wait())
    following: asyncio.Future[Message] | None = None
    try:
        while True:
            following = asyncio.ensure_future(anext(responses))
            await asyncio.wait({following, closed}, return_when=asyncio.FIRST_COMPLETED)
            if not following.done():
                raise Unavailable("the node is shutting down", reason=SHUTTING_DOWN)
            try:
                response = following.result()
            except StopAsyncIteration:
                return
            yield response
    finally:
        closed.cancel()
        # Until it is done, even if this task is cancelled again meanwhile:
        # the caller closes the generator next, which must be idle by then.
        while following is not None and not following.done():
            following.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait([following])


def generic_handler(
    service: Service,
    gate: Gate,
    observe: RequestObserver | None = None,
    policy: Policy | None = None,
) -> grpc.GenericRpcHandler:
    """A grpc handler that serves ``service`` through ``gate``, telling
    ``observe`` of every call; ``policy`` (``server/transport/auth.py``) decides, per
    method and before the request is parsed, whether the caller may call it."""
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for method_name, method in service.methods().items():
        if isinstance(method, StreamMethod):
            handlers[method_name] = grpc.unary_stream_rpc_method_handler(
                _serve_stream(method, service.name, method_name, gate, observe, policy=policy)
            )
        elif gate.send_timeout_s is None or access_of(service.name, method_name) is Access.MEMBER:
            handlers[method_name] = grpc.unary_unary_rpc_method_handler(
                _serve(method, service.name, method_name, gate, observe, policy=policy)
            )
        else:
            # Served as a stream of one answer, which the wire cannot tell from
            # a unary answer: a unary handler's answer leaves grpc's hands
            # with no way to give up on it, a written one can be timed.
            answer = _serve(method, service.name, method_name, gate, observe, policy=policy)
            handlers[method_name] = grpc.unary_stream_rpc_method_handler(_sending(answer, gate))
    return grpc.method_handlers_generic_handler(service.name, handlers)
