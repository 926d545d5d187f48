"""Finding the cluster: a starting node's seeds, a removed node's way back, and
newer tables asked of the members.

A node that starts without a saved table asks its ``-peers`` for theirs; if
one includes it, it adopts it; if one does not, it asks to join and adopts
the table it is admitted with. If no seed answers within the discovery
window, it bootstraps the table from its own flags (epoch 1), unless it was
told ``--initial-cluster-state existing``: every node of a new cluster names
the same members, so they all build the same table. A node removed while it
was away asks to be admitted again until a table names it.

All of it runs beside the election's timers, and a member's heartbeat can
admit the node first: then the membership manager calls :meth:`stop_seeking`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, Protocol

from ringkv.api import kv_pb2
from ringkv.core.errors import RingkvError
from ringkv.core.membership import Membership
from ringkv.server.cluster.seeds import Seeds
from ringkv.server.transport.peers import Peer
from ringkv.server.transport.wire import membership_from_wire

log = logging.getLogger("ringkv.membership")

_SEEK_RETRY_S = 0.2
"""How long a starting node waits between rounds of asking its seeds."""
_REJOIN_RETRY_S = 1.0
"""How long a removed node waits before it asks to be admitted again."""


class Admission(Protocol):
    """What discovery needs of the membership manager."""

    @property
    def member(self) -> bool:
        """Whether this node runs its election: it was admitted, by any path."""

    def admitted(self, table: Membership, *, campaign: bool) -> bool:
        """Take a table a seed named this node in; False if it is older than
        one that removed it."""

    def offer(self, table: Membership | None) -> None:
        """Adopt a table if it is newer than the one in effect."""

    def bootstrap(self) -> None:
        """Start a new cluster from the node's own flags."""


class Discovery:
    """Asks seeds and members for the cluster's table, in the background."""

    def __init__(
        self,
        seeds: Seeds,
        admission: Admission,
        *,
        node_id: str,
        address: str,
        window_ms: int,
        ask_timeout_s: float,
        joins_existing: bool,
        now_ms: Callable[[], int],
    ) -> None:
        self.seeds = seeds
        self._admission = admission
        self._node_id = node_id
        self._address = address
        self._window_ms = window_ms
        """How long a new node waits for a seed before it bootstraps."""
        self._ask_timeout_s = ask_timeout_s
        self._joins_existing = joins_existing
        self._now_ms = now_ms
        self._seeking: set[asyncio.Task[Any]] = set()
        """Finding the cluster or joining it again, until the node is a member."""
        self._asking: asyncio.Task[None] | None = None

    def find(self) -> None:
        """Adopt the table a seed has, joining it first if this node is not in it."""
        self._spawn(self._find())

    def rejoin(self) -> None:
        """Ask to be admitted again until a table names this node."""
        self._spawn(self._rejoin())

    def stop_seeking(self) -> None:
        """Admitted: stop asking seeds (one may never answer, and a heartbeat's
        table can admit this node first)."""
        for task in self._seeking:
            if task is not asyncio.current_task():
                task.cancel()

    def ask_members(self, peers: Iterable[Peer]) -> None:
        """Offer the newest table any of ``peers`` has (one round at a time)."""
        if self._asking is None or self._asking.done():
            self._asking = asyncio.get_running_loop().create_task(self._ask(list(peers)))

    async def _find(self) -> None:
        deadline = self._now_ms() + self._window_ms
        waiting_logged = False
        while not self._admission.member:
            try:
                table = await self.seeds.newest_table()
                if table is not None:
                    joining = table.addresses.get(self._node_id) != self._address
                    if joining:
                        table = await self.seeds.join()
                    if self._admission.admitted(table, campaign=not joining):
                        return
            except Exception:  # a node that stops seeking is never admitted
                log.exception("finding the cluster failed; trying again")
            if self._now_ms() >= deadline:
                if not self._joins_existing:
                    self._admission.bootstrap()
                    return
                if not waiting_logged:
                    log.info(
                        "no seed answers; waiting for one (--initial-cluster-state existing)",
                        extra={"seeds": ",".join(self.seeds.addresses)},
                    )
                    waiting_logged = True
            await asyncio.sleep(_SEEK_RETRY_S)

    async def _rejoin(self) -> None:
        while True:
            try:
                table = await self.seeds.join()
                if self._admission.admitted(table, campaign=False):
                    return
                # An answer older than the table that removed this node: the
                # leader had not adopted the removal yet (cluster sim seed 18:
                # a joiner removed by an operator got its first admission back).
            except Exception:  # a node that stops asking is never admitted
                log.exception("joining again failed; trying again")
            await asyncio.sleep(_REJOIN_RETRY_S)

    async def _ask(self, peers: list[Peer]) -> None:
        async def table_of(peer: Peer) -> Membership | None:
            response = await peer.cluster.GetClusterState(
                kv_pb2.GetClusterStateRequest(), timeout=self._ask_timeout_s
            )
            return membership_from_wire(response.table)

        answers = await asyncio.gather(*(table_of(peer) for peer in peers), return_exceptions=True)
        for answer in answers:
            if isinstance(answer, Membership):
                self._admission.offer(answer)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work, name="finding the cluster")
        self._seeking.add(task)
        task.add_done_callback(self._seeking.discard)
        task.add_done_callback(_log_failure)

    async def close(self) -> None:
        tasks = [*self._seeking, *([self._asking] if self._asking is not None else [])]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def _log_failure(task: asyncio.Task[None]) -> None:
    # An error outside the retried calls (saving the bootstrapped table) would
    # otherwise end the search silently.
    if not task.cancelled() and task.exception() is not None:
        error = task.exception()
        if not isinstance(error, RingkvError):
            log.error("finding the cluster failed for good", exc_info=error)
