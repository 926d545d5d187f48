"""A bounded smoke of the fault matrix (``scripts/chaos`` runs the long one).

Each fixed seed runs its nemesis schedule for 15 s against five real nodes,
each in its own network namespace, while the mixed workloads record their
history; then the cluster heals, every node runs one repair and the
checkers judge the history. Asserted here is every promise the matrix
found kept in its last runs (docs/correctness.md, Results): no acknowledged
write lost, no stale QUORUM read or write ordered backwards, LINEARIZABLE
keys linearizable, no lost compare-and-set update, replicas converged, no
node crashed, the cluster settled. Dual-leader intervals are printed, not
asserted: the bully take-over lets a returning higher node lead before the
one it replaces has stepped down (issue 12).

Needs root (namespaces, a tmpfs); CI runs as root and must run it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ringkv.core.checkers import Status
from ringkv.core.history import OpKind
from tests.chaos.matrix import schedule_line
from tests.support.chaos import run_schedule
from tests.support.nemesis import FAULT_KINDS
from tests.support.netns import require_netns

pytestmark = pytest.mark.needs_root

SMOKE_SEEDS = (1, 6)
SMOKE_DURATION_S = 15.0
SMOKE_FAULTS = tuple(kind for kind in FAULT_KINDS if kind != "membership")
"""A join and a decommission do not settle within a 15 s schedule on a loaded
CI box; the matrix (scripts/chaos) runs them."""


def test_seeded_fault_schedules_keep_the_promises(tmp_path: Path) -> None:
    require_netns()
    # One after the other: two labs of five nodes at once would starve a 2-core box.
    for seed in SMOKE_SEEDS:
        check_schedule(seed, tmp_path / f"seed-{seed}")


def check_schedule(seed: int, workdir: Path) -> None:
    workdir.mkdir()
    result = run_schedule(seed, SMOKE_DURATION_S, workdir, kinds=SMOKE_FAULTS)
    print(schedule_line(result))
    print("\n".join(result.events))
    for violation in result.analysis.violations[:10]:
        print(f"{violation.checker} {violation.key}: {violation.message}")

    assert result.windows >= 1, result.skipped
    assert {op.process[0] for op in result.history} == {"r", "c", "w", "m"}
    assert {op.kind for op in result.history} == {OpKind.READ, OpKind.WRITE, OpKind.CAS}
    assert not result.crashes
    assert not result.problems
    decided = {report.name: report.status for report in result.analysis.reports}
    assert decided["lost-writes"] is Status.HOLDS
    assert decided["convergence"] is Status.HOLDS
    assert decided["version-order"] is Status.HOLDS
    assert decided["lost-cas"] is Status.HOLDS
    # UNKNOWN when the search runs out of steps: undecided, not a violation.
    assert decided["linearizable"] is not Status.VIOLATED
