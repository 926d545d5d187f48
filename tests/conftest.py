"""Fixtures shared by every test directory."""

from __future__ import annotations

import os
import sys
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


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Name a failed test the moment it fails: a run killed later (a CI time
    limit, Ctrl-C) prints no summary, and the failures would go unnamed."""
    # xdist workers report to the controller, which names it once.
    if report.failed and "PYTEST_XDIST_WORKER" not in os.environ:
        sys.stderr.write(f"\nFAILED {report.nodeid} ({report.when})\n")
        sys.stderr.flush()
