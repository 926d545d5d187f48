"""Fixtures shared by every test directory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.nodes import ClusterFactory, NodeFactory


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[NodeFactory]:
    """Start real node processes; all are killed when the test ends, pass or fail."""
    factory = NodeFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.cleanup()


@pytest.fixture
def cluster(nodes: NodeFactory) -> ClusterFactory:
    """Start clusters of real node processes that name each other as peers."""
    return ClusterFactory(nodes)
