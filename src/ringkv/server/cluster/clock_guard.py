"""Whether this node may stamp versions: its clock measured against its peers'.

``ClockProber`` asks every other member for its wall clock once per
interval (``Replica.Clock``, one round trip each) and hands the samples to
the ``ClockGuard``, which judges them with ``ringkv.core.clock_offset``. The
coordinator asks the guard before it stamps a write; the client service
sends writes to another node while the guard says no. With
``--max-clock-offset 0`` the guard always says yes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import grpc

from ringkv.api import replica_pb2
from ringkv.api.replica_pb2_grpc import ReplicaStub
from ringkv.core.clock_offset import ClockCheck, ClockVerdict, OffsetSample, check_clock, measure
from ringkv.core.errors import Unavailable
from ringkv.core.hlc import HybridLogicalClock
from ringkv.core.membership import Membership
from ringkv.server.cluster.cluster_view import ClusterView
from ringkv.server.transport.peers import ChannelOpener

if TYPE_CHECKING:  # the async stub type exists only in the generated .pyi
    from ringkv.api.replica_pb2_grpc import ReplicaAsyncStub

log = logging.getLogger(__name__)

CLOCK_OFFSET = "CLOCK_OFFSET"
"""The reason of a write refused because this node's clock is too far off."""
CLOCK_UNCHECKED = "CLOCK_UNCHECKED"
"""The reason of a write refused before this node could measure its clock."""
_REUSE_S = 0.1
"""How long a verdict is reused: far below any probe interval, far above a write."""
_STARTING_S = 0.1
"""How often a node that has had no verdict yet probes its peers."""


class ClockGuard:
    """The latest clock sample of each peer, and the verdict they give."""

    def __init__(
        self,
        view: ClusterView,
        now_ms: Callable[[], int],
        monotonic: Callable[[], float],
        *,
        max_offset_ms: float,
        fresh_for_s: float,
    ) -> None:
        self._view = view
        self._now_ms = now_ms
        self._monotonic = monotonic
        self.max_offset_ms = max_offset_ms
        self._fresh_for_s = fresh_for_s
        self._samples: dict[str, OffsetSample] = {}
        self._last_verdict: ClockVerdict | None = None
        self._warned = False
        """Whether the last verdict logged stopped the clock from stamping."""
        self._cached: tuple[Membership, float, ClockCheck] | None = None
        self.first_verdict = asyncio.Event()
        """Set once the clock was first found within or beyond: until then (just
        started) writes wait for a verdict and the prober asks often."""

    @property
    def enabled(self) -> bool:
        return self.max_offset_ms > 0

    def record(self, peer: str, sample: OffsetSample) -> None:
        self._samples[peer] = sample
        self._cached = None

    def offset_of(self, peer: str) -> OffsetSample | None:
        """The latest sample of a peer's clock, if still fresh."""
        sample = self._samples.get(peer)
        if sample is None or self._monotonic() - sample.taken_at > self._fresh_for_s:
            return None
        return sample

    def check(self) -> ClockCheck:
        """The verdict now; logged when it changes.

        Every write asks, so a verdict is reused until a sample arrives, the
        member table changes or ``_REUSE_S`` passes (samples only go stale
        with time)."""
        now = self._monotonic()
        cached = self._cached
        if cached is not None and cached[0] is self._view.membership and now - cached[1] < _REUSE_S:
            return cached[2]
        result = self._judge(now)
        self._cached = (self._view.membership, now, result)
        return result

    def _judge(self, now: float) -> ClockCheck:
        # Joiners and leavers do not count: a joiner that never came up must
        # not leave the cluster without a majority of clocks.
        members = set(self._view.membership.current_nodes())
        samples = {
            peer: sample
            for peer, sample in self._samples.items()
            if peer in members and peer != self._view.node_id
        }
        if self.enabled:
            result = check_clock(
                samples,
                len(members),
                max_offset_ms=self.max_offset_ms,
                now=now,
                fresh_for=self._fresh_for_s,
                anchor_ms=self._now_ms() - now * 1000,
            )
        else:
            result = ClockCheck(ClockVerdict.WITHIN, 0.0, len(members), 0, len(members))
        if result.verdict is not self._last_verdict:
            self._log_change(result)
            self._last_verdict = result.verdict
            if result.verdict is not ClockVerdict.UNCHECKED:
                self.first_verdict.set()
        return result

    def _log_change(self, result: ClockCheck) -> None:
        """Warn when the clock stops stamping (not while it is first measured), and
        say when it stamps again."""
        first = self._last_verdict in (None, ClockVerdict.UNCHECKED) and not self._warned
        if result.may_stamp and not self._warned:
            return
        if first and result.verdict is ClockVerdict.UNCHECKED:
            return
        self._warned = not result.may_stamp
        log.log(
            logging.INFO if result.may_stamp else logging.WARNING,
            "clock " + result.verdict.value,
            extra={
                "offset_ms": round(result.offset_ms),
                "max_offset_ms": self.max_offset_ms,
                "within": result.within,
                "members": result.members,
            },
        )

    async def require_soon(self, timeout_s: float) -> None:
        """``require``; a node that has had no verdict since it started first waits up
        to ``timeout_s`` for one (it measures its clock within a probe round)."""
        if timeout_s > 0 and not self.first_verdict.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.first_verdict.wait(), timeout_s)
        self.require()

    def require(self) -> None:
        """Raise Unavailable unless this node may stamp versions now."""
        result = self.check()
        if result.may_stamp:
            return
        reason = CLOCK_OFFSET if result.verdict is ClockVerdict.BEYOND else CLOCK_UNCHECKED
        raise Unavailable(
            f"this node does not stamp writes: {result.describe()} "
            f"(--max-clock-offset {self.max_offset_ms:.0f} ms)",
            reason=reason,
            metadata={"offset_ms": str(round(result.offset_ms))},
        )


class ClockProber:
    """Measures every other member's clock once per interval.

    It has its own channel to each member: a probe that fails while a peer
    is still starting must not put the data path's channel into reconnect
    backoff just before the first replica write.
    """

    def __init__(
        self,
        view: ClusterView,
        guard: ClockGuard,
        clock: HybridLogicalClock,
        now_ms: Callable[[], int],
        monotonic: Callable[[], float],
        *,
        interval_s: float,
        timeout_s: float,
        open_channel: ChannelOpener,
    ) -> None:
        self._view = view
        self._guard = guard
        self._clock = clock
        self._now_ms = now_ms
        self._monotonic = monotonic
        self._interval_s = interval_s
        self._timeout_s = timeout_s
        self._open_channel = open_channel
        self._stubs: dict[str, tuple[str, grpc.aio.Channel, ReplicaAsyncStub]] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._guard.enabled:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="clock-prober")

    async def _run(self) -> None:
        refused = self._clock.peer_clocks_refused
        while True:
            try:
                await self._round()
            except Exception:  # a bad round must not end the probing for good
                log.exception("clock probe round failed")
            if self._clock.peer_clocks_refused > refused:
                log.warning(
                    "peer clocks too far ahead were not adopted",
                    extra={
                        "messages": self._clock.peer_clocks_refused - refused,
                        "max_lead_ms": self._guard.max_offset_ms,
                    },
                )
                refused = self._clock.peer_clocks_refused
            # Until the first verdict writes wait for one: ask often.
            starting = not self._guard.first_verdict.is_set()
            await asyncio.sleep(
                min(self._interval_s, _STARTING_S) if starting else self._interval_s
            )

    async def _round(self) -> None:
        members = {
            node: address
            for node, address in self._view.membership.addresses.items()
            if node != self._view.node_id
        }
        await self._close_channels(set(self._stubs) - set(members))
        await asyncio.gather(*(self._probe(node, address) for node, address in members.items()))
        self._guard.check()  # logs a change of verdict even while no write asks

    async def _probe(self, node_id: str, address: str) -> None:
        entry = self._stubs.get(node_id)
        if entry is None or entry[0] != address:
            await self._close_channels({node_id})
            channel = self._open_channel(address)
            entry = self._stubs[node_id] = (address, channel, ReplicaStub(channel))
        sent = self._monotonic()
        try:
            response = await entry[2].Clock(
                replica_pb2.ClockRequest(clock=self._clock.last), timeout=self._timeout_s
            )
        except grpc.aio.AioRpcError:
            return
        answered = self._monotonic()
        self._clock.observe_peer(response.clock)
        sample = measure((answered - sent) * 1000, response.wall_ms, self._now_ms(), answered)
        self._guard.record(node_id, sample)

    async def _close_channels(self, nodes: set[str]) -> None:
        for node in nodes:
            entry = self._stubs.pop(node, None)
            if entry is not None:
                await entry[1].close()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._close_channels(set(self._stubs))
