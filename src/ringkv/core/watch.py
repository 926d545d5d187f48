"""Watches: which change events to pass on, and where to resume.

A watch follows a quorum of each token range's replicas and moves to
another when one fails, resuming a little before where it had got to; a
client that reconnects resumes a little below the last resume version it
was given. Both see some changes twice, and a key's older version may come
after a newer one was passed on. ``Delivered`` drops those, so each key's
events stay in version order.
"""

from __future__ import annotations

import heapq

from ringkv.core.hlc import LOGICAL_BITS

RESUME_MARGIN = 5_000 << LOGICAL_BITS
"""How far (5 s, in timestamp units) below a replica's progress mark a watch
resumes: a write reaches its replicas within that of being stamped, or it
is late (a hint, a repair) and may be missed by a watch that moved to
another replica meanwhile."""

REMEMBERED_KEYS = 100_000
"""Keys whose newest version passed on a watch remembers (some MiB): a change
to a forgotten key that arrives late could come after a newer version of it."""

Stamp = tuple[int, str]
"""A version as (timestamp, node id); a client sees the timestamp only and
passes "" for the node."""


class Delivered:
    """The newest version passed on of each key that changed lately."""

    def __init__(self) -> None:
        self._newest: dict[bytes, Stamp] = {}
        # Every version admitted, oldest first: forgetting pops from the
        # front, so it costs what it forgets, not what is kept.
        self._by_age: list[tuple[Stamp, bytes]] = []
        self._forgotten: Stamp = (0, "")
        """The newest version forgotten: at or below it, a key not held may
        have had a newer version passed on."""

    def admit(self, key: bytes, version: Stamp) -> bool:
        """Whether an event is news (newer than what was passed on for its
        key); if so it counts as passed on.

        A change that reached its replicas late (a hint, a repair) is news
        if its key's newest version passed on is older: so a key's final
        version is never held back, unless it is older than what was
        forgotten (past ``REMEMBERED_KEYS``), where order can no longer be
        told and it is dropped.
        """
        held = self._newest.get(key)
        if held is not None and version <= held:
            return False
        if held is None and version <= self._forgotten:
            return False
        self._newest[key] = version
        by_age = self._by_age
        heapq.heappush(by_age, (version, key))
        if len(by_age) > 2 * len(self._newest) + 1024:
            # Superseded versions of hot keys: keep one entry per key.
            self._by_age = [(stamp, held_key) for held_key, stamp in self._newest.items()]
            heapq.heapify(self._by_age)
        return True

    def forget_below(self, resume_version: int) -> None:
        """Past ``REMEMBERED_KEYS``, forget the keys last changed longest ago,
        down to well below ``resume_version`` (a watch resumed from it sends
        nothing at or below it again, so those are never repeats); past twice
        as many, whatever their age (memory is bounded even when the resume
        version is stuck, a replica down)."""
        floor = resume_version - RESUME_MARGIN
        by_age = self._by_age
        while by_age and (
            len(self._newest) > 2 * REMEMBERED_KEYS
            or (len(self._newest) > REMEMBERED_KEYS and by_age[0][0][0] < floor)
        ):
            version, key = heapq.heappop(by_age)
            if self._newest.get(key) == version:
                del self._newest[key]
                self._forgotten = max(self._forgotten, version)

    def __len__(self) -> int:
        return len(self._newest)
