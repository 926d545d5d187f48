"""``ringkv bench`` run as a process against a real node."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from typing import Any

import pytest

import ringkv
from tests.support.nodes import NodeFactory, child_env

LATENCY_FIELDS = ["p50", "p95", "p99", "p99.9", "mean", "max"]


def bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ringkv", "bench", *args],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=60,
        check=False,
    )


def assert_clean(stats: dict[str, Any]) -> None:
    """Some operations succeeded, none failed, and the percentiles are in order."""
    assert stats["ops"] > 0
    assert stats["ops_per_s"] > 0
    assert (stats["errors"], stats["error_count"]) == ({}, 0)
    latency = stats["latency_ms"]
    assert list(latency) == LATENCY_FIELDS
    assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"] <= latency["p99.9"]
    assert latency["p99.9"] <= latency["max"]


def test_bench_json_with_baseline(nodes: NodeFactory) -> None:
    node = nodes("node1")
    result = bench(
        "--endpoints", node.address, "--workload", "A,C", "--records", "200",
        "--duration", "1", "--warmup", "0", "--concurrency", "8", "--json", "--baseline",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)

    assert set(document) == {"config", "event_loop", "load", "baseline", "workloads", "cleanup"}
    assert document["cleanup"] is None
    assert document["config"]["workloads"] == ["A", "C"]
    assert document["config"]["concurrency"] == 8

    load = document["load"]
    assert load["total"]["ops"] == 200
    assert_clean(load["total"])

    baseline = document["baseline"]
    assert (baseline["workload"], baseline["target"]) == ("no-op", "noop")
    assert list(baseline["operations"]) == ["ping"]
    assert_clean(baseline["total"])

    workloads = document["workloads"]
    assert [workload["workload"] for workload in workloads] == ["A", "C"]
    assert [list(workload["operations"]) for workload in workloads] == [
        ["read", "update"],
        ["read"],
    ]
    for workload in workloads:
        assert workload["target"] == "kv"
        assert_clean(workload["total"])
        for stats in workload["operations"].values():
            assert_clean(stats)
        # Every read is of a loaded record.
        assert workload["operations"]["read"]["not_found"] == 0
        ratio = workload["total"]["ops_per_s"] / baseline["total"]["ops_per_s"]
        assert workload["x_noop"] == pytest.approx(ratio, rel=1e-3)


def test_bench_table_for_inserts_and_read_modify_write(nodes: NodeFactory) -> None:
    node = nodes("node1")
    result = bench(
        "--endpoints", node.address, "--workload", "D", "--workload", "f",
        "--records", "100", "--duration", "0.5", "--warmup", "0", "--concurrency", "4",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = {
        tuple(cell.strip() for cell in line.strip("│").split("│")[:2])
        for line in result.stdout.splitlines()
        if line.startswith("│")
    }
    assert {("D", "read"), ("", "insert"), ("F", "read"), ("", "rmw"), ("", "total")} <= rows
    assert "x no-op" not in result.stdout


def test_bench_cleanup_deletes_every_record_it_wrote(nodes: NodeFactory) -> None:
    node = nodes("node1")
    result = bench(
        "--endpoints", node.address, "--workload", "D", "--records", "50",
        "--duration", "0.5", "--warmup", "0", "--concurrency", "4", "--json", "--cleanup",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    inserted = document["workloads"][0]["operations"]["insert"]["ops"]
    assert inserted > 0  # D wrote records past the 50 loaded
    deleted = document["cleanup"]["total"]
    assert deleted["ops"] == 50 + inserted
    assert deleted["error_count"] == 0
    with ringkv.Client(node.address) as client:
        left = client.get_many([f"user{i}" for i in range(deleted["ops"] + 10)])
        assert not any(left.values()), sorted(k for k, v in left.items() if v)
        # A run that only read wrote nothing, and deletes nothing.
        client.set("user0", b"not the bench's")
        result = bench(
            "--endpoints", node.address, "--workload", "C", "--records", "50", "--no-load",
            "--duration", "0.3", "--warmup", "0", "--json", "--cleanup",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["cleanup"]["total"]["ops"] == 0
        entry = client.get("user0")
        assert entry is not None and entry.value == b"not the bench's"


def test_bench_fails_in_one_line_when_no_node_answers() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{probe.getsockname()[1]}"
    result = bench("--endpoints", address, "--duration", "1")
    assert result.returncode == 3
    assert result.stdout == ""
    assert result.stderr.startswith(f"ringkv bench: error: {address}: UNAVAILABLE")
    assert result.stderr.count("\n") == 1


def test_bench_rejects_a_bad_workload_as_usage() -> None:
    result = bench("--workload", "A,E")
    assert result.returncode == 2
    assert result.stderr.startswith("ringkv bench: error: argument --workload: unknown workload")
