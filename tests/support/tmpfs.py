"""Small tmpfs mounts: a disk that fills up, for tests of full-disk handling."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import pytest


def cannot_run(reason: str) -> None:
    """Skip, except in CI, which runs as root and must run these tests."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI must run this test")
    pytest.skip(reason)


@contextmanager
def small_tmpfs(mountpoint: Path, size: str = "2m") -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``mountpoint``, always unmounted afterwards."""
    if os.geteuid() != 0:
        cannot_run(f"needs root to mount a {size} tmpfs")
    mount, umount = shutil.which("mount"), shutil.which("umount")
    if mount is None or umount is None:
        cannot_run("needs the mount and umount commands")
    assert mount is not None
    assert umount is not None
    mountpoint.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        [mount, "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mountpoint)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        cannot_run(f"cannot mount a tmpfs: {mounted.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        unmounted = subprocess.run(
            [umount, str(mountpoint)], capture_output=True, text=True, check=False
        )
        if unmounted.returncode != 0:
            # Detach it anyway so it does not outlive the test, then report.
            subprocess.run([umount, "--lazy", str(mountpoint)], check=False)
            pytest.fail(f"umount {mountpoint} failed: {unmounted.stderr.strip()}")


def fill(ballast: Path) -> None:
    """Write zeros to ``ballast`` until the file system is full."""
    with ballast.open("wb") as file, pytest.raises(OSError, match="No space left") as full:
        _write_zeros_forever(file)
    assert full.value.errno == errno.ENOSPC


def _write_zeros_forever(file: BinaryIO) -> None:
    while True:
        file.write(b"\0" * (1 << 16))
        file.flush()
