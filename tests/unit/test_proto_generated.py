"""The committed generated code matches what ``scripts/gen-proto`` makes from the
.proto files (kv, replica, admin, forward)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GEN_PROTO = ROOT / "scripts" / "gen-proto"
COMMITTED = ROOT / "src" / "ringkv" / "api"
PROTOS = ("kv", "replica", "admin", "forward")
GENERATED_FILES = tuple(
    f"{proto}{suffix}"
    for proto in PROTOS
    for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")
)


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The api dir that ``scripts/gen-proto <tmpdir>`` writes."""
    out = tmp_path_factory.mktemp("gen-proto")
    result = subprocess.run(
        [str(GEN_PROTO), str(out)],
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"scripts/gen-proto failed:\n{result.stdout}{result.stderr}"
    return out / "ringkv" / "api"


@pytest.mark.parametrize("name", GENERATED_FILES)
def test_committed_code_is_up_to_date(generated: Path, name: str) -> None:
    fresh = generated / name
    assert fresh.is_file(), f"scripts/gen-proto did not write {name}"
    up_to_date = (COMMITTED / name).read_bytes() == fresh.read_bytes()  # no byte diff dump
    assert up_to_date, (
        f"src/ringkv/api/{name} is out of date with its .proto: run scripts/gen-proto"
    )


def test_nothing_else_is_generated(generated: Path) -> None:
    assert sorted(path.name for path in generated.iterdir()) == sorted(GENERATED_FILES)
