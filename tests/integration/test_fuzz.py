"""Thousands of random, adversarial and malformed requests against one live node.

One real node process (with a small ``--max-value-bytes`` so oversized values
are cheap) is sent well over 10,000 requests over a raw gRPC channel, through
generic callables that send arbitrary bytes to every method of ``kv.KeyValue``
and ``kv.Cluster``. Hypothesis generates a mix of:

* well-formed messages with adversarial fields: empty keys, keys of a few
  hundred and of 4090-4100 UTF-8 bytes (multibyte characters included), values
  around the limit, unknown consistency levels, negative and huge TTLs and
  versions anywhere in int64;
* hand-encoded wire messages: invalid UTF-8 in string fields, unknown fields,
  wrong wire types, groups, overlong and truncated varints, huge length
  prefixes, and well-formed messages truncated or with bytes flipped;
* random bytes.

Every request, whatever its origin, is parsed here with the generated message
classes (the same protobuf runtime the node uses), and its exact outcome is
computed from the limits and from a model of what the node stores: a request
that does not parse is INVALID_ARGUMENT; otherwise the checks run in the order
of ``kv_service`` (key, value, version, ttl, consistency) and the first that
fails decides the status and ErrorInfo reason; a version precondition is
decided against the model. Successful writes update the model and successful
reads are checked against it. Some requests go one at a time, others in small
concurrent bursts on distinct keys so that they share the node's group commits.

Afterwards the node must still be alive and answering, must have logged no
error, must stop cleanly, and its LMDB data dir, opened directly, must hold
exactly the records of the model and nothing that breaks a limit.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar, cast

import grpc
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message
from google.rpc import error_details_pb2, status_pb2
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from ringkv.api import kv_pb2
from ringkv.core.records import Record
from ringkv.core.validation import MAX_TTL_MS
from ringkv.storage.lmdb_engine import LmdbEngine
from tests.support.nodes import NodeFactory, NodeProcess

NODE_ID = "fuzz"
LONE_TERM = 1
"""The term a lone node elects itself in when it starts with an empty data dir."""
MAX_KEY_BYTES = 4096
MAX_VALUE_BYTES = 4096
INT64_MAX = (1 << 63) - 1
INT64_MIN = -(1 << 63)
UINT64_MAX = (1 << 64) - 1
CALL_TIMEOUT_S = 5.0
STATUS_DETAILS_KEY = "grpc-status-details-bin"

MIN_REQUESTS = 10_000
OPS_PER_EXAMPLE = 50
EXAMPLES = 210
MAX_BURST = 8
"""Concurrent requests in flight at once (on distinct keys)."""

LONG_KEY_BYTES = 511
"""Longer than any LMDB key: the engine must store such keys another way."""

COVERED_OUTCOMES = [
    "Set OK",
    "Set OK of a long key",
    "Get OK found",
    "Delete OK",
    "Replicate OK",
    "Set FAILED_PRECONDITION VERSION_MISMATCH",
    "Delete FAILED_PRECONDITION VERSION_MISMATCH",
    "INVALID_ARGUMENT EMPTY_KEY",
    "INVALID_ARGUMENT KEY_TOO_LARGE",
    "Set RESOURCE_EXHAUSTED VALUE_TOO_LARGE",
    "Replicate RESOURCE_EXHAUSTED VALUE_TOO_LARGE",
    "INVALID_ARGUMENT INVALID_VERSION",
    "INVALID_ARGUMENT NEGATIVE_TTL",
    "INVALID_ARGUMENT TTL_TOO_LARGE",
    "INVALID_ARGUMENT INVALID_CONSISTENCY",
    "INVALID_ARGUMENT INVALID_UTF8",
    "INVALID_ARGUMENT MALFORMED_REQUEST",
    "Ping OK",
    "GetClusterState OK",
]

OK = grpc.StatusCode.OK
INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT
RESOURCE_EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
FAILED_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION

T = TypeVar("T")
Rejection = tuple[grpc.StatusCode, str]
"""A status code and the ErrorInfo reason that must come with it."""
Expected = dict[grpc.StatusCode, str | None]
"""The outcomes a request may have: status code -> reason (None: any reason)."""


# --- the methods --------------------------------------------------------------------


@dataclass(frozen=True)
class Rpc:
    service: str
    name: str
    request: type[Message]
    response: type[Message]

    @property
    def path(self) -> str:
        return f"/{self.service}/{self.name}"


RPCS = {
    rpc.name: rpc
    for rpc in [
        Rpc("kv.KeyValue", "Get", kv_pb2.GetRequest, kv_pb2.GetResponse),
        Rpc("kv.KeyValue", "Set", kv_pb2.SetRequest, kv_pb2.SetResponse),
        Rpc("kv.KeyValue", "Delete", kv_pb2.DeleteRequest, kv_pb2.DeleteResponse),
        Rpc("kv.KeyValue", "Replicate", kv_pb2.ReplicateRequest, kv_pb2.ReplicateResponse),
        Rpc("kv.KeyValue", "Ping", kv_pb2.PingRequest, kv_pb2.PingResponse),
        Rpc("kv.Cluster", "Heartbeat", kv_pb2.HeartbeatRequest, kv_pb2.HeartbeatResponse),
        Rpc("kv.Cluster", "RequestVote", kv_pb2.RequestVoteRequest, kv_pb2.RequestVoteResponse),
        Rpc(
            "kv.Cluster",
            "GetClusterState",
            kv_pb2.GetClusterStateRequest,
            kv_pb2.GetClusterStateResponse,
        ),
    ]
}
METHODS = sorted(RPCS)
methods = st.sampled_from(METHODS)


def now_ms() -> int:
    """The wall clock in Unix milliseconds, as the node reads it."""
    return time.time_ns() // 1_000_000


def parse(method: str, payload: bytes) -> Message | DecodeError:
    """The request as the node parses it, or why it does not parse."""
    try:
        return RPCS[method].request.FromString(payload)
    except DecodeError as error:
        return error


def request_key(request: Message | DecodeError) -> bytes | None:
    """The UTF-8 key a parsed request reads or writes, if it has one."""
    keyed = kv_pb2.GetRequest | kv_pb2.SetRequest | kv_pb2.DeleteRequest | kv_pb2.ReplicateRequest
    return request.key.encode() if isinstance(request, keyed) else None


# --- the limits ---------------------------------------------------------------------


def key_rejection(key: str) -> Rejection | None:
    if not key:
        return INVALID_ARGUMENT, "EMPTY_KEY"
    if len(key.encode()) > MAX_KEY_BYTES:
        return INVALID_ARGUMENT, "KEY_TOO_LARGE"
    return None


def value_rejection(value: bytes) -> Rejection | None:
    if len(value) > MAX_VALUE_BYTES:
        return RESOURCE_EXHAUSTED, "VALUE_TOO_LARGE"
    return None


def version_rejection(version: int) -> Rejection | None:
    return (INVALID_ARGUMENT, "INVALID_VERSION") if version < -1 else None


def ttl_rejection(ttl_ms: int) -> Rejection | None:
    if ttl_ms < 0:
        return INVALID_ARGUMENT, "NEGATIVE_TTL"
    return (INVALID_ARGUMENT, "TTL_TOO_LARGE") if ttl_ms > MAX_TTL_MS else None


def consistency_rejection(level: int) -> Rejection | None:
    return None if 0 <= level <= 4 else (INVALID_ARGUMENT, "INVALID_CONSISTENCY")


def rejection(request: Message) -> Rejection | None:
    """How the limits reject a parsed request: the first failing check, in server order."""
    if isinstance(request, kv_pb2.GetRequest):
        return key_rejection(request.key) or consistency_rejection(request.consistency)
    if isinstance(request, kv_pb2.SetRequest):
        return (
            key_rejection(request.key)
            or value_rejection(request.value)
            or version_rejection(request.version)
            or ttl_rejection(request.ttl_ms)
            or consistency_rejection(request.consistency)
        )
    if isinstance(request, kv_pb2.DeleteRequest):
        return (
            key_rejection(request.key)
            or version_rejection(request.version)
            or consistency_rejection(request.consistency)
        )
    if isinstance(request, kv_pb2.ReplicateRequest):
        return key_rejection(request.key) or (
            None if request.is_delete else value_rejection(request.value)
        )
    return None


# --- the model of what the node stores ----------------------------------------------


@dataclass
class Entry:
    """What the newest stored record of one key must be."""

    value: bytes | None
    """The value; None for a tombstone."""
    version: int | None
    """Its version; None until learnt (Replicate does not return it)."""
    expires_lo: int = 0
    expires_hi: int = 0
    """Bounds on expires_at_ms (the node's clock read during the write); 0, 0: never."""

    def live(self, t0: int, t1: int) -> bool | None:
        """Whether a request the node served between ``t0`` and ``t1`` sees a live value.

        None when the value expires within that window, so either is right.
        """
        if self.value is None:
            return False
        if self.expires_hi == 0 or t1 < self.expires_lo:
            return True
        if t0 >= self.expires_hi:
            return False
        return None


@dataclass
class Model:
    entries: dict[bytes, Entry] = field(default_factory=dict)
    last_version: int = 0
    """The largest version a write has returned: versions only grow."""

    def precondition(self, key: bytes, expected: int, t0: int, t1: int) -> set[grpc.StatusCode]:
        """OK and/or FAILED_PRECONDITION: what a write with ``version=expected`` may get."""
        if expected == 0:
            return {OK}
        entry = self.entries.get(key)
        live = False if entry is None else entry.live(t0, t1)
        if expected == -1:
            return (
                {OK, FAILED_PRECONDITION} if live is None else {FAILED_PRECONDITION if live else OK}
            )
        if live is False:
            return {FAILED_PRECONDITION}
        assert entry is not None
        if entry.version is not None and entry.version != expected:
            return {FAILED_PRECONDITION}
        if entry.version is None or live is None:
            return {OK, FAILED_PRECONDITION}
        return {OK}

    def expected(self, request: Message | DecodeError, t0: int, t1: int) -> Expected:
        """Every outcome a request served between ``t0`` and ``t1`` may have."""
        if isinstance(request, DecodeError):
            reason = "INVALID_UTF8" if "UTF-8" in str(request) else "MALFORMED_REQUEST"
            return {INVALID_ARGUMENT: reason}
        rejected = rejection(request)
        if rejected is not None:
            return {rejected[0]: rejected[1]}
        if not isinstance(request, kv_pb2.SetRequest | kv_pb2.DeleteRequest):
            return {OK: None}
        codes = self.precondition(request.key.encode(), request.version, t0, t1)
        allowed: Expected = {code: None if code is OK else "VERSION_MISMATCH" for code in codes}
        return allowed


# --- requests -----------------------------------------------------------------------


class PrettyPrinter(Protocol):
    """What hypothesis passes to ``_repr_pretty_``."""

    def text(self, obj: str) -> None: ...


@dataclass(frozen=True, repr=False)
class Op:
    """One request: a method and the bytes sent to it."""

    method: str
    payload: bytes
    current_version: bool = False
    """Replace the version field with the key's current version, when the model knows it."""

    def __repr__(self) -> str:
        return f"Op({self.method!r}, {short(self.payload, 60)}, {self.current_version})"

    def _repr_pretty_(self, printer: PrettyPrinter, cycle: bool) -> None:
        # Hypothesis prints a failing example: keep it short, payloads reach 8 KiB.
        printer.text(repr(self))


@dataclass(frozen=True)
class Reply:
    code: grpc.StatusCode
    body: bytes
    reason: str | None
    details: str


def short(thing: object, limit: int = 300) -> str:
    text = repr(thing)
    return text if len(text) <= limit else f"{text[:limit]}...({len(text)} chars)"


def error_reason(error: grpc.RpcError) -> str | None:
    """The ErrorInfo reason of a failed call, None if it carries no ringkv status details."""
    trailers = cast("tuple[tuple[str, str | bytes], ...]", error.trailing_metadata())
    for name, raw in trailers:
        if name == STATUS_DETAILS_KEY and isinstance(raw, bytes):
            status = status_pb2.Status.FromString(raw)
            assert status.code == error.code().value[0], status
            for detail in status.details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    assert info.domain == "ringkv", info
                    return info.reason
    return None


def failed(error: grpc.RpcError) -> Reply:
    return Reply(error.code(), b"", error_reason(error), error.details() or "")


def await_reply(call: grpc.Future[bytes]) -> Reply:
    try:
        body = call.result()
    except grpc.RpcError as error:
        return failed(error)
    return Reply(OK, body, None, "")


class Fuzzer:
    """Sends requests to one node and checks every reply against the model."""

    def __init__(self, channel: grpc.Channel, node: NodeProcess) -> None:
        self._node = node
        self._calls: dict[str, grpc.UnaryUnaryMultiCallable[bytes, bytes]] = {
            name: channel.unary_unary(rpc.path, request_serializer=None, response_deserializer=None)
            for name, rpc in RPCS.items()
        }
        self.model = Model()
        self.sent = 0
        self.outcomes: Counter[str] = Counter()
        """Replies by method, status code and reason, for coverage and the summary."""

    def run(self, ops: Sequence[Op], *, concurrent: bool) -> None:
        """Send ``ops`` one at a time, or in concurrent bursts on distinct keys."""
        burst: list[Op] = []
        keys: set[bytes] = set()
        for op in ops:
            key = request_key(parse(op.method, op.payload))
            if burst and (not concurrent or len(burst) == MAX_BURST or key in keys):
                self.send(burst)
                burst, keys = [], set()
            burst.append(op)
            if key is not None:
                keys.add(key)
        if burst:
            self.send(burst)

    def send(self, ops: Sequence[Op]) -> None:
        """Send ``ops`` at once (they must not share a key) and check every reply."""
        requests: list[tuple[Op, bytes, Message | DecodeError]] = []
        for op in ops:
            payload = self._with_current_version(op)
            requests.append((op, payload, parse(op.method, payload)))
        floor = self.model.last_version
        t0 = now_ms()
        if len(requests) == 1:
            op, payload, _ = requests[0]
            replies = [self._call(op.method, payload)]
        else:  # all in flight at once, so that they share group commits
            calls = [
                self._calls[op.method].future(payload, timeout=CALL_TIMEOUT_S)
                for op, payload, _ in requests
            ]
            replies = [await_reply(call) for call in calls]
        t1 = now_ms()
        self.sent += len(requests)
        versions: list[int] = []
        for (op, payload, request), reply in zip(requests, replies, strict=True):
            self.outcomes[f"{op.method} {reply.code.name} {reply.reason or ''}".rstrip()] += 1
            allowed = self.model.expected(request, t0, t1)
            if reply.code not in allowed or (
                reply.code is not OK and allowed[reply.code] not in (None, reply.reason)
            ):
                raise AssertionError(
                    f"{op.method} {short(request)} sent as {short(payload)}: expected "
                    f"{ {code.name: reason for code, reason in allowed.items()} }, got "
                    f"{reply.code.name} ({reply.reason}: {reply.details})"
                )
            if reply.code is not OK:
                continue
            assert not isinstance(request, DecodeError)
            version = self._apply(request, RPCS[op.method].response.FromString(reply.body), t0, t1)
            if version is not None:
                assert version > floor, f"{op.method} {short(request)}: {version} <= {floor}"
                versions.append(version)
        assert len(set(versions)) == len(versions), f"one version for two writes: {versions}"
        self.model.last_version = max([floor, *versions])

    def _call(self, method: str, payload: bytes) -> Reply:
        try:
            body = self._calls[method](payload, timeout=CALL_TIMEOUT_S)
        except grpc.RpcError as error:
            return failed(error)
        return Reply(OK, body, None, "")

    def _with_current_version(self, op: Op) -> bytes:
        if not op.current_version:
            return op.payload
        request = parse(op.method, op.payload)
        assert isinstance(request, kv_pb2.SetRequest | kv_pb2.DeleteRequest)
        entry = self.model.entries.get(request.key.encode())
        if entry is None or entry.version is None:
            return op.payload
        request.version = entry.version
        return request.SerializeToString()

    def _apply(self, request: Message, response: Message, t0: int, t1: int) -> int | None:
        """Check a successful reply and record what it wrote; the version it returned."""
        entries = self.model.entries
        match request, response:
            case kv_pb2.GetRequest(), kv_pb2.GetResponse():
                self._check_read(request.key.encode(), response, t0, t1)
            case kv_pb2.SetRequest(), kv_pb2.SetResponse():
                assert response.ok, response
                ttl = request.ttl_ms
                lo, hi = (min(t0 + ttl, INT64_MAX), min(t1 + ttl, INT64_MAX)) if ttl else (0, 0)
                key = request.key.encode()
                entries[key] = Entry(request.value, response.version, lo, hi)
                if len(key) > LONG_KEY_BYTES:
                    self.outcomes["Set OK of a long key"] += 1
                return response.version
            case kv_pb2.DeleteRequest(), kv_pb2.DeleteResponse():
                assert response.ok, response
                key = request.key.encode()
                entry = entries.get(key)
                live = False if entry is None else entry.live(t0, t1)
                assert live is None or response.found == live, (
                    f"Delete {short(request)} -> {short(response)}, model {short(entry)}"
                )
                entries[key] = Entry(None, response.version)
                return response.version
            case kv_pb2.ReplicateRequest(), kv_pb2.ReplicateResponse():
                assert response.ok, response
                value = None if request.is_delete else request.value
                entries[request.key.encode()] = Entry(value, None)
            case kv_pb2.PingRequest(), kv_pb2.PingResponse():
                assert response.node_id == NODE_ID
            case kv_pb2.HeartbeatRequest(), kv_pb2.HeartbeatResponse():
                # A stranger's heartbeat is refused and changes nothing: the
                # lone node still leads the term it elected itself in.
                assert (response.term, response.accepted) == (LONE_TERM, False), response
                assert [m.node_id for m in response.members.members] == [NODE_ID]
            case kv_pb2.RequestVoteRequest(), kv_pb2.RequestVoteResponse():
                assert (response.term, response.vote_granted) == (LONE_TERM, False), response
                assert [m.node_id for m in response.members.members] == [NODE_ID]
            case kv_pb2.GetClusterStateRequest(), kv_pb2.GetClusterStateResponse():
                assert list(response.node_ids) == [NODE_ID]
                assert list(response.addresses) == [self._node.address]
                assert (response.leader_id, response.term) == (NODE_ID, LONE_TERM)
            case _:
                raise AssertionError(f"unexpected reply {response!r} to {request!r}")
        return None

    def _check_read(self, key: bytes, response: kv_pb2.GetResponse, t0: int, t1: int) -> None:
        entry = self.model.entries.get(key)
        live = False if entry is None else entry.live(t0, t1)
        what = f"Get {short(key)} -> {short(response)}, model {short(entry)}"
        assert live is None or response.found == live, what
        if not response.found:
            assert response == kv_pb2.GetResponse(), what
            return
        self.outcomes["Get OK found"] += 1
        assert entry is not None, what
        assert response.value == entry.value, what
        if entry.version is None:
            entry.version = response.version
        assert response.version == entry.version, what
        assert entry.expires_lo <= response.expires_at_ms <= entry.expires_hi, what
        entry.expires_lo = entry.expires_hi = response.expires_at_ms

    def ping(self) -> None:
        reply = kv_pb2.PingResponse.FromString(self._calls["Ping"](b"", timeout=CALL_TIMEOUT_S))
        assert reply.node_id == NODE_ID


# --- strategies ---------------------------------------------------------------------

SHORT_KEYS = [f"k{i}" for i in range(24)] + [
    "é",
    "日本語",
    "emoji😀",
    "nul\x00byte",
    " ",
    "a/b",
    "\u200b",
    "\ufeffbom",
]
MULTIBYTE = ["x", "é", "€", "😀"]


def key_of_bytes(size: int, char: str, char_first: bool) -> str:
    """A key of exactly ``size`` UTF-8 bytes: ``char`` repeated, padded with 'x'."""
    width = len(char.encode())
    body, padding = char * (size // width), "x" * (size % width)
    return body + padding if char_first else padding + body


def weighted(*choices: tuple[int, st.SearchStrategy[T]]) -> st.SearchStrategy[T]:
    """Draw from one of the strategies, each chosen in proportion to its weight."""
    pool = [strategy for weight, strategy in choices for _ in range(weight)]
    return st.sampled_from(pool).flatmap(lambda strategy: strategy)


# Drawing one element of a precomputed pool is far cheaper than composing the
# key or value from several draws, and the fuzz makes tens of thousands of them.
LONG_KEYS = sorted(
    {
        key_of_bytes(size, char, char_first)
        for size in [
            *range(MAX_KEY_BYTES - 6, MAX_KEY_BYTES + 5),
            # 256 and 503 are where the LMDB engine changes how it stores a key
            *[255, 256, 257, 503, 504, 511, 512, 2 * MAX_KEY_BYTES],
        ]
        for char in MULTIBYTE
        for char_first in (True, False)
    }
    # As many characters as the limit allows bytes, but one byte too many.
    | {"x" * (MAX_KEY_BYTES - 1) + "é"}
)
KEY_POOL = SHORT_KEYS * (3 * len(LONG_KEYS) // len(SHORT_KEYS)) + LONG_KEYS + [""] * 60
keys = weighted((9, st.sampled_from(KEY_POOL)), (1, st.text(max_size=6)))


def value_of(size: int, seed: bytes) -> bytes:
    return (seed + bytes(range(256)) * (size // 256 + 1))[:size]


SEEDS = [b"", b"\xff\xfe", b"seed", b"\x00" * 3]
SMALL_VALUES = [value_of(size, seed) for size in range(17) for seed in SEEDS]
LARGE_VALUES = [
    value_of(size, seed)
    for size in [
        *range(MAX_VALUE_BYTES - 3, MAX_VALUE_BYTES + 4),
        *[MAX_VALUE_BYTES, MAX_VALUE_BYTES + 1, 2 * MAX_VALUE_BYTES],
    ]
    for seed in SEEDS
]
values = st.sampled_from(SMALL_VALUES * 2 + LARGE_VALUES)
consistencies = weighted(
    (6, st.integers(0, 4)),
    (1, st.integers(-5, 10)),
    (1, st.sampled_from([-(1 << 31), (1 << 31) - 1, 1000])),
).map(kv_pb2.Consistency.ValueType)
int64s = st.one_of(
    st.integers(INT64_MIN, INT64_MAX),
    st.integers(-3, 3),
    st.sampled_from([INT64_MIN, INT64_MAX, 1 << 32, 1 << 53]),
)
# (version, use the key's current version instead when the model knows it)
versions = weighted(
    (5, st.just((0, False))),
    (2, st.just((-1, False))),
    (3, st.integers(1, INT64_MAX).map(lambda v: (v, True))),
    (1, st.integers(INT64_MIN, -2).map(lambda v: (v, False))),
    (1, st.integers(1, INT64_MAX).map(lambda v: (v, False))),
    (1, st.sampled_from([-2, 1, INT64_MAX, INT64_MIN]).map(lambda v: (v, False))),
)
ttls = weighted(
    (8, st.just(0)),
    (2, st.sampled_from([1, 2, 20, 200, 60_000, 3_600_000_000])),
    (1, st.integers(INT64_MIN, -1)),
    (1, st.integers(0, INT64_MAX)),
    (1, st.sampled_from([-1, INT64_MIN, MAX_TTL_MS, MAX_TTL_MS + 1, 1 << 53, INT64_MAX])),
)
texts = st.one_of(st.text(max_size=12), keys)


@st.composite
def gets(draw: st.DrawFn) -> Op:
    request = kv_pb2.GetRequest(key=draw(keys), consistency=draw(consistencies))
    return Op("Get", request.SerializeToString())


@st.composite
def sets(draw: st.DrawFn) -> Op:
    version, current = draw(versions)
    request = kv_pb2.SetRequest(
        key=draw(keys),
        value=draw(values),
        version=version,
        consistency=draw(consistencies),
        ttl_ms=draw(ttls),
    )
    return Op("Set", request.SerializeToString(), current)


@st.composite
def deletes(draw: st.DrawFn) -> Op:
    version, current = draw(versions)
    request = kv_pb2.DeleteRequest(key=draw(keys), version=version, consistency=draw(consistencies))
    return Op("Delete", request.SerializeToString(), current)


@st.composite
def replicates(draw: st.DrawFn) -> Op:
    request = kv_pb2.ReplicateRequest(
        key=draw(keys), value=draw(values), version=draw(int64s), is_delete=draw(st.booleans())
    )
    return Op("Replicate", request.SerializeToString())


cluster_methods = st.sampled_from(["Ping", "Heartbeat", "RequestVote", "GetClusterState"])


@st.composite
def cluster_calls(draw: st.DrawFn) -> Op:
    method = draw(cluster_methods)
    request: Message
    if method == "Heartbeat":
        request = kv_pb2.HeartbeatRequest(
            node_id=draw(texts),
            address=draw(texts),
            term=draw(int64s),
            is_leader=draw(st.booleans()),
        )
    elif method == "RequestVote":
        request = kv_pb2.RequestVoteRequest(
            node_id=draw(texts), term=draw(int64s), last_log_index=draw(int64s)
        )
    else:
        request = RPCS[method].request()
    return Op(method, request.SerializeToString())


well_formed = weighted(
    (3, gets()), (4, sets()), (2, deletes()), (1, replicates()), (1, cluster_calls())
)


def varint(value: int) -> bytes:
    """Protobuf base-128 varint; negative numbers as their 64-bit two's complement."""
    value &= UINT64_MAX
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        if not value:
            out.append(low)
            return bytes(out)
        out.append(low | 0x80)


def overlong_varint(value: int, extra: int) -> bytes:
    """A non-minimal encoding of ``value``: ``extra`` more bytes (over 10 in all is invalid)."""
    minimal = bytearray(varint(value))
    minimal[-1] |= 0x80
    return bytes(minimal) + b"\x80" * (extra - 1) + b"\x00"


def tag(number: int, wire_type: int) -> bytes:
    return varint(number << 3 | wire_type)


INVALID_UTF8 = [
    b"\xff",
    b"\xfe\xff",
    b"\x80",
    b"\xc3",  # a truncated 2-byte sequence
    b"\xe2\x82",  # a truncated 3-byte sequence
    b"\xc0\x80",  # an overlong NUL
    b"\xed\xa0\x80",  # an encoded surrogate
    b"\xf4\x90\x80\x80",  # above U+10FFFF
    b"\xf8\x88\x80\x80\x80",  # a 5-byte form
]


def embedded(before: str, bad: bytes, after: str) -> bytes:
    return before.encode() + bad + after.encode()


bad_utf8 = st.builds(
    embedded, st.text(max_size=4), st.sampled_from(INVALID_UTF8), st.text(max_size=4)
)
PROPER_WIRE_TYPE = {
    FieldDescriptor.TYPE_STRING: 2,
    FieldDescriptor.TYPE_BYTES: 2,
    FieldDescriptor.TYPE_INT64: 0,
    FieldDescriptor.TYPE_ENUM: 0,
    FieldDescriptor.TYPE_BOOL: 0,
    FieldDescriptor.TYPE_MESSAGE: 2,
}
# Built once: constructing strategies inside a draw is what makes hypothesis slow.
unknown_field_numbers = st.one_of(st.integers(1, 16), st.sampled_from([1000, (1 << 29) - 1]))
any_wire_type = st.sampled_from([0, 1, 2, 3, 5])
one_in_four = st.integers(0, 3)
varint_values = st.one_of(st.integers(INT64_MIN, UINT64_MAX), st.integers(-6, 10))
overlong_extra = weighted((4, st.just(0)), (1, st.integers(1, 3)))
fixed64s = st.binary(min_size=8, max_size=8)
fixed32s = st.binary(min_size=4, max_size=4)
group_bodies = st.sampled_from([b"", tag(1, 0) + b"\x01", tag(2, 2) + b"\x01a"])
group_ends = st.sampled_from(["same", "other", "none"])
string_contents = weighted((2, keys.map(str.encode)), (1, bad_utf8))
other_contents = st.one_of(bad_utf8, st.binary(max_size=16))


def field_choices(request: type[Message]) -> st.SearchStrategy[tuple[int, int] | None]:
    """A known field (number, type) of the message three times in four, else None."""
    known = [(f.number, f.type) for f in request.DESCRIPTOR.fields]
    return st.sampled_from([*known * 3, None] if known else [None])


@st.composite
def wire_field(draw: st.DrawFn, choices: st.SearchStrategy[tuple[int, int] | None]) -> bytes:
    """One encoded field: known or unknown number, right or wrong wire type."""
    choice = draw(choices)
    number, kind = choice if choice is not None else (draw(unknown_field_numbers), None)
    if kind is not None and draw(one_in_four) > 0:
        wire_type = PROPER_WIRE_TYPE[kind]
    else:
        wire_type = draw(any_wire_type)
    header = tag(number, wire_type)
    if wire_type == 0:
        value, extra = draw(varint_values), draw(overlong_extra)
        return header + (overlong_varint(value, extra) if extra else varint(value))
    if wire_type == 1:
        return header + draw(fixed64s)
    if wire_type == 5:
        return header + draw(fixed32s)
    if wire_type == 3:
        end = {"same": tag(number, 4), "other": tag(number + 1, 4), "none": b""}
        return header + draw(group_bodies) + end[draw(group_ends)]
    if kind == FieldDescriptor.TYPE_STRING:
        content = draw(string_contents)
    elif kind == FieldDescriptor.TYPE_BYTES:
        content = draw(values)
    else:
        content = draw(other_contents)
    return header + varint(len(content)) + content


def corruptions(number: int, huge: int) -> list[bytes]:
    """Broken tails: truncated, impossible or oversized encodings."""
    return [
        b"\x80",  # a truncated tag
        b"\xff" * 11,  # a varint over 10 bytes
        tag(number, 0),  # a tag without its value
        tag(number, 0) + b"\xff",  # a truncated varint
        tag(number, 0) + b"\xff" * 10 + b"\x01",  # an 11-byte varint
        tag(number, 1) + b"\x00\x01",  # a truncated fixed64
        tag(number, 5) + b"\x00",  # a truncated fixed32
        tag(number, 2),  # a length without its bytes
        tag(number, 2) + varint(huge) + b"abc",  # a length past the end
        tag(number, 3),  # a group that never ends
        tag(number, 4),  # the end of a group never started
        tag(number, 6),  # wire types 6 and 7 do not exist
        tag(number, 7) + b"\x00",
        b"\x00",  # field number 0
        tag(1 << 29, 0) + b"\x00",  # field number over 2^29 - 1
    ]


tails = weighted(
    (2, st.just(b"")),
    (
        1,
        st.sampled_from(
            sorted(
                {
                    tail
                    for number in range(1, 7)
                    for huge in (100, 1 << 31, (1 << 32) + 5, 1 << 63, UINT64_MAX)
                    for tail in corruptions(number, huge)
                }
            )
        ),
    ),
)
wire_bodies = {
    method: st.lists(wire_field(field_choices(rpc.request)), max_size=6).map(b"".join)
    for method, rpc in RPCS.items()
}


@st.composite
def hand_encoded(draw: st.DrawFn) -> Op:
    method = draw(methods)
    return Op(method, draw(wire_bodies[method]) + draw(tails))


mutations = st.sampled_from(["truncate", "flip", "insert"])


@st.composite
def mutated(draw: st.DrawFn) -> Op:
    """A well-formed message truncated, with a byte flipped, or with bytes inserted."""
    op = draw(well_formed)
    data = bytearray(op.payload)
    how = draw(mutations)
    if how == "insert" or not data:
        at = draw(st.integers(0, len(data)))
        data[at:at] = draw(st.binary(min_size=1, max_size=4))
    elif how == "flip":
        data[draw(st.integers(0, len(data) - 1))] ^= draw(st.integers(1, 255))
    else:
        del data[draw(st.integers(0, len(data) - 1)) :]
    return Op(op.method, bytes(data))


random_bytes = st.builds(Op, methods, st.binary(max_size=64))
requests = weighted((6, well_formed), (2, hand_encoded()), (1, mutated()), (1, random_bytes))


# --- storage ------------------------------------------------------------------------


def stored_records(node: NodeProcess) -> list[Record]:
    """Every record in the stopped node's LMDB data dir, tombstones included."""
    engine = LmdbEngine(node.data_dir)
    try:
        return list(engine.scan(0, 1 << 64))
    finally:
        engine.close()


def assert_store_matches(records: Sequence[Record], model: Model) -> None:
    stored: dict[bytes, Record] = {}
    for record in records:
        what = short(record)
        assert record.key, what
        record.key.decode("utf-8")  # strict: raises on invalid UTF-8
        assert len(record.key) <= MAX_KEY_BYTES, what
        assert len(record.value) <= MAX_VALUE_BYTES, what
        assert record.expires_at_ms >= 0, what
        assert not record.tombstone or (record.value, record.expires_at_ms) == (b"", 0), what
        assert record.version.node_id == NODE_ID, what
        assert record.key not in stored, f"stored twice: {what}"
        stored[record.key] = record
    unexpected = stored.keys() - model.entries.keys()
    assert not unexpected, f"stored but never written: {short(sorted(unexpected))}"
    missing = model.entries.keys() - stored.keys()
    assert not missing, f"written but not stored: {short(sorted(missing))}"
    for key, entry in model.entries.items():
        record = stored[key]
        what = f"{short(record)}, model {short(entry)}"
        assert record.tombstone == (entry.value is None), what
        if entry.value is not None:
            assert record.value == entry.value, what
            assert entry.expires_lo <= record.expires_at_ms <= entry.expires_hi, what
        if entry.version is not None:
            assert record.version.timestamp == entry.version, what


# --- the tests ----------------------------------------------------------------------

RARE_OUTCOMES = [
    Op(
        "Replicate",
        kv_pb2.ReplicateRequest(key="rare", value=b"x" * (MAX_VALUE_BYTES + 1)).SerializeToString(),
    ),
    Op(
        "Set",
        kv_pb2.SetRequest(key="rare", value=b"x" * (MAX_VALUE_BYTES + 1)).SerializeToString(),
    ),
]


def test_a_live_node_survives_malformed_requests_and_stores_nothing_invalid(
    nodes: NodeFactory,
) -> None:
    node = nodes(NODE_ID, "--max-value-bytes", str(MAX_VALUE_BYTES))
    with grpc.insecure_channel(node.address) as channel:
        fuzzer = Fuzzer(channel, node)

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            derandomize=True,
            phases=[Phase.explicit, Phase.generate],  # no shrinking: the node keeps state
            suppress_health_check=[
                HealthCheck.too_slow,
                HealthCheck.data_too_large,
                HealthCheck.large_base_example,
            ],
        )
        @given(
            ops=st.lists(requests, min_size=OPS_PER_EXAMPLE, max_size=OPS_PER_EXAMPLE),
            concurrent=st.booleans(),
        )
        # The rarest outcomes the mix must reach, whatever the generator draws.
        @example(ops=RARE_OUTCOMES, concurrent=False)
        def fuzz(ops: list[Op], concurrent: bool) -> None:
            fuzzer.run(ops, concurrent=concurrent)

        fuzz()
        assert fuzzer.sent >= MIN_REQUESTS, fuzzer.sent
        assert node.process is not None
        assert node.process.poll() is None, node.log_text()
        fuzzer.ping()
    assert node.stop() == 0, node.log_text()
    errors = [
        event
        for event in node.events()
        if event.get("level") in ("error", "critical")
        or "unexpected error" in str(event.get("msg"))
    ]
    assert not errors, errors
    assert_store_matches(stored_records(node), fuzzer.model)
    # The generated mix did reach every outcome the limits define.
    seen = " ".join(fuzzer.outcomes)
    for outcome in COVERED_OUTCOMES:
        assert outcome in seen, f"no {outcome!r} in {sorted(fuzzer.outcomes.items())}"
    print(f"\nsent {fuzzer.sent}")
    print("\n".join(f"{count:6} {outcome}" for outcome, count in sorted(fuzzer.outcomes.items())))
