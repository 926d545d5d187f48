"""Files a node or a backup writes: readable by their owner only, created
new so that nothing planted at their name (a symlink to elsewhere, another
file) is followed or overwritten, and the data dir's owner."""

from __future__ import annotations

import os
from pathlib import Path

from ringkv.core.errors import PreconditionFailed

PRIVATE_FILE_MODE = 0o600
PRIVATE_DIR_MODE = 0o700
OWNER_FILE = "node.id"
"""The id of the node a data dir belongs to, written when it first starts there."""
MEMBERSHIP_FILE = "cluster.json"
"""The node's election vote and member table (``server/cluster/membership_file.py``)."""
CLOCK_MARK_FILE = "clock.mark"
"""A bound above every timestamp the node issued (``server/cluster/clock_mark.py``)."""
IDENTITY_FILES = (MEMBERSHIP_FILE, CLOCK_MARK_FILE)
"""What a data dir holds of its node beyond the data: not another node's to keep."""


def create_private(path: Path) -> int:
    """A descriptor open for writing on a new file at ``path``, mode 0600.

    FileExistsError if anything is at ``path``, a symlink included: the file
    is never one somebody else placed there.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    return os.open(path, flags, PRIVATE_FILE_MODE)


def create_private_anew(path: Path) -> int:
    """``create_private`` after removing what is at ``path`` (a temporary file
    a crash left behind; a symlink is removed, not followed)."""
    path.unlink(missing_ok=True)
    return create_private(path)


def publish(temporary: Path, path: Path) -> None:
    """Give a finished file its name without replacing anything there
    (FileExistsError then, ``temporary`` kept); ``temporary`` is gone after."""
    os.link(temporary, path, follow_symlinks=False)
    temporary.unlink()


def make_private_dir(path: Path) -> None:
    """Create a data dir (and its parents) if absent, the dir itself mode 0700."""
    path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR_MODE)


def owner(data_dir: Path) -> str | None:
    """The node the data dir belongs to; None if no node has claimed it."""
    try:
        return (data_dir / OWNER_FILE).read_text().strip() or None
    except FileNotFoundError:
        return None


def claim(data_dir: Path, node_id: str) -> None:
    """Record that ``data_dir`` belongs to ``node_id``, or refuse if it belongs
    to another node (WRONG_NODE): a node started with the wrong -id or
    --data-dir would otherwise serve another node's replicas as its own."""
    held = owner(data_dir)
    if held == node_id:
        return
    if held is not None:
        raise PreconditionFailed(
            f"data dir {data_dir} belongs to {held}, not {node_id}: start {held} on it, "
            f"or give {node_id} a data dir of its own",
            reason="WRONG_NODE",
        )
    write_owner(data_dir, node_id)


def write_owner(data_dir: Path, node_id: str) -> None:
    """Make ``node_id`` the data dir's owner (durably)."""
    temporary = data_dir / f".{OWNER_FILE}.tmp"
    fd = create_private_anew(temporary)
    with os.fdopen(fd, "w") as file:
        file.write(node_id + "\n")
        file.flush()
        os.fsync(file.fileno())
    temporary.replace(data_dir / OWNER_FILE)
    sync_dir(data_dir)


def sync_dir(path: Path) -> None:
    """fsync a directory, so that the names in it survive a crash."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
