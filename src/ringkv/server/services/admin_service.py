"""The operator's service ``ringkv.admin.Admin``: backups of this node's store.

Another process cannot open the data dir (the node locks it), so the node
makes the snapshot itself: in a worker thread, the engine copies its store
in one read transaction into a temporary file in the data dir while reads
and writes go on; the file's checksum goes out first, then its bytes in
chunks, and the file is deleted when the call ends however it ends.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import tempfile
from collections.abc import AsyncGenerator, Callable
from pathlib import Path

from ringkv.api import admin_pb2
from ringkv.core.errors import Unavailable
from ringkv.server.transport.rpc import Context, Method, StreamMethod
from ringkv.storage import Engine, EngineStats
from ringkv.storage.snapshot import file_sha256

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
"""Bytes of the snapshot per streamed message."""
_SCRATCH_PREFIX = ".backup-"
_SCRATCH_SUFFIX = ".mdb.tmp"


class AdminService:
    """Handlers of ``ringkv.admin.Admin``."""

    name = "ringkv.admin.Admin"

    def __init__(
        self,
        node_id: str,
        engine: Engine,
        now_ms: Callable[[], int],
        *,
        data_dir: Path | None,
        chunk_bytes: int = CHUNK_BYTES,
    ) -> None:
        """``data_dir`` is where snapshots are written while they are sent: the
        node's locked data dir (None for an engine without one)."""
        self._node_id = node_id
        self._engine = engine
        self._now_ms = now_ms
        self._data_dir = data_dir
        self._chunk_bytes = chunk_bytes
        self._running = False
        if data_dir is not None:
            # Left by a node that died mid-backup; the dir is locked by this node.
            for leftover in data_dir.glob(f"{_SCRATCH_PREFIX}*{_SCRATCH_SUFFIX}"):
                leftover.unlink(missing_ok=True)

    def methods(self) -> dict[str, Method | StreamMethod]:
        return {"Backup": StreamMethod(admin_pb2.BackupRequest, self.backup)}

    async def backup(
        self, _request: admin_pb2.BackupRequest, _: Context
    ) -> AsyncGenerator[admin_pb2.BackupChunk, None]:
        if self._running:
            raise Unavailable(
                "a backup of this node is already running", reason="BACKUP_IN_PROGRESS"
            )
        self._running = True
        scratch_dir = self._data_dir or Path(tempfile.gettempdir())
        path = scratch_dir / f"{_SCRATCH_PREFIX}{secrets.token_hex(8)}{_SCRATCH_SUFFIX}"
        try:
            created_at_ms = self._now_ms()
            stats, sha256 = await asyncio.to_thread(self._snapshot, path)
            log.info(
                "backup snapshot taken",
                extra={"records": stats.records, "hints": stats.hints, "bytes": stats.bytes_used},
            )
            yield admin_pb2.BackupChunk(
                info=admin_pb2.BackupInfo(
                    node_id=self._node_id,
                    records=stats.records,
                    hints=stats.hints,
                    size_bytes=stats.bytes_used,
                    sha256=sha256,
                    created_at_ms=created_at_ms,
                )
            )
            with path.open("rb") as file:
                while chunk := await asyncio.to_thread(file.read, self._chunk_bytes):
                    yield admin_pb2.BackupChunk(data=chunk)
        finally:
            # A snapshot still being written (the call was cancelled) goes on
            # into the unlinked file, which the system frees when it is done.
            path.unlink(missing_ok=True)
            self._running = False

    def _snapshot(self, path: Path) -> tuple[EngineStats, str]:
        stats = self._engine.snapshot(path)
        return stats, file_sha256(path)
