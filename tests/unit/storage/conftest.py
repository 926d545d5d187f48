"""Fixtures for the storage engine tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ringkv.storage.engine import Engine

from .helpers import ENGINE_KINDS, make_engine


@pytest.fixture(params=ENGINE_KINDS)
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """Each engine in turn, empty; LMDB lives in ``tmp_path``."""
    kind: str = request.param
    opened = make_engine(kind, tmp_path / "lmdb")
    yield opened
    opened.close()
