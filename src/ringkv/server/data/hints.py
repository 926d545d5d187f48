"""Hinted handoff: hints held for a node are replayed once it is back, then dropped.

A stand-in holds a write for a down replica as a hint (sloppy quorum). Every
``interval`` this task sends the hints for the peers that are alive again,
drops each one its replica acknowledged, and drops hints older than the hint
TTL unsent (anti-entropy repairs what they would have carried).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable, Mapping

from ringkv.core.hlc import physical_ms
from ringkv.core.records import Record
from ringkv.server.counters import Counters
from ringkv.server.data.local_store import LocalStore
from ringkv.server.transport.peers import Peer
from ringkv.storage import Engine

log = logging.getLogger(__name__)

MAX_HINTS_PER_ROUND = 2048


class HintReplayer:
    """The background task that hands hints off to their nodes."""

    def __init__(
        self,
        engine: Engine,
        store: LocalStore,
        peers: Mapping[str, Peer],
        counters: Counters,
        now_ms: Callable[[], int],
        *,
        hint_ttl_ms: int,
        interval_s: float,
    ) -> None:
        self._engine = engine
        self._store = store
        self._peers = peers
        self._counters = counters
        self._now_ms = now_ms
        self._hint_ttl_ms = hint_ttl_ms
        self._interval_s = interval_s
        self._task = asyncio.get_running_loop().create_task(self._run(), name="hint-replay")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self.replay_once()
            except Exception:  # a bad round must not end handoff for good
                log.exception("hint replay failed")

    async def replay_once(self) -> None:
        """Send the hints of every live peer, drop the delivered and the expired."""
        if self._engine.stats().hints == 0:
            return
        now = self._now_ms()
        deliveries = []
        for node_id, record in itertools.islice(self._engine.scan_hints(), MAX_HINTS_PER_ROUND):
            if physical_ms(record.version.timestamp) + self._hint_ttl_ms < now:
                await self._store.drop_hint(record, node_id)
                self._counters.hints_expired += 1
                continue
            peer = self._peers.get(node_id)
            if peer is not None and peer.alive:
                deliveries.append(self._deliver(peer, record))
        await asyncio.gather(*deliveries)

    async def _deliver(self, peer: Peer, record: Record) -> None:
        try:
            await peer.write(record)
        except Exception:  # the peer went down again: try next round
            return
        await self._store.drop_hint(record, peer.node_id)
        self._counters.hints_replayed += 1

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
