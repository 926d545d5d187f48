"""``bench/compare.py`` run as a process: three etcd members and three ringkv
nodes on loopback, every workload driven against both, a table, a plot and a
JSON document, and every process stopped afterwards."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.nodes import child_env

COMPARE = Path(__file__).resolve().parents[2] / "bench" / "compare.py"
WORKLOADS = ["write", "read-strong", "read-weak", "read-linearizable"]


def _processes_under(directory: Path) -> list[int]:
    """Processes whose command line names ``directory`` (data dirs live there)."""
    found = subprocess.run(
        ["pgrep", "-f", str(directory)], capture_output=True, text=True, check=False
    )
    return [int(pid) for pid in found.stdout.split()]


@pytest.mark.skipif(
    shutil.which("etcd") is None,
    reason="etcd is not installed (apt-get install etcd-server; scripts/test does as root)",
)
def test_compare_drives_both_systems_through_every_workload(tmp_path: Path) -> None:
    document_path, plot_path = tmp_path / "compare.json", tmp_path / "compare.png"
    work = tmp_path / "work"
    work.mkdir()
    command = [
        sys.executable, str(COMPARE), "--rounds", "1", "--duration", "0.5",
        "--concurrency", "4", "--json", str(document_path), "--plot", str(plot_path),
        "--workloads", ",".join(WORKLOADS),
    ]  # fmt: skip
    # The script's data dirs go under tmp_path, so its processes can be found.
    env = child_env() | {"TMPDIR": str(work)}
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True
    )
    try:
        output, _ = process.communicate(timeout=150)
    except subprocess.TimeoutExpired:
        # SIGTERM, not SIGKILL: the script stops both clusters on its way out.
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
        pytest.fail(f"bench/compare.py did not finish:\n{output}")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        leftover = _processes_under(work)
        for pid in leftover:
            os.kill(pid, signal.SIGKILL)
    assert leftover == [], "a node or member outlived the script"
    assert process.returncode == 0, output
    assert "not comparable" not in output

    document = json.loads(document_path.read_text())
    runs = {(run["system"], run["workload"]): run for run in document["runs"]}
    assert set(runs) == {(s, w) for s in ("etcd", "ringkv") for w in WORKLOADS}
    for run in runs.values():
        assert run["ops"] > 0 and run["errors"] == 0, run
        assert 0 < run["p50_ms"] <= run["p99_ms"], run
        assert run["cpu_us_per_op"] > 0, run
    for summary in document["medians"]:
        assert set(summary["medians"]) == {"etcd", "ringkv"}
        assert summary["medians"]["ringkv"]["throughput"] > 0
    assert plot_path.read_bytes().startswith(b"\x89PNG")
