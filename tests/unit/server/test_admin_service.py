"""The Admin service's Backup stream, served in-process over real gRPC, and the
client that receives it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import pytest

from ringkv.client.admin import BackupInfo, backup
from ringkv.core.errors import PreconditionFailed, Unavailable
from ringkv.server.services.admin_service import AdminService
from ringkv.server.transport import rpc
from ringkv.storage.engine import Engine, FsyncMode
from ringkv.storage.lmdb_engine import LmdbEngine
from ringkv.storage.memory import MemoryEngine
from ringkv.storage.snapshot import file_sha256, snapshot_records
from tests.unit.storage.helpers import hint, in_scan_order, put, rec

CHUNK = 16 << 10


def now_ms() -> int:
    return 1_800_000_000_000


@asynccontextmanager
async def serving(service: AdminService, gate: rpc.Gate | None = None) -> AsyncIterator[str]:
    """``service`` on a gRPC server on a free loopback port; its address."""
    server = grpc.aio.server()
    port = server.add_insecure_port("127.0.0.1:0")
    server.add_generic_rpc_handlers([rpc.generic_handler(service, gate or rpc.Gate())])
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


def scratch_files(data_dir: Path) -> list[Path]:
    return sorted(data_dir.glob(".backup-*"))


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    opened = LmdbEngine(tmp_path / "data", FsyncMode.NEVER)
    yield opened
    opened.close()


def test_a_backup_streams_the_snapshot_in_chunks(engine: Engine, tmp_path: Path) -> None:
    records = [rec(b"k%05d" % i, i + 1, b"v" * 200) for i in range(2_000)]
    engine.apply([put(r) for r in records])
    engine.apply([hint(rec(b"k00001", 99, b"h"), "node2")])
    service = AdminService("node1", engine, now_ms, data_dir=tmp_path / "data", chunk_bytes=CHUNK)
    output = tmp_path / "backup.mdb"
    progress: list[tuple[int, int]] = []

    async def main() -> BackupInfo:
        async with serving(service) as address:
            return await asyncio.to_thread(
                backup,
                address,
                output,
                timeout=30.0,
                progress=lambda done, total: progress.append((done, total)),
            )

    info = asyncio.run(main())

    size = output.stat().st_size
    assert info == BackupInfo("node1", 2_000, 1, size, file_sha256(output), now_ms())
    assert list(snapshot_records(output)) == in_scan_order(records)
    assert progress[0] == (0, size)
    assert progress[-1] == (size, size)
    assert len(progress) == 1 + -(-size // CHUNK), "one progress report per chunk"
    assert output.stat().st_mode & 0o777 == 0o600
    assert scratch_files(tmp_path / "data") == []


class StopReceiving(Exception):
    """Raised from the progress callback to abandon the stream half way."""


def test_an_abandoned_backup_deletes_the_nodes_file_and_the_partial_one(
    engine: Engine, tmp_path: Path
) -> None:
    engine.apply([put(rec(b"k%05d" % i, 1, b"v" * 500)) for i in range(2_000)])
    data_dir = tmp_path / "data"
    service = AdminService("node1", engine, now_ms, data_dir=data_dir, chunk_bytes=CHUNK)
    output = tmp_path / "backup.mdb"

    def stop_after_first_chunk(done: int, _total: int) -> None:
        if done > 0:
            raise StopReceiving

    async def main() -> None:
        async with serving(service) as address:
            with pytest.raises(StopReceiving):
                await asyncio.to_thread(
                    backup, address, output, timeout=30.0, progress=stop_after_first_chunk
                )
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 10.0
            while scratch_files(data_dir) and loop.time() < deadline:
                await asyncio.sleep(0.01)

    asyncio.run(main())

    assert scratch_files(data_dir) == []
    assert list(tmp_path.iterdir()) == [data_dir]


def test_a_closing_node_refuses_a_backup(engine: Engine, tmp_path: Path) -> None:
    service = AdminService("node1", engine, now_ms, data_dir=tmp_path / "data")
    gate = rpc.Gate()

    async def main() -> None:
        await gate.drain(0.0)  # closes it
        async with serving(service, gate) as address:
            with pytest.raises(Unavailable) as raised:
                await asyncio.to_thread(backup, address, tmp_path / "b.mdb", timeout=30.0)
            assert raised.value.reason == rpc.SHUTTING_DOWN

    asyncio.run(main())
    assert not (tmp_path / "b.mdb").exists()


def test_a_memory_engine_is_refused_with_its_reason(tmp_path: Path) -> None:
    service = AdminService("node1", MemoryEngine(), now_ms, data_dir=None)

    async def main() -> None:
        async with serving(service) as address:
            with pytest.raises(PreconditionFailed) as raised:
                await asyncio.to_thread(backup, address, tmp_path / "b.mdb", timeout=30.0)
            assert raised.value.reason == "BACKUP_UNSUPPORTED"

    asyncio.run(main())
    assert list(tmp_path.iterdir()) == []


def test_snapshot_files_left_by_a_dead_node_are_removed_at_start(
    engine: Engine, tmp_path: Path
) -> None:
    leftover = tmp_path / "data" / ".backup-0123456789abcdef.mdb.tmp"
    leftover.write_bytes(b"half a snapshot")
    AdminService("node1", engine, now_ms, data_dir=tmp_path / "data")
    assert not leftover.exists()
    assert (tmp_path / "data" / "data.mdb").exists()
