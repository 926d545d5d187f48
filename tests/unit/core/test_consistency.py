"""Tests for ringkv.core.consistency."""

from __future__ import annotations

import pytest

from ringkv.core.consistency import Consistency
from ringkv.core.errors import InvalidArgument


def test_wire_values_are_stable() -> None:
    # These numbers are the wire enum kv.Consistency.
    assert {level.name: int(level) for level in Consistency} == {
        "DEFAULT": 0,
        "ONE": 1,
        "QUORUM": 2,
        "ALL": 3,
        "LINEARIZABLE": 4,
    }


@pytest.mark.parametrize("level", list(Consistency))
def test_from_wire_round_trips(level: Consistency) -> None:
    assert Consistency.from_wire(int(level)) is level


@pytest.mark.parametrize("value", [-1, 5, 99, 1 << 31])
def test_from_wire_unknown_is_invalid_argument(value: int) -> None:
    with pytest.raises(InvalidArgument) as info:
        Consistency.from_wire(value)
    assert info.value.reason == "INVALID_CONSISTENCY"
    assert str(value) in info.value.message
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__


@pytest.mark.parametrize(
    ("name", "level"),
    [
        ("one", Consistency.ONE),
        ("ONE", Consistency.ONE),
        ("quorum", Consistency.QUORUM),
        ("Quorum", Consistency.QUORUM),
        ("QUORUM", Consistency.QUORUM),
        ("all", Consistency.ALL),
        ("linearizable", Consistency.LINEARIZABLE),
        ("LiNeArIzAbLe", Consistency.LINEARIZABLE),
        ("default", Consistency.DEFAULT),
    ],
)
def test_from_name_is_case_insensitive(name: str, level: Consistency) -> None:
    assert Consistency.from_name(name) is level


@pytest.mark.parametrize("name", ["", "quorom", "two", " quorum", "1", "strong"])
def test_from_name_unknown_is_invalid_argument(name: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        Consistency.from_name(name)
    assert info.value.reason == "INVALID_CONSISTENCY"
    # The message offers the choices a user can type, without DEFAULT.
    assert "one, quorum, all, linearizable" in info.value.message
    assert "default" not in info.value.message
