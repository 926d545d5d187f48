"""The member table and the election vote, kept in the data dir across restarts.

A restarted node must resume its term and the leader it accepted for it (or
it could accept a second leader for that term), and it rejoins under its id
from the member table it last adopted. One small JSON file, replaced
atomically (write, fsync, rename, fsync the directory) on every change.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ringkv.core.membership import Member, Membership, MemberStatus
from ringkv.server.cluster.durable_file import replace_durably
from ringkv.storage.files import MEMBERSHIP_FILE

FILE_NAME = MEMBERSHIP_FILE


@dataclass(frozen=True, slots=True)
class SavedState:
    membership: Membership
    term: int
    term_leader: str | None
    decommissioned: bool = False
    """The node left through ``ringkv cluster remove``: it must not rejoin by itself."""


class MembershipFile:
    """``cluster.json`` in a data dir; ``None`` path keeps nothing (memory engine)."""

    def __init__(self, data_dir: Path | None) -> None:
        self._path = None if data_dir is None else data_dir / FILE_NAME
        self._on_disk: SavedState | None = None
        """What the file holds, as last loaded or saved."""

    def load(self) -> SavedState | None:
        if self._path is None or not self._path.exists():
            return None
        document = json.loads(self._path.read_text())
        membership = Membership(
            document["epoch"],
            tuple(
                Member(m["node_id"], m["address"], MemberStatus(m["status"]))
                for m in document["members"]
            ),
            document["membership_term"],
            tuple(document.get("removed", ())),
        )
        self._on_disk = SavedState(
            membership,
            document["term"],
            document["term_leader"],
            document.get("decommissioned", False),
        )
        return self._on_disk

    def save(self, state: SavedState) -> None:
        """Replace the file with ``state``; nothing is written when it holds it already
        (a node that restarts on a full disk resumes what it saved without a write)."""
        if self._path is None or state == self._on_disk:
            return
        document = {
            "epoch": state.membership.epoch,
            "membership_term": state.membership.term,
            "members": [
                {"node_id": m.node_id, "address": m.address, "status": m.status.value}
                for m in state.membership.members
            ],
            "removed": list(state.membership.removed),
            "term": state.term,
            "term_leader": state.term_leader,
            "decommissioned": state.decommissioned,
        }
        replace_durably(self._path, json.dumps(document, indent=1))
        self._on_disk = state
