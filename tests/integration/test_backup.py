"""``ringkv backup`` and ``ringkv restore`` against real node processes.

A node serves a steady stream of writes while ``ringkv backup`` copies its
store: every write acknowledged before the backup started must be in the
snapshot with its exact value and version. The snapshot is restored into a
fresh data dir, a node starts on it, and it must serve every record of the
snapshot. Restore refuses a non-empty dir, a dir a node holds and a corrupt
file; a node on the memory engine refuses to be backed up.
"""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import ringkv
from ringkv.core.records import Record
from ringkv.storage.snapshot import check_snapshot, manifest_path, read_manifest, snapshot_records
from tests.support.load import ConcurrentWriter
from tests.support.nodes import NodeFactory, NodeProcess, child_env

RINGKV = [sys.executable, "-m", "ringkv"]
EXIT_ERROR = 3
CLI_TIMEOUT_S = 120.0


def ringkv_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``ringkv ARGS`` to completion."""
    env = child_env()
    env.pop("RINGKV_ENDPOINTS", None)
    return subprocess.run(
        [*RINGKV, *args],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        env=env,
        check=False,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], reason: str) -> None:
    assert result.returncode == EXIT_ERROR, result
    assert result.stderr.startswith(f"ringkv: {reason}: "), result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stdout == ""


def write_fixed_dataset(address: str) -> None:
    """Values, tombstones and values with a TTL, besides the writer's keys."""
    with ringkv.Client(address, timeout=5.0) as client:
        for i in range(60):
            client.set(f"fixed/{i:02d}", f"value {i}".encode())
        for i in range(0, 60, 6):
            assert client.delete(f"fixed/{i:02d}")
        for i in range(5):
            client.set(f"ttl/{i}", b"expires in an hour", ttl=3600)


def assert_node_serves(address: str, records: list[Record]) -> None:
    """The node answers every record of the snapshot with its value, version and expiry."""
    keys = [record.key.decode() for record in records]
    served: dict[str, ringkv.Entry | None] = {}
    with ringkv.Client(address, timeout=10.0) as client:
        for start in range(0, len(keys), 500):
            served |= client.get_many(keys[start : start + 500])
    for record in records:
        entry = served[record.key.decode()]
        if record.tombstone:
            assert entry is None, record
            continue
        assert entry is not None, f"{record.key!r} is missing"
        assert entry.value == record.value, record.key
        assert entry.version == record.version.timestamp, record.key
        assert entry.expires_at_ms == record.expires_at_ms, record.key


def backup(node: NodeProcess, output: Path) -> subprocess.CompletedProcess[str]:
    return ringkv_cli("backup", "--endpoint", node.address, "--output", str(output))


def test_backup_under_write_load_restores_into_a_node_that_serves_it(
    nodes: NodeFactory, tmp_path: Path
) -> None:
    node = nodes("node1")
    write_fixed_dataset(node.address)
    output = tmp_path / "node1.mdb"

    with ConcurrentWriter(node.address, prefix="backup", concurrency=32) as writer:
        writer.wait_for_acks(1_000)
        acked_before = dict(writer.acked)
        versions_before = dict(writer.versions)
        result = backup(node, output)
        acked_during = len(writer.acked) - len(acked_before)
        writer.wait_for_acks(len(writer.acked) + 200)  # the node still takes writes

    assert result.returncode == 0, result.stderr
    assert acked_during > 0, "no write was acknowledged while the backup ran"
    assert not writer.failures
    assert result.stdout.startswith(f"{output}: backup of node1, ")
    manifest = read_manifest(output)
    assert manifest is not None
    assert manifest.node_id == "node1"
    contents = check_snapshot(output, manifest)
    records = list(snapshot_records(output))
    assert len(records) == manifest.records == contents.records
    assert not list(tmp_path.glob("*.partial"))
    assert not list(node.data_dir.glob(".backup-*")), "the node kept its snapshot file"

    # Every write acknowledged before the backup began, exactly as acknowledged.
    in_snapshot = {record.key.decode(): record for record in records}
    missing = [key for key in acked_before if key not in in_snapshot]
    assert not missing, f"{len(missing)} acknowledged writes missing, e.g. {missing[:5]}"
    for key, value in acked_before.items():
        record = in_snapshot[key]
        assert (record.value, record.version.timestamp) == (value, versions_before[key]), key
    # The snapshot is one point in time: what it holds of the writer's keys
    # was all acknowledged by the end of the load, with the same values.
    for key, record in in_snapshot.items():
        if key.startswith("backup/"):
            assert writer.acked.get(key) == record.value, key
    assert sum(1 for r in records if r.tombstone) == 10
    assert sum(1 for r in records if r.expires_at_ms) == 5

    # A second backup never overwrites the first, nor writes through a planted
    # symlink; what it writes is its owner's alone.
    assert_one_line_error(backup(node, output), "FILE_EXISTS")
    precious = tmp_path / "precious"
    precious.write_text("keep me")
    planted = tmp_path / "planted.mdb"
    planted.symlink_to(precious)
    assert_one_line_error(backup(node, planted), "FILE_EXISTS")
    assert precious.read_text() == "keep me"
    for written in (output, manifest_path(output)):
        assert stat.S_IMODE(written.stat().st_mode) == 0o600, written

    restored = nodes("node1", start=False)
    result = ringkv_cli("restore", str(output), "--data-dir", str(restored.data_dir))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("restored the backup of node1 taken ")
    assert f"({manifest.records:,} records, " in result.stdout

    node.stop()
    # The data dir is node1's: another node started on it refuses to serve.
    impostor = ringkv_cli(
        "node", "-id", "node2", "-addr", "127.0.0.1:0", "--data-dir", str(node.data_dir)
    )
    assert impostor.returncode == 1
    assert f"data dir {node.data_dir} belongs to node1, not node2" in impostor.stderr
    restored.start()
    assert_node_serves(restored.address, records)
    with ringkv.Client(restored.address, timeout=5.0) as client:
        client.set("after-restore", b"new")  # and it takes writes
        entry = client.get("after-restore")
        assert entry is not None and entry.value == b"new"
    assert restored.stop() == 0


def test_restore_refuses_a_non_empty_dir_a_running_node_and_a_corrupt_file(
    nodes: NodeFactory, tmp_path: Path
) -> None:
    node = nodes("node1")
    write_fixed_dataset(node.address)
    output = tmp_path / "node1.mdb"
    assert backup(node, output).returncode == 0

    # A non-empty data dir, untouched.
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("keep me")
    result = ringkv_cli("restore", str(output), "--data-dir", str(occupied))
    assert_one_line_error(result, "DATA_DIR_NOT_EMPTY")
    assert sorted(p.name for p in occupied.iterdir()) == ["notes.txt"]

    # The data dir of a running node, even with --force.
    result = ringkv_cli("restore", str(output), "--data-dir", str(node.data_dir), "--force")
    assert_one_line_error(result, "UNAVAILABLE")
    assert "in use" in result.stderr
    with ringkv.Client(node.address, timeout=5.0) as client:
        entry = client.get("fixed/01")
        assert entry is not None and entry.value == b"value 1"

    # A corrupt file (one flipped byte), and a truncated one without its manifest.
    corrupt = tmp_path / "corrupt.mdb"
    data = bytearray(output.read_bytes())
    data[len(data) // 2] ^= 0xFF
    corrupt.write_bytes(bytes(data))
    manifest_path(corrupt).write_text(manifest_path(output).read_text())
    fresh = tmp_path / "fresh"
    result = ringkv_cli("restore", str(corrupt), "--data-dir", str(fresh))
    assert_one_line_error(result, "CORRUPT_BACKUP")
    assert "checksum" in result.stderr
    truncated = tmp_path / "truncated.mdb"
    truncated.write_bytes(output.read_bytes()[: len(data) // 2])
    result = ringkv_cli("restore", str(truncated), "--data-dir", str(fresh))
    assert_one_line_error(result, "CORRUPT_BACKUP")
    assert not fresh.exists()

    # The good file still restores, with --node-id checked against its manifest.
    result = ringkv_cli("restore", str(output), "--data-dir", str(fresh), "--node-id", "node2")
    assert_one_line_error(result, "WRONG_NODE")
    result = ringkv_cli("restore", str(output), "--data-dir", str(fresh), "--node-id", "node1")
    assert result.returncode == 0, result.stderr
    assert (fresh / "data.mdb").read_bytes() == output.read_bytes()


def test_a_memory_node_refuses_to_be_backed_up(nodes: NodeFactory, tmp_path: Path) -> None:
    node = nodes("mem1", "--engine", "memory")
    with ringkv.Client(node.address, timeout=5.0) as client:
        client.set("k", b"v")
    output = tmp_path / "mem.mdb"

    result = backup(node, output)

    assert_one_line_error(result, "BACKUP_UNSUPPORTED")
    assert "memory engine" in result.stderr
    assert list(tmp_path.iterdir()) == [node.workdir], "the failed backup left files"
    with ringkv.Client(node.address, timeout=5.0) as client:
        entry = client.get("k")
        assert entry is not None and entry.value == b"v"


def test_backup_takes_one_endpoint(tmp_path: Path) -> None:
    result = ringkv_cli(
        "backup", "--endpoint", "127.0.0.1:1,127.0.0.1:2", "--output", str(tmp_path / "x")
    )
    assert result.returncode == 2
    assert "one --endpoint" in result.stderr
