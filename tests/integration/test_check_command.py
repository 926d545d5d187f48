"""``ringkv check`` against real clusters started with the seed's command lines (3 nodes, RF 2).

At LINEARIZABLE the register history of a healthy cluster is linearizable;
at ONE, with one replica SIGSTOPped for part of the run, the same workload
reads stale values and the command says so with exit status 1 and a
timeline of the shortest failing window.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

from ringkv.client.admin import node_stats
from ringkv.core.history import OpKind, Outcome, load_lines
from tests.support.nodes import ClusterFactory, child_env, wait_for

RINGKV = [sys.executable, "-m", "ringkv"]
EXIT_VIOLATION = 1
EXIT_USAGE = 2
REGISTER_LINEARIZABLE = (
    "--workload", "register", "--level", "linearizable", "--duration", "3", "--seed", "7",
)  # fmt: skip
REGISTER_AT_ONE = (
    "--workload", "register", "--level", "one", "--keys", "8",
    "--processes", "6", "--duration", "8", "--seed", "11",
)  # fmt: skip


def check_command(endpoints: str, *args: str) -> list[str]:
    return [*RINGKV, "check", "--endpoints", endpoints, *args]


def run_check(endpoints: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``ringkv check`` to completion, output captured."""
    return subprocess.run(
        check_command(endpoints, *args),
        capture_output=True,
        text=True,
        timeout=120,
        env=child_env(),
        check=False,
    )


def test_a_healthy_cluster_is_linearizable_and_the_history_is_kept(
    cluster: ClusterFactory, tmp_path: Path
) -> None:
    nodes = cluster(3, replicas=2)
    endpoints = ",".join(node.address for node in nodes)
    history = tmp_path / "history.jsonl"
    done = run_check(endpoints, *REGISTER_LINEARIZABLE, "--history", str(history))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "register @linearizable" in done.stdout
    assert re.search(r"linearizable\s+│\s+holds\s+│\s+3 keys", done.stdout), done.stdout
    assert "violated" not in done.stdout
    ops = load_lines(history.read_text().splitlines())
    assert {op.kind for op in ops} == {OpKind.READ, OpKind.WRITE}
    assert sum(op.outcome is Outcome.OK for op in ops) > 20
    keys = {op.key for op in ops}
    assert len(keys) == 3
    assert all(re.fullmatch(r"ringkv-check/00000007-[0-9a-f]{8}/register/[012]", k) for k in keys)


def test_reads_at_one_with_a_paused_replica_are_reported_as_a_violation(
    cluster: ClusterFactory,
) -> None:
    nodes = cluster(3, replicas=2)
    endpoints = ",".join(node.address for node in nodes)
    paused = nodes[2]
    others = nodes[:2]
    check = subprocess.Popen(
        check_command(endpoints, *REGISTER_AT_ONE),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    try:
        wait_for(
            lambda: sum(node_stats(n.address).records for n in others) >= 4,
            timeout=60,
            what="the workload to start writing",
        )
        paused.signal(signal.SIGSTOP)
        try:
            # Part of the run: until a write has missed node3 (its hint waits).
            wait_for(
                lambda: sum(node_stats(n.address).hints_pending for n in others) > 0,
                timeout=60,
                what="a write to miss the paused node3",
            )
        finally:
            paused.signal(signal.SIGCONT)
        stdout, stderr = check.communicate(timeout=180)
    finally:
        check.kill()
    assert check.returncode == EXIT_VIOLATION, stdout + stderr
    assert "violated" in stdout
    assert "shortest failing window (linearizable" in stdout
    assert "@one" in stdout


def test_bad_options_are_usage_errors() -> None:
    for args in (["--duration", "0"], ["--processes", "0"], ["--workload", "bank"]):
        done = run_check("127.0.0.1:1", *args)
        assert done.returncode == EXIT_USAGE, (args, done.stderr)
        assert "ringkv check: error:" in done.stderr


def test_an_unreachable_cluster_exits_3() -> None:
    done = run_check("127.0.0.1:1", "--duration", "1", "--op-timeout", "0.5")
    assert done.returncode == 3, done.stdout + done.stderr
    assert done.stderr.startswith("ringkv check: error: 127.0.0.1:1: UNAVAILABLE")
