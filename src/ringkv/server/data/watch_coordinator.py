"""Client watches: every change under a prefix, from a quorum of each range's replicas.

A watch follows a quorum of each of the read ring's token ranges' replicas
(this node's own log first when it is one, then live ones), each chosen
replica's change log (``ringkv.server.data.change_feed``) over
one stream per node. Events pass through ``ringkv.core.watch.Delivered``,
which drops repeats and keeps each key's events in version order.

The watch's resume version is the lowest progress mark of its streams,
less ``RESUME_MARGIN``: every change at or below it has been passed on.
When a stream fails (its node died, stalled, or left) or the member table
changes, the plan is made again, skipping a node that just failed, and the
streams whose node or spans changed start again from the resume version;
what they send again is dropped as a repeat. A change a replica's log was trimmed past
ends the watch with Compacted, never silently.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import AsyncGenerator, Callable, Collection
from contextlib import aclosing
from dataclasses import dataclass, field

from ringkv.core.consistency import Consistency
from ringkv.core.errors import Compacted, RingkvError, Unavailable, WatchDisabled
from ringkv.core.hlc import HybridLogicalClock
from ringkv.core.quorum import required_replies
from ringkv.core.records import Record
from ringkv.core.watch import RESUME_MARGIN, Delivered
from ringkv.server.cluster.cluster_view import ClusterView
from ringkv.server.data.change_feed import HEARTBEAT_S, ChangeFeed, SpanSet
from ringkv.server.transport.peers import Peer

log = logging.getLogger(__name__)

STALL_S = 5 * HEARTBEAT_S
"""A stream silent this long (its replica sends progress every second) is
taken for failed: a partitioned node sends no error."""
RETRY_S = 0.5
"""The pause before streams start again after a failure."""
AVOID_S = 10.0
"""How long a node whose stream failed is passed over while another replica
of its ranges is live."""
QUEUE_BATCHES = 64
"""Batches waiting for the caller: past it the streams wait (flow control)."""


@dataclass(frozen=True, slots=True)
class WatchBatch:
    records: list[Record]
    """Changes, each key's in version order."""
    resume_version: int
    """Every change at or below this version has been passed on."""


@dataclass(slots=True, eq=False)
class _Stream:
    node: str
    spans: list[tuple[int, int]]
    delay_s: float = 0.0
    """How long to wait before opening it: its node failed a moment ago."""
    peer: Peer | None = None
    """The channel it uses (None for this node's own log): a stream whose
    node was reopened at another address is replaced, not kept."""
    task: asyncio.Task[None] | None = None
    progress: int = 0


@dataclass(slots=True)
class _Failure:
    stream: _Stream
    error: BaseException


@dataclass(slots=True)
class _Session:
    prefix: bytes
    start: int
    """Where the caller asked to start: nothing at or below it is passed on
    (streams may send what reached a replica late, stamped below it)."""
    resume_version: int
    queue: asyncio.Queue[tuple[_Stream, list[Record], int, int] | _Failure] = field(
        default_factory=lambda: asyncio.Queue(QUEUE_BATCHES)
    )
    streams: list[_Stream] = field(default_factory=list)
    delivered: Delivered = field(default_factory=Delivered)
    epoch: int = -1
    compacted: dict[str, int] = field(default_factory=dict)
    """Nodes whose logs do not reach back to where this watch resumes, and
    the version each reaches back to: once the watch passed it, it may be
    followed again."""
    failed_at: dict[str, float] = field(default_factory=dict)
    last_seq: dict[str, int] = field(default_factory=dict)
    """The last log entry each node's streams read: a stream started again
    there asks for everything logged after it, so a late change logged
    between two streams is not missed."""
    """When each node's stream last failed."""

    def following(self, stream: _Stream) -> bool:
        """Whether a stream is still one of the session's (not stopped)."""
        return any(s is stream for s in self.streams)


class WatchCoordinator:
    """Serves client watches on this node."""

    def __init__(
        self,
        view: ClusterView,
        changes: ChangeFeed,
        clock: HybridLogicalClock,
        now_ms: Callable[[], int],
    ) -> None:
        self._now_ms = now_ms
        self._view = view
        self._changes = changes
        self._clock = clock
        self._avoid: dict[str, float] = {}
        """Nodes whose streams failed lately, until when they are passed over."""

    async def watch(self, prefix: bytes, from_version: int) -> AsyncGenerator[WatchBatch, None]:
        """Batches of changes to keys under ``prefix`` with versions above
        ``from_version`` (0: from now), until the caller stops; the first
        batch is empty and says where the watch starts."""
        # From now: past every version stamped before, whatever this node's
        # clock last saw.
        start = from_version or self._clock.tick(self._now_ms()).timestamp
        session = _Session(prefix, start, start)
        loop = asyncio.get_running_loop()
        try:
            await self._reconcile(session)
            yield WatchBatch([], start)
            last_answer = loop.time()
            while True:
                try:
                    item = await asyncio.wait_for(session.queue.get(), HEARTBEAT_S)
                except TimeoutError:
                    item = None
                news: list[Record] = []
                if isinstance(item, tuple):
                    # Also from a stream replaced meanwhile: what it read is
                    # news all the same (a late change it alone saw, say);
                    # only its progress no longer counts.
                    stream, records, progress, last_seq = item
                    if last_seq:
                        session.last_seq[stream.node] = max(
                            session.last_seq.get(stream.node, 0), last_seq
                        )
                    news = [
                        record
                        for record in records
                        if record.version.timestamp > session.start
                        and session.delivered.admit(
                            record.key, (record.version.timestamp, record.version.node_id)
                        )
                    ]
                    if session.following(stream):
                        stream.progress = max(stream.progress, progress)
                if isinstance(item, _Failure):
                    self._failed(session, item)
                if (
                    (isinstance(item, _Failure) and session.following(item.stream))
                    or session.epoch != self._view.epoch
                    or any(s.task is not None and s.task.done() for s in session.streams)
                ):
                    await self._reconcile(session)
                self._advance(session)
                # Also a heartbeat: a caller that hears nothing for long can
                # tell a dead node from a quiet prefix.
                if news or loop.time() - last_answer >= HEARTBEAT_S:
                    yield WatchBatch(news, session.resume_version)
                    last_answer = loop.time()
        finally:
            await self._stop(session.streams)

    def _failed(self, session: _Session, failure: _Failure) -> None:
        """Note a stream's failure; raise it when no other replica can stand in.
        A stream already replaced only counts against its node."""
        error, node = failure.error, failure.stream.node
        now = asyncio.get_running_loop().time()
        session.failed_at[node] = now
        if not session.following(failure.stream):
            self._avoid[node] = now + AVOID_S
            return
        if isinstance(error, Compacted):
            # That replica's log does not reach back far enough; another's may.
            reach = int(error.metadata.get("horizon", str(1 << 62)))
            session.compacted[node] = reach
            log.info("watch stream compacted", extra={"peer": node, "error": str(error)})
            if self._uncovered(session):
                raise error
            return
        if isinstance(error, WatchDisabled):
            raise error  # a node that keeps no log: no retry helps
        log.info("watch stream failed", extra={"peer": node, "error": repr(error)})
        self._avoid[node] = now + AVOID_S

    def _uncovered(self, session: _Session) -> bool:
        """Whether some range has no replica left whose log reaches back."""
        view = self._view
        return any(
            all(node in session.compacted for node in token_range.replicas)
            for token_range in view.ranges
        )

    @staticmethod
    def _advance(session: _Session) -> None:
        """Move the resume version up to what every stream has passed."""
        if not session.streams or any(s.progress == 0 for s in session.streams):
            return
        candidate = min(s.progress for s in session.streams) - RESUME_MARGIN
        if candidate > session.resume_version:
            session.resume_version = candidate
            session.delivered.forget_below(candidate)

    async def _reconcile(self, session: _Session) -> None:
        """Follow the current plan: streams whose node and spans it keeps go
        on, the others stop, new ones start from the resume version (after a
        pause if their node just failed). Compacted if some range has no
        replica whose log reaches back."""
        plan = self._plan(session)
        keep = [
            s
            for s in session.streams
            if plan.get(s.node) == s.spans
            and s.task is not None
            and not s.task.done()
            and self._view.peers.get(s.node) is s.peer
        ]
        await self._stop([s for s in session.streams if s not in keep])
        kept = {s.node for s in keep}
        now = asyncio.get_running_loop().time()
        started = [
            _Stream(
                node,
                spans,
                delay_s=RETRY_S if now - session.failed_at.get(node, -RETRY_S) < RETRY_S else 0.0,
                peer=self._view.peers.get(node),
            )
            for node, spans in plan.items()
            if node not in kept
        ]
        session.streams = keep + started
        for stream in started:
            stream.task = asyncio.get_running_loop().create_task(
                self._pump(session, stream), name=f"watch of {stream.node}"
            )
        if started:
            log.info(
                "watch following",
                extra={"nodes": ",".join(sorted(plan)), "from_version": session.resume_version},
            )

    def _plan(self, session: _Session) -> dict[str, list[tuple[int, int]]]:
        """The spans to follow on each node: a quorum of each range's replicas."""
        view = self._view
        session.epoch = view.epoch
        session.compacted = {
            node: reach
            for node, reach in session.compacted.items()
            if reach > session.resume_version
        }
        now = asyncio.get_running_loop().time()
        self._avoid = {node: until for node, until in self._avoid.items() if until > now}
        spans: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for token_range in view.ranges:
            if not token_range.replicas:
                continue
            picked = self._pick(token_range.replicas, session.compacted.keys())
            if not picked:
                raise Compacted(
                    f"no replica of a token range keeps changes back to version "
                    f"{session.resume_version}: scan for the current values and watch again "
                    "from now",
                    metadata={"horizon": str(min(session.compacted.values()))},
                )
            for node in picked:
                spans[node].append((token_range.start, token_range.end))
        return dict(spans)

    def _pick(self, replicas: tuple[str, ...], compacted: Collection[str]) -> list[str]:
        """A quorum of the replicas to follow (fewer if the logs of the others
        do not reach back): this node first if it is one, then live ones not
        failed lately, then other live ones, then the rest.

        A quorum, so that every write acknowledged at QUORUM or above reaches
        a followed replica as it is made: one that missed it (down, or cut
        off from the writer) gets only the key's newest version later.
        """
        view = self._view

        def preference(node: str) -> tuple[bool, bool, bool]:
            live = view.is_live(node)
            return (not (live and node not in self._avoid), node != view.node_id, not live)

        ranked = sorted((n for n in replicas if n not in compacted), key=preference)
        return ranked[: required_replies(Consistency.QUORUM, len(replicas))]

    @staticmethod
    async def _stop(streams: list[_Stream]) -> None:
        """Stop streams; what they left queued is ignored (``Session.following``)."""
        tasks = [s.task for s in streams if s.task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            # Not awaiting each: a cancellation of this task must not be taken
            # for one of theirs.
            await asyncio.wait(tasks)

    async def _pump(self, session: _Session, stream: _Stream) -> None:
        """Move one node's batches to the session's queue, or its failure."""
        try:
            await asyncio.sleep(stream.delay_s)
            async with aclosing(self._feed(session, stream)) as feed:
                while True:
                    async with asyncio.timeout(STALL_S):
                        records, progress, last_seq = await anext(feed)
                    await session.queue.put((stream, records, progress, last_seq))
        except (RingkvError, TimeoutError, StopAsyncIteration) as error:
            await session.queue.put(_Failure(stream, error))
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # stopped by the watch
            # The call was cancelled under it: the peer's channel closed.
            await session.queue.put(_Failure(stream, Unavailable(f"{stream.node} went away")))
        except Exception as error:
            # Not lost with the task: the watch moves on from it like any failure.
            log.exception("watch stream broke", extra={"peer": stream.node})
            await session.queue.put(_Failure(stream, error))

    async def _feed(
        self, session: _Session, stream: _Stream
    ) -> AsyncGenerator[tuple[list[Record], int, int], None]:
        if stream.node == self._view.node_id:
            batches = self._changes.follow(
                spans=SpanSet.of(stream.spans),
                prefix=session.prefix,
                from_version=session.resume_version,
                after_seq=session.last_seq.get(stream.node, 0),
            )
            async with aclosing(batches) as local:
                async for batch in local:
                    yield batch.records, batch.progress, batch.last_seq
            return
        if stream.peer is None:
            raise Unavailable(f"{stream.node} is not a member this node can reach")
        remote = stream.peer.watch(
            stream.spans,
            session.prefix,
            session.resume_version,
            session.last_seq.get(stream.node, 0),
        )
        async with aclosing(remote) as answers:
            async for answer in answers:
                yield answer
