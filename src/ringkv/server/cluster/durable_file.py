"""Replacing a small file so that a crash leaves the old or the new one, whole."""

from __future__ import annotations

import os
from pathlib import Path

from ringkv.storage.files import create_private_anew, make_private_dir, sync_dir


def replace_durably(path: Path, text: str) -> None:
    """Write ``text`` to ``path``: a new private temporary file (mode 0600,
    never one planted there), fsync, rename, fsync the directory."""
    make_private_dir(path.parent)
    temporary = path.with_suffix(".tmp")
    with os.fdopen(create_private_anew(temporary), "w") as file:
        file.write(text)
        file.flush()
        os.fsync(file.fileno())
    temporary.replace(path)
    sync_dir(path.parent)
