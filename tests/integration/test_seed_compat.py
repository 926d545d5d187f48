"""A client built from the seed's proto still works against a ringkv node.

``seed_kv.proto`` (next to this file) is the seed's contract, reconstructed.
The test compiles it with ``grpc_tools.protoc`` at test time and drives a real
node with the generated stubs, exactly as a seed-era client would.

The seed client runs in a subprocess: its generated ``seed_kv_pb2`` and
ringkv's ``kv_pb2`` both define ``kv.GetRequest`` and friends, and the
default descriptor pool refuses a second file defining the same full names.
The subprocess prints what it observed as JSON and the tests here judge it.

One deliberate difference from the seed: the seed's ``SetRequest.version``
and ``DeleteRequest.version`` (field 3 and 2) are read by ringkv as the
conditional-write precondition. 0 (what seed clients send for a plain write)
means unconditional; any other value must equal the key's current version,
or the call fails with FAILED_PRECONDITION and changes nothing. ``Replicate``
ignores its version: the server assigns versions.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import descriptor_pb2

import ringkv
from ringkv.api import kv_pb2
from tests.support.nodes import NodeFactory, NodeProcess

SEED_PROTO = Path(__file__).with_name("seed_kv.proto")
NODE_ID = "seed-compat"
SUBPROCESS_TIMEOUT_S = 60.0

SEED_CLIENT = r'''
"""A seed-era client: only the seed's generated stubs, no ringkv."""
import base64
import json
import sys

codegen_dir, address, prefix = sys.argv[1:4]
sys.path.insert(0, codegen_dir)

import grpc  # noqa: E402
import seed_kv_pb2 as pb  # noqa: E402
import seed_kv_pb2_grpc as pb_grpc  # noqa: E402

TIMEOUT = 10.0


def fields(message):
    """Every field of a response, defaults included; bytes as text."""
    out = {}
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        if isinstance(value, bytes):
            value = value.decode("latin-1")
        elif not isinstance(value, (bool, int, str)):
            value = list(value)
        out[field.name] = value
    return out


def call(method, request):
    try:
        return fields(method(request, timeout=TIMEOUT))
    except grpc.RpcError as error:
        return {"error": error.code().name}


observed = {"descriptor": base64.b64encode(pb.DESCRIPTOR.serialized_pb).decode()}
with grpc.insecure_channel(address) as channel:
    kv = pb_grpc.KeyValueStub(channel)
    cluster = pb_grpc.ClusterStub(channel)

    key = prefix + "-roundtrip"
    observed["set"] = call(kv.Set, pb.SetRequest(key=key, value=b"seed-value", version=0))
    observed["get"] = call(kv.Get, pb.GetRequest(key=key))
    observed["delete"] = call(kv.Delete, pb.DeleteRequest(key=key, version=0))
    observed["get_deleted"] = call(kv.Get, pb.GetRequest(key=key))
    observed["get_missing"] = call(kv.Get, pb.GetRequest(key=prefix + "-never-written"))

    key = prefix + "-replicate"
    observed["replicate"] = call(
        kv.Replicate, pb.ReplicateRequest(key=key, value=b"replicated", version=42)
    )
    observed["get_replicated"] = call(kv.Get, pb.GetRequest(key=key))
    observed["replicate_delete"] = call(
        kv.Replicate, pb.ReplicateRequest(key=key, version=43, is_delete=True)
    )
    observed["get_replicate_deleted"] = call(kv.Get, pb.GetRequest(key=key))

    key = prefix + "-conditional"
    observed["set_original"] = call(kv.Set, pb.SetRequest(key=key, value=b"original"))
    observed["set_stale_version"] = call(
        kv.Set, pb.SetRequest(key=key, value=b"clobbered", version=12345)
    )
    observed["delete_stale_version"] = call(kv.Delete, pb.DeleteRequest(key=key, version=12345))
    observed["get_conditional"] = call(kv.Get, pb.GetRequest(key=key))

    observed["get_from_ringkv"] = call(kv.Get, pb.GetRequest(key=prefix + "-from-ringkv"))
    observed["set_for_ringkv"] = call(
        kv.Set, pb.SetRequest(key=prefix + "-for-ringkv", value=b"from the seed")
    )

    observed["cluster_state"] = call(cluster.GetClusterState, pb.GetClusterStateRequest())
    observed["heartbeat"] = call(
        cluster.Heartbeat,
        pb.HeartbeatRequest(node_id="seed-peer", address="127.0.0.1:9", term=1, is_leader=True),
    )
    observed["request_vote"] = call(
        cluster.RequestVote, pb.RequestVoteRequest(node_id="seed-peer", term=1, last_log_index=7)
    )

print(json.dumps(observed))
'''


@dataclass(frozen=True)
class SeedRun:
    """What the seed client observed, and the key prefix it used."""

    prefix: str
    observed: dict[str, Any]


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    factory = NodeFactory(tmp_path_factory.mktemp("seed-node"))
    try:
        yield factory(NODE_ID)
    finally:
        factory.cleanup()


@pytest.fixture(scope="module")
def seed_codegen(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """seed_kv_pb2.py and seed_kv_pb2_grpc.py, generated from seed_kv.proto."""
    out = tmp_path_factory.mktemp("seed-codegen")
    protoc = [sys.executable, "-m", "grpc_tools.protoc", f"-I{SEED_PROTO.parent}"]
    result = subprocess.run(
        [*protoc, f"--python_out={out}", f"--grpc_python_out={out}", SEED_PROTO.name],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 0, f"protoc failed:\n{result.stderr}"
    assert {path.name for path in out.glob("*.py")} == {"seed_kv_pb2.py", "seed_kv_pb2_grpc.py"}
    return out


@pytest.fixture(scope="module")
def seed_run(
    node: NodeProcess, seed_codegen: Path, tmp_path_factory: pytest.TempPathFactory
) -> SeedRun:
    """Run the seed client once against the node."""
    prefix = f"seed-{uuid.uuid4().hex}"
    with ringkv.Client(node.address, timeout=10.0) as client:
        client.set(f"{prefix}-from-ringkv", b"from ringkv", ttl=600, consistency="quorum")

    script = tmp_path_factory.mktemp("seed-client") / "seed_client.py"
    script.write_text(SEED_CLIENT)
    result = subprocess.run(
        [sys.executable, "-W", "error", str(script), str(seed_codegen), node.address, prefix],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 0, f"the seed client failed:\n{result.stderr}"
    return SeedRun(prefix, json.loads(result.stdout))


def test_seed_set_get_delete(seed_run: SeedRun) -> None:
    observed = seed_run.observed
    assert observed["set"] == {"ok": True}
    assert observed["get"] == {"value": "seed-value", "found": True}
    assert observed["delete"] == {"ok": True}
    assert observed["get_deleted"] == {"value": "", "found": False}
    assert observed["get_missing"] == {"value": "", "found": False}


def test_seed_replicate_writes_and_deletes(seed_run: SeedRun) -> None:
    observed = seed_run.observed
    assert observed["replicate"] == {"ok": True}
    assert observed["get_replicated"] == {"value": "replicated", "found": True}
    assert observed["replicate_delete"] == {"ok": True}
    assert observed["get_replicate_deleted"] == {"value": "", "found": False}


def test_seed_version_is_a_write_precondition(seed_run: SeedRun) -> None:
    observed = seed_run.observed
    assert observed["set_original"] == {"ok": True}
    assert observed["set_stale_version"] == {"error": "FAILED_PRECONDITION"}
    assert observed["delete_stale_version"] == {"error": "FAILED_PRECONDITION"}
    assert observed["get_conditional"] == {"value": "original", "found": True}


def test_seed_and_ringkv_clients_share_data(seed_run: SeedRun, node: NodeProcess) -> None:
    # ringkv's extra response fields (version, expires_at_ms) do not trouble the seed.
    assert seed_run.observed["get_from_ringkv"] == {"value": "from ringkv", "found": True}
    assert seed_run.observed["set_for_ringkv"] == {"ok": True}
    with ringkv.Client(node.address, timeout=10.0) as client:
        entry = client.get(f"{seed_run.prefix}-for-ringkv")
        assert entry is not None
        assert (entry.value, entry.expires_at_ms) == (b"from the seed", 0)
        assert entry.version > 0
        replicated = client.get(f"{seed_run.prefix}-replicate")
    assert replicated is None


def test_seed_cluster_service(seed_run: SeedRun, node: NodeProcess) -> None:
    observed = seed_run.observed
    assert observed["cluster_state"] == {
        "node_ids": [NODE_ID],
        "addresses": [node.address],
        "leader_id": NODE_ID,
        "term": 1,  # a lone node elects itself in term 1
    }
    assert set(observed["heartbeat"]) == {"term", "accepted"}  # answered, no error
    assert set(observed["request_vote"]) == {"term", "vote_granted"}


def test_seed_contract_is_a_subset_of_ours(seed_run: SeedRun) -> None:
    """Every seed message, field (name, number, type, label) and RPC exists unchanged."""
    seed = descriptor_pb2.FileDescriptorProto.FromString(
        base64.b64decode(seed_run.observed["descriptor"])
    )
    ours = descriptor_pb2.FileDescriptorProto()
    kv_pb2.DESCRIPTOR.CopyToProto(ours)
    assert (seed.package, seed.syntax) == (ours.package, ours.syntax) == ("kv", "proto3")

    our_messages = {message.name: message for message in ours.message_type}
    for message in seed.message_type:
        assert message.name in our_messages, f"message {message.name} is gone"
        our_fields = {field.number: field for field in our_messages[message.name].field}
        for field in message.field:
            ours_field = our_fields.get(field.number)
            assert ours_field is not None, f"{message.name}.{field.name} is gone"
            assert (ours_field.name, ours_field.type, ours_field.label) == (
                field.name,
                field.type,
                field.label,
            ), f"{message.name} field {field.number} changed"

    our_services = {service.name: service for service in ours.service}
    for service in seed.service:
        assert service.name in our_services, f"service {service.name} is gone"
        our_methods = {method.name: method for method in our_services[service.name].method}
        for method in service.method:
            assert method.name in our_methods, f"{service.name}/{method.name} is gone"
            ours_method = our_methods[method.name]
            assert (ours_method.input_type, ours_method.output_type) == (
                method.input_type,
                method.output_type,
            ), f"{service.name}/{method.name} changed its types"
