"""The client API of one real node process, end to end over real gRPC.

One node serves the whole module; every test uses keys of its own. Behaviour
that both SDKs expose is checked through ``ringkv.Client`` and through
``ringkv.AsyncClient``; status codes and error details are checked on the wire
with a raw channel, since the SDKs turn them into typed exceptions.
"""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol, cast

import grpc
import pytest
from google.protobuf import descriptor_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

import ringkv
from ringkv.api import kv_pb2, kv_pb2_grpc, replica_pb2, replica_pb2_grpc
from ringkv.client.requests import Level
from ringkv.core.errors import (
    InvalidArgument,
    PreconditionFailed,
    RingkvError,
    Unavailable,
    ValueTooLarge,
)
from tests.support.nodes import NodeFactory, NodeProcess, wait_for

NODE_ID = "api-node"
MAX_KEY_BYTES = 4096
MAX_VALUE_BYTES = 1 << 20
STATUS_DETAILS_KEY = "grpc-status-details-bin"
CALL_TIMEOUT_S = 10.0


# --- fixtures -------------------------------------------------------------------


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    """One node process for the module, killed at teardown whatever happened."""
    factory = NodeFactory(tmp_path_factory.mktemp("api"))
    try:
        yield factory(NODE_ID)
    finally:
        factory.cleanup()


@pytest.fixture(scope="module")
def channel(node: NodeProcess) -> Iterator[grpc.Channel]:
    """A raw channel to the node, for assertions on the wire."""
    with grpc.insecure_channel(node.address) as raw_channel:
        yield raw_channel


@pytest.fixture
def stub(channel: grpc.Channel) -> kv_pb2_grpc.KeyValueStub:
    return kv_pb2_grpc.KeyValueStub(channel)


@pytest.fixture
def key(request: pytest.FixtureRequest) -> str:
    """A key no other test (or parametrization) uses."""
    return f"{request.node.name}-{uuid.uuid4().hex}"


class KV(Protocol):
    """The calls ``ringkv.Client`` offers, as the tests use them."""

    def get(self, key: str, *, consistency: Level = None) -> ringkv.Entry | None: ...

    def set(
        self,
        key: str,
        value: bytes | str,
        *,
        ttl: float | None = None,
        if_version: int | None = None,
        if_absent: bool = False,
        consistency: Level = None,
    ) -> int: ...

    def delete(
        self, key: str, *, if_version: int | None = None, consistency: Level = None
    ) -> bool: ...

    def ping(self) -> str: ...


class BlockingAsyncClient:
    """Drives a ``ringkv.AsyncClient`` from a sync test.

    Every call is run to completion with ``asyncio.Runner`` (the machinery of
    ``asyncio.run``), one event loop for the client's life because grpc.aio
    channels belong to the loop that opened them.
    """

    def __init__(self, endpoints: str | Sequence[str], **options: Any) -> None:
        self._runner = asyncio.Runner()
        self._client = ringkv.AsyncClient(endpoints, **options)

    def get(self, key: str, *, consistency: Level = None) -> ringkv.Entry | None:
        return self._runner.run(self._client.get(key, consistency=consistency))

    def set(
        self,
        key: str,
        value: bytes | str,
        *,
        ttl: float | None = None,
        if_version: int | None = None,
        if_absent: bool = False,
        consistency: Level = None,
    ) -> int:
        return self._runner.run(
            self._client.set(
                key,
                value,
                ttl=ttl,
                if_version=if_version,
                if_absent=if_absent,
                consistency=consistency,
            )
        )

    def delete(self, key: str, *, if_version: int | None = None, consistency: Level = None) -> bool:
        return self._runner.run(
            self._client.delete(key, if_version=if_version, consistency=consistency)
        )

    def ping(self) -> str:
        return self._runner.run(self._client.ping())

    def close(self) -> None:
        try:
            self._runner.run(self._client.close())
        finally:
            self._runner.close()


ClientFactory = Callable[..., KV]


@pytest.fixture(params=["sync", "async"])
def make_client(request: pytest.FixtureRequest) -> Iterator[ClientFactory]:
    """Opens ``ringkv.Client``s or (driven) ``ringkv.AsyncClient``s; closes them all."""
    opened: list[ringkv.Client | BlockingAsyncClient] = []

    def make(endpoints: str | Sequence[str], **options: Any) -> KV:
        client: ringkv.Client | BlockingAsyncClient
        if request.param == "sync":
            client = ringkv.Client(endpoints, **options)
        else:
            client = BlockingAsyncClient(endpoints, **options)
        opened.append(client)
        return client

    try:
        yield make
    finally:
        for client in opened:
            client.close()


@pytest.fixture
def kv(make_client: ClientFactory, node: NodeProcess) -> KV:
    return make_client(node.address, timeout=CALL_TIMEOUT_S)


@pytest.fixture
def dead_address() -> Iterator[str]:
    """An address that refuses connections: a port bound but never listened on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{sock.getsockname()[1]}"


# --- helpers --------------------------------------------------------------------


def key_of_bytes(prefix: str, size: int) -> str:
    """A key of exactly ``size`` UTF-8 bytes, mostly two-byte characters."""
    pairs, odd = divmod(size - len(prefix.encode()), 2)
    key = prefix + "é" * pairs + "x" * odd
    assert len(key.encode()) == size
    assert len(key) < size  # characters are not bytes
    return key


def trailers(error: grpc.RpcError) -> tuple[tuple[str, str | bytes], ...]:
    """A failed call's trailing metadata.

    grpc-stubs types the items as objects with ``key`` and ``value``; grpc
    returns ``(key, value)`` tuples.
    """
    return cast("tuple[tuple[str, str | bytes], ...]", error.trailing_metadata())


def error_info(error: grpc.RpcError) -> error_details_pb2.ErrorInfo:
    """The ErrorInfo inside the google.rpc.Status of a failed call's trailers."""
    details = [value for name, value in trailers(error) if name == STATUS_DETAILS_KEY]
    assert len(details) == 1, f"no {STATUS_DETAILS_KEY} in {trailers(error)}"
    raw = details[0]
    assert isinstance(raw, bytes)
    status = status_pb2.Status.FromString(raw)
    assert status.code == error.code().value[0]
    info = error_details_pb2.ErrorInfo()
    assert len(status.details) == 1
    assert status.details[0].Unpack(info), status.details[0].type_url
    assert info.domain == "ringkv"
    return info


def assert_rpc_error(
    call: Callable[[], object], code: grpc.StatusCode, reason: str
) -> error_details_pb2.ErrorInfo:
    """Run a raw call that must fail with ``code`` and ErrorInfo ``reason``."""
    with pytest.raises(grpc.RpcError) as raised:
        call()
    error = raised.value
    assert error.code() == code, error.details()
    info = error_info(error)
    assert info.reason == reason
    return info


def assert_typed_error(
    call: Callable[[], object], cls: type[RingkvError], reason: str
) -> RingkvError:
    """Run an SDK call that must raise exactly ``cls`` with ``reason``."""
    with pytest.raises(RingkvError) as raised:
        call()
    assert type(raised.value) is cls, repr(raised.value)
    assert raised.value.reason == reason
    return raised.value


def now_ms() -> int:
    return time.time_ns() // 1_000_000


# --- set, get, delete -----------------------------------------------------------


def test_set_get_delete(kv: KV, key: str) -> None:
    assert kv.get(key) is None
    version = kv.set(key, b"hello")
    assert version > 0
    assert kv.get(key) == ringkv.Entry(b"hello", version, 0)
    text_version = kv.set(key, "héllo")  # a str is stored as UTF-8
    assert kv.get(key) == ringkv.Entry("héllo".encode(), text_version, 0)
    assert kv.delete(key) is True
    assert kv.get(key) is None
    assert kv.delete(key) is False


def test_empty_and_binary_values_roundtrip(kv: KV, key: str) -> None:
    version = kv.set(key, b"")
    assert kv.get(key) == ringkv.Entry(b"", version, 0)  # found, though empty
    binary = bytes(range(256))
    version = kv.set(key, binary)
    assert kv.get(key) == ringkv.Entry(binary, version, 0)


def test_versions_strictly_increase(kv: KV, key: str) -> None:
    versions = [kv.set(key, f"v{i}") for i in range(5)]
    assert versions == sorted(set(versions)), versions
    entry = kv.get(key)
    assert entry is not None
    assert (entry.value, entry.version) == (b"v4", versions[-1])
    assert kv.delete(key) is True
    after_delete = kv.set(key, b"again")
    assert after_delete > versions[-1]


def test_delete_versions_increase_on_the_wire(stub: kv_pb2_grpc.KeyValueStub, key: str) -> None:
    written = stub.Set(kv_pb2.SetRequest(key=key, value=b"v"), timeout=CALL_TIMEOUT_S)
    assert written.ok
    deleted = stub.Delete(kv_pb2.DeleteRequest(key=key), timeout=CALL_TIMEOUT_S)
    assert (deleted.ok, deleted.found) == (True, True)
    assert deleted.version > written.version
    again = stub.Delete(kv_pb2.DeleteRequest(key=key), timeout=CALL_TIMEOUT_S)
    assert (again.ok, again.found) == (True, False)
    assert again.version > deleted.version
    rewritten = stub.Set(kv_pb2.SetRequest(key=key, value=b"w"), timeout=CALL_TIMEOUT_S)
    assert rewritten.version > again.version


def test_get_returns_version_and_expiry(kv: KV, key: str) -> None:
    before = now_ms()
    version = kv.set(key, b"leased", ttl=60)
    after = now_ms()
    entry = kv.get(key)
    assert entry is not None
    assert entry.version == version
    assert before + 60_000 <= entry.expires_at_ms <= after + 60_000
    forever = kv.set(key, b"forever")  # a write without ttl clears the expiry
    assert kv.get(key) == ringkv.Entry(b"forever", forever, 0)


def test_ttl_expiry(kv: KV, key: str) -> None:
    version = kv.set(key, b"short-lived", ttl=0.3)
    wait_for(lambda: kv.get(key) is None, timeout=10, what=f"{key} to expire")
    assert version > 0
    assert kv.delete(key) is False  # an expired value is not live
    assert kv.set(key, b"reborn", if_absent=True) > version


# --- conditional writes -----------------------------------------------------------


def test_if_version_match_and_mismatch(kv: KV, key: str) -> None:
    first = kv.set(key, b"one")
    second = kv.set(key, b"two", if_version=first)
    assert second > first

    error = assert_typed_error(
        lambda: kv.set(key, b"stale", if_version=first), PreconditionFailed, "VERSION_MISMATCH"
    )
    assert error.metadata == {"expected": str(first), "actual": str(second)}
    assert kv.get(key) == ringkv.Entry(b"two", second, 0)

    assert_typed_error(
        lambda: kv.delete(key, if_version=first), PreconditionFailed, "VERSION_MISMATCH"
    )
    assert kv.get(key) == ringkv.Entry(b"two", second, 0)

    assert kv.delete(key, if_version=second) is True
    assert kv.get(key) is None
    assert_typed_error(
        lambda: kv.set(key, b"gone", if_version=second), PreconditionFailed, "VERSION_MISMATCH"
    )
    assert kv.get(key) is None


def test_if_absent(kv: KV, key: str) -> None:
    first = kv.set(key, b"first", if_absent=True)
    error = assert_typed_error(
        lambda: kv.set(key, b"second", if_absent=True), PreconditionFailed, "VERSION_MISMATCH"
    )
    assert error.metadata == {"expected": "-1", "actual": str(first)}
    assert kv.get(key) == ringkv.Entry(b"first", first, 0)
    assert kv.delete(key) is True
    assert kv.set(key, b"third", if_absent=True) > first


def test_failed_precondition_on_the_wire(stub: kv_pb2_grpc.KeyValueStub, key: str) -> None:
    written = stub.Set(kv_pb2.SetRequest(key=key, value=b"v"), timeout=CALL_TIMEOUT_S)
    info = assert_rpc_error(
        lambda: stub.Set(
            kv_pb2.SetRequest(key=key, value=b"w", version=written.version + 1),
            timeout=CALL_TIMEOUT_S,
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "VERSION_MISMATCH",
    )
    assert dict(info.metadata) == {
        "expected": str(written.version + 1),
        "actual": str(written.version),
    }


# --- rejected input -------------------------------------------------------------


def test_empty_key_is_rejected(kv: KV, stub: kv_pb2_grpc.KeyValueStub) -> None:
    assert_typed_error(lambda: kv.set("", b"v"), InvalidArgument, "EMPTY_KEY")
    assert_typed_error(lambda: kv.get(""), InvalidArgument, "EMPTY_KEY")
    assert_typed_error(lambda: kv.delete(""), InvalidArgument, "EMPTY_KEY")
    for call in (
        lambda: stub.Set(kv_pb2.SetRequest(key="", value=b"v"), timeout=CALL_TIMEOUT_S),
        lambda: stub.Get(kv_pb2.GetRequest(key=""), timeout=CALL_TIMEOUT_S),
        lambda: stub.Delete(kv_pb2.DeleteRequest(key=""), timeout=CALL_TIMEOUT_S),
        lambda: stub.Replicate(kv_pb2.ReplicateRequest(key="", value=b"v"), timeout=CALL_TIMEOUT_S),
    ):
        assert_rpc_error(call, grpc.StatusCode.INVALID_ARGUMENT, "EMPTY_KEY")


def test_key_over_the_limit_is_rejected(kv: KV, stub: kv_pb2_grpc.KeyValueStub, key: str) -> None:
    # 4097 bytes in fewer than 4096 characters: the limit counts UTF-8 bytes.
    over = key_of_bytes(key, MAX_KEY_BYTES + 1)
    error = assert_typed_error(lambda: kv.set(over, b"v"), InvalidArgument, "KEY_TOO_LARGE")
    assert error.metadata == {"size": str(MAX_KEY_BYTES + 1), "limit": str(MAX_KEY_BYTES)}
    assert_rpc_error(
        lambda: stub.Set(kv_pb2.SetRequest(key=over, value=b"v"), timeout=CALL_TIMEOUT_S),
        grpc.StatusCode.INVALID_ARGUMENT,
        "KEY_TOO_LARGE",
    )
    assert_typed_error(lambda: kv.delete(over), InvalidArgument, "KEY_TOO_LARGE")
    # Nothing can be stored under such a key, and reading it is refused the same way.
    assert_typed_error(lambda: kv.get(over), InvalidArgument, "KEY_TOO_LARGE")


def test_keys_up_to_the_limit_are_accepted(kv: KV, key: str) -> None:
    # Sizes around where a storage engine might change how it keeps a key
    # (LMDB's 511-byte key limit), up to the API's 4096 bytes.
    for size in (255, 256, 257, 503, 504, 512, 1024, MAX_KEY_BYTES):
        sized = key_of_bytes(f"{key}-{size}-", size)
        version = kv.set(sized, f"size {size}")
        assert kv.get(sized) == ringkv.Entry(f"size {size}".encode(), version, 0), size
        newer = kv.set(sized, b"again", if_version=version)
        assert kv.get(sized) == ringkv.Entry(b"again", newer, 0), size
        assert kv.delete(sized, if_version=newer) is True, size
        assert kv.get(sized) is None, size


def test_long_keys_that_share_a_prefix_are_distinct(kv: KV, key: str) -> None:
    shared = key_of_bytes(f"{key}-", MAX_KEY_BYTES - 1)
    at_limit, sibling = shared + "a", shared + "b"
    version = kv.set(at_limit, b"fits")
    assert kv.get(sibling) is None
    sibling_version = kv.set(sibling, b"sibling", if_absent=True)
    assert kv.get(at_limit) == ringkv.Entry(b"fits", version, 0)
    assert kv.get(sibling) == ringkv.Entry(b"sibling", sibling_version, 0)
    # A rejected key one byte longer, which extends it, leaves it untouched.
    assert_typed_error(lambda: kv.set(at_limit + "x", b"v"), InvalidArgument, "KEY_TOO_LARGE")
    assert kv.get(at_limit) == ringkv.Entry(b"fits", version, 0)
    assert kv.delete(at_limit) is True
    assert kv.get(at_limit) is None
    assert kv.get(sibling) == ringkv.Entry(b"sibling", sibling_version, 0)


def test_value_size_limit(kv: KV, stub: kv_pb2_grpc.KeyValueStub, key: str) -> None:
    at_limit = bytes(range(256)) * (MAX_VALUE_BYTES // 256)
    assert len(at_limit) == MAX_VALUE_BYTES
    version = kv.set(key, at_limit)
    assert kv.get(key) == ringkv.Entry(at_limit, version, 0)

    over = at_limit + b"!"
    error = assert_typed_error(lambda: kv.set(key, over), ValueTooLarge, "VALUE_TOO_LARGE")
    assert error.metadata == {"size": str(MAX_VALUE_BYTES + 1), "limit": str(MAX_VALUE_BYTES)}
    assert_rpc_error(
        lambda: stub.Set(kv_pb2.SetRequest(key=key, value=over), timeout=CALL_TIMEOUT_S),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "VALUE_TOO_LARGE",
    )
    assert_rpc_error(
        lambda: stub.Replicate(
            kv_pb2.ReplicateRequest(key=key, value=over), timeout=CALL_TIMEOUT_S
        ),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "VALUE_TOO_LARGE",
    )
    assert kv.get(key) == ringkv.Entry(at_limit, version, 0)


def test_rejected_writes_change_nothing(kv: KV, stub: kv_pb2_grpc.KeyValueStub, key: str) -> None:
    version = kv.set(key, b"original")
    unchanged = ringkv.Entry(b"original", version, 0)
    bad_calls: list[tuple[Callable[[], object], str, str]] = [
        (
            lambda: stub.Set(
                kv_pb2.SetRequest(key=key, value=b"x", consistency=99),  # type: ignore[arg-type]
                timeout=CALL_TIMEOUT_S,
            ),
            "INVALID_CONSISTENCY",
            "Set consistency=99",
        ),
        (
            lambda: stub.Delete(
                kv_pb2.DeleteRequest(key=key, consistency=99),  # type: ignore[arg-type]
                timeout=CALL_TIMEOUT_S,
            ),
            "INVALID_CONSISTENCY",
            "Delete consistency=99",
        ),
        (
            lambda: stub.Set(
                kv_pb2.SetRequest(key=key, value=b"x", ttl_ms=-1), timeout=CALL_TIMEOUT_S
            ),
            "NEGATIVE_TTL",
            "Set ttl_ms=-1",
        ),
        (
            lambda: stub.Set(
                kv_pb2.SetRequest(key=key, value=b"x", version=-2), timeout=CALL_TIMEOUT_S
            ),
            "INVALID_VERSION",
            "Set version=-2",
        ),
        (
            lambda: stub.Delete(kv_pb2.DeleteRequest(key=key, version=-2), timeout=CALL_TIMEOUT_S),
            "INVALID_VERSION",
            "Delete version=-2",
        ),
    ]
    for call, reason, what in bad_calls:
        assert_rpc_error(call, grpc.StatusCode.INVALID_ARGUMENT, reason)
        assert kv.get(key) == unchanged, f"{what} changed the key"
    assert_rpc_error(
        lambda: stub.Get(
            kv_pb2.GetRequest(key=key, consistency=99),  # type: ignore[arg-type]
            timeout=CALL_TIMEOUT_S,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_CONSISTENCY",
    )


def test_rejected_writes_raise_typed_errors(kv: KV, key: str) -> None:
    version = kv.set(key, b"original")
    unchanged = ringkv.Entry(b"original", version, 0)
    assert_typed_error(lambda: kv.set(key, b"x", ttl=-1), InvalidArgument, "NEGATIVE_TTL")
    assert kv.get(key) == unchanged
    assert_typed_error(lambda: kv.set(key, b"x", if_version=-2), InvalidArgument, "INVALID_VERSION")
    assert kv.get(key) == unchanged
    assert_typed_error(lambda: kv.delete(key, if_version=-5), InvalidArgument, "INVALID_VERSION")
    assert kv.get(key) == unchanged
    # An unknown level by name is refused before anything is sent.
    assert_typed_error(
        lambda: kv.set(key, b"x", consistency="eventual"), InvalidArgument, "INVALID_CONSISTENCY"
    )
    assert kv.get(key) == unchanged


def test_rejected_write_of_an_absent_key_leaves_it_absent(
    kv: KV, stub: kv_pb2_grpc.KeyValueStub, key: str
) -> None:
    assert_typed_error(lambda: kv.set(key, b"x", ttl=-1), InvalidArgument, "NEGATIVE_TTL")
    assert_typed_error(
        lambda: kv.set(key, b"x" * (MAX_VALUE_BYTES + 1)), ValueTooLarge, "VALUE_TOO_LARGE"
    )
    assert_rpc_error(
        lambda: stub.Set(
            kv_pb2.SetRequest(key=key, value=b"x", consistency=99),  # type: ignore[arg-type]
            timeout=CALL_TIMEOUT_S,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_CONSISTENCY",
    )
    assert kv.get(key) is None


@pytest.mark.parametrize("method", ["Get", "Set", "Delete", "Replicate"])
def test_invalid_utf8_key_is_invalid_argument(channel: grpc.Channel, method: str) -> None:
    raw_call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
        f"/kv.KeyValue/{method}", request_serializer=None, response_deserializer=None
    )
    # Field 1 (key, a string) holding the bytes ff fe; field 2 holding "v".
    wire = b"\x0a\x02\xff\xfe\x12\x01v"
    info = assert_rpc_error(
        lambda: raw_call(wire, timeout=CALL_TIMEOUT_S),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_UTF8",
    )
    assert dict(info.metadata) == {}


@pytest.mark.parametrize("garbage", [b"\xff\xff\xff", b"garbage!!", b"\x0a\x05ab"])
def test_garbage_request_is_malformed(channel: grpc.Channel, garbage: bytes) -> None:
    raw_call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
        "/kv.KeyValue/Set", request_serializer=None, response_deserializer=None
    )
    assert_rpc_error(
        lambda: raw_call(garbage, timeout=CALL_TIMEOUT_S),
        grpc.StatusCode.INVALID_ARGUMENT,
        "MALFORMED_REQUEST",
    )


def test_unknown_method_is_unimplemented(channel: grpc.Channel) -> None:
    raw_call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
        "/kv.KeyValue/Transaction", request_serializer=None, response_deserializer=None
    )
    with pytest.raises(grpc.RpcError) as raised:
        raw_call(b"", timeout=CALL_TIMEOUT_S)
    assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED


# --- consistency levels ---------------------------------------------------------


@pytest.mark.parametrize("level", list(ringkv.Consistency), ids=lambda level: level.name)
def test_every_consistency_level_is_accepted(kv: KV, key: str, level: ringkv.Consistency) -> None:
    version = kv.set(key, b"v", consistency=level)
    assert kv.get(key, consistency=level) == ringkv.Entry(b"v", version, 0)
    by_name = kv.set(key, b"w", consistency=level.name.lower())
    assert kv.get(key, consistency=level.name) == ringkv.Entry(b"w", by_name, 0)
    assert kv.delete(key, consistency=level) is True
    assert kv.get(key, consistency=level) is None


# --- the seed's Replicate -------------------------------------------------------


def test_replicate_writes_and_deletes_with_server_versions(
    kv: KV, stub: kv_pb2_grpc.KeyValueStub, key: str
) -> None:
    before = kv.set(key, b"before")
    pinned = 2**62
    reply = stub.Replicate(
        kv_pb2.ReplicateRequest(key=key, value=b"replicated", version=pinned),
        timeout=CALL_TIMEOUT_S,
    )
    assert reply.ok
    entry = kv.get(key)
    assert entry is not None
    assert entry.value == b"replicated"
    assert before < entry.version < pinned  # assigned by the server, not the caller

    # The caller's huge version did not pin the key: a later Set still wins,
    # and the version read works as a precondition.
    later = kv.set(key, b"later", if_version=entry.version)
    assert later > entry.version
    assert kv.get(key) == ringkv.Entry(b"later", later, 0)

    deleted = stub.Replicate(
        kv_pb2.ReplicateRequest(key=key, value=b"ignored", version=pinned, is_delete=True),
        timeout=CALL_TIMEOUT_S,
    )
    assert deleted.ok
    assert kv.get(key) is None
    assert kv.set(key, b"after", if_absent=True) > later


# --- ping, cluster, health, reflection --------------------------------------------


def test_ping_returns_node_id(kv: KV) -> None:
    assert kv.ping() == NODE_ID


def test_cluster_state_is_a_cluster_of_one(channel: grpc.Channel, node: NodeProcess) -> None:
    cluster = kv_pb2_grpc.ClusterStub(channel)
    state = cluster.GetClusterState(kv_pb2.GetClusterStateRequest(), timeout=CALL_TIMEOUT_S)
    assert list(state.node_ids) == [NODE_ID]
    assert list(state.addresses) == [node.address]
    # A lone node is its own majority: it leads from the start, in term 1.
    assert (state.leader_id, state.term, state.epoch) == (NODE_ID, 1, 1)
    assert [(m.node_id, m.state, m.status) for m in state.members] == [(NODE_ID, "alive", "normal")]


@pytest.mark.parametrize(
    ("node_id", "address"),
    [
        ("bad id,=", "127.0.0.1:9"),
        ("", "127.0.0.1:9"),
        ("n" * 65, "127.0.0.1:9"),
        ("ok", "nowhere"),
    ],
)
def test_a_join_with_a_malformed_id_or_address_is_refused_and_changes_nothing(
    channel: grpc.Channel, node_id: str, address: str
) -> None:
    """An id followers cannot parse in a member table would make them refuse
    every heartbeat, and the cluster would lose its leader for good."""
    cluster = kv_pb2_grpc.ClusterStub(channel)
    with pytest.raises(grpc.RpcError) as refused:
        cluster.Join(kv_pb2.JoinRequest(node_id=node_id, address=address), timeout=CALL_TIMEOUT_S)
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(refused.value).reason == "INVALID_MEMBER"
    state = cluster.GetClusterState(kv_pb2.GetClusterStateRequest(), timeout=CALL_TIMEOUT_S)
    assert (list(state.node_ids), state.epoch) == ([NODE_ID], 1)


@pytest.mark.parametrize(
    "record",
    [
        replica_pb2.Record(
            key=b"", value=b"v", version=replica_pb2.Version(timestamp=1, node_id="x")
        ),
        replica_pb2.Record(
            key=b"\xff", value=b"v", version=replica_pb2.Version(timestamp=1, node_id="x")
        ),
        replica_pb2.Record(
            key=b"neg", value=b"v", version=replica_pb2.Version(timestamp=-1, node_id="x")
        ),
        replica_pb2.Record(
            key=b"id", value=b"v", version=replica_pb2.Version(timestamp=1, node_id="a b")
        ),
        replica_pb2.Record(
            key=b"big",
            value=b"v" * (2 << 20),
            version=replica_pb2.Version(timestamp=1, node_id="x"),
        ),
        # Stamped in the year 2100, and at the int64 limit.
        replica_pb2.Record(
            key=b"future",
            value=b"v",
            version=replica_pb2.Version(timestamp=4_102_444_800_000 << 16, node_id="x"),
        ),
        replica_pb2.Record(
            key=b"max", value=b"v", version=replica_pb2.Version(timestamp=2**63 - 1, node_id="x")
        ),
    ],
)
def test_a_replica_write_of_a_malformed_record_is_refused_and_stores_nothing(
    channel: grpc.Channel, kv: KV, record: replica_pb2.Record
) -> None:
    """A member's records meet the client API's limits: a peer (or anyone who
    reaches the member API) cannot store what a client could not."""
    replica = replica_pb2_grpc.ReplicaStub(channel)
    with pytest.raises(grpc.RpcError) as refused:
        replica.Write(replica_pb2.WriteRequest(records=[record]), timeout=CALL_TIMEOUT_S)
    assert refused.value.code() in (
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    )
    # Planned on a table far ahead of the node's, so the node serves the read.
    ahead = replica_pb2.Fence(epoch=1 << 40)
    read = replica.Read(
        replica_pb2.ReadRequest(keys=[record.key], fence=ahead), timeout=CALL_TIMEOUT_S
    )
    assert not read.results[0].found


def test_heartbeat_and_request_vote_answer(channel: grpc.Channel) -> None:
    cluster = kv_pb2_grpc.ClusterStub(channel)
    heartbeat = cluster.Heartbeat(
        kv_pb2.HeartbeatRequest(node_id="peer", address="127.0.0.1:9", term=1, is_leader=True),
        timeout=CALL_TIMEOUT_S,
    )
    assert isinstance(heartbeat, kv_pb2.HeartbeatResponse)
    assert heartbeat.term >= 0
    vote = cluster.RequestVote(
        kv_pb2.RequestVoteRequest(node_id="peer", term=1, last_log_index=0),
        timeout=CALL_TIMEOUT_S,
    )
    assert isinstance(vote, kv_pb2.RequestVoteResponse)
    assert vote.term >= 0


def health_check(
    channel: grpc.Channel,
) -> grpc.UnaryUnaryMultiCallable[health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse]:
    """grpc.health.v1.Health/Check (its stub is untyped in types-grpcio-health-checking)."""
    return channel.unary_unary(
        "/grpc.health.v1.Health/Check",
        request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
        response_deserializer=health_pb2.HealthCheckResponse.FromString,
    )


@pytest.mark.parametrize("service", ["", "kv.KeyValue", "kv.Cluster"])
def test_health_reports_serving(channel: grpc.Channel, service: str) -> None:
    reply = health_check(channel)(
        health_pb2.HealthCheckRequest(service=service), timeout=CALL_TIMEOUT_S
    )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_health_of_an_unknown_service_is_not_found(channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        health_check(channel)(
            health_pb2.HealthCheckRequest(service="kv.Nope"), timeout=CALL_TIMEOUT_S
        )
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_the_services(channel: grpc.Channel) -> None:
    # types-grpcio-reflection leaves the stub's method untyped.
    reflection_info = cast(
        "grpc.StreamStreamMultiCallable[reflection_pb2.ServerReflectionRequest, "
        "reflection_pb2.ServerReflectionResponse]",
        reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo,
    )
    requests = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="kv.KeyValue"),
    ]
    replies: list[reflection_pb2.ServerReflectionResponse] = list(
        reflection_info(iter(requests), timeout=CALL_TIMEOUT_S)
    )
    assert len(replies) == 2
    listed = {service.name for service in replies[0].list_services_response.service}
    assert {"kv.KeyValue", "kv.Cluster", "grpc.health.v1.Health"} <= listed

    # The descriptor served for kv.KeyValue is the one this checkout compiled.
    served = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in replies[1].file_descriptor_response.file_descriptor_proto
    ]
    ours = descriptor_pb2.FileDescriptorProto()
    kv_pb2.DESCRIPTOR.CopyToProto(ours)
    assert ours in served, [file.name for file in served]


# --- client retry ---------------------------------------------------------------


def test_client_fails_over_to_the_next_endpoint(
    make_client: ClientFactory, node: NodeProcess, dead_address: str, key: str
) -> None:
    kv = make_client(
        [dead_address, node.address],
        timeout=CALL_TIMEOUT_S,
        retry=ringkv.RetryPolicy(attempts=3, initial_backoff_s=0.01),
    )
    version = kv.set(key, b"through the second endpoint")
    assert kv.get(key) == ringkv.Entry(b"through the second endpoint", version, 0)
    assert kv.ping() == NODE_ID


def test_client_with_only_a_dead_endpoint_gives_up(
    make_client: ClientFactory, dead_address: str, key: str
) -> None:
    kv = make_client(dead_address, timeout=2.0, retry=ringkv.RetryPolicy(attempts=2))
    started = time.monotonic()
    with pytest.raises(RingkvError) as raised:
        kv.set(key, b"v")
    elapsed = time.monotonic() - started
    assert type(raised.value) is Unavailable, repr(raised.value)
    assert elapsed < 5.0, f"gave up only after {elapsed:.1f}s"
