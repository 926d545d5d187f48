"""Consistency levels: how many replicas a request waits for."""

from __future__ import annotations

import enum

from ringkv.core.errors import InvalidArgument


class Consistency(enum.IntEnum):
    """Values match the wire enum ``kv.Consistency``."""

    DEFAULT = 0
    ONE = 1
    QUORUM = 2
    ALL = 3
    LINEARIZABLE = 4

    @classmethod
    def from_wire(cls, value: int) -> Consistency:
        """The level a request names, or InvalidArgument for an unknown number."""
        try:
            return cls(value)
        except ValueError:
            raise InvalidArgument(
                f"unknown consistency level {value}", reason="INVALID_CONSISTENCY"
            ) from None

    @classmethod
    def from_name(cls, name: str) -> Consistency:
        """The level for a name such as ``quorum`` (case-insensitive)."""
        try:
            return cls[name.upper()]
        except KeyError:
            choices = ", ".join(level.name.lower() for level in cls if level is not cls.DEFAULT)
            raise InvalidArgument(
                f"unknown consistency level {name!r} (choose from {choices})",
                reason="INVALID_CONSISTENCY",
            ) from None


LEVEL_NAMES = tuple(level.name.lower() for level in Consistency if level is not Consistency.DEFAULT)
"""The names a person chooses a level by: one, quorum, all, linearizable."""
