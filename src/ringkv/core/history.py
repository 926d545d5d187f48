"""Histories of client operations, as the fault suite and ``ringkv check`` record them.

A history is what clients saw, one ``HistoryOp`` per call: when it was
invoked, when the client stopped waiting, what came back and whether the
call took effect. Three outcomes, as in Jepsen:

* ``OK``: the call returned successfully; its result and version are known.
* ``FAILED``: the call definitely did not take effect (say, a conditional
  write that answered VERSION_MISMATCH, or a read that failed).
* ``UNKNOWN``: the client cannot tell (a timeout, a node that went away
  mid-call). A write with an unknown outcome may or may not have happened,
  at any time after it was invoked; the checkers treat it so.

Times are seconds on one monotonic clock, measured from the start of the
run. A history is written as JSON lines, one operation per line, so a run's
history can be kept, read back and checked again.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any


class Outcome(enum.Enum):
    """Whether a call took effect, as far as its client knows."""

    OK = "ok"
    FAILED = "fail"
    UNKNOWN = "unknown"


class OpKind(enum.Enum):
    """What a recorded call did."""

    READ = "read"
    """A Get: ``value`` and ``version`` are what it returned (None: absent)."""
    WRITE = "write"
    """An unconditional Set (or one key of a MultiSet) of a unique value."""
    CAS = "cas"
    """A Set with a version precondition: ``expected`` is the version it
    required (-1: the key must be absent), ``value`` the value it wrote."""


ABSENT_VERSION = -1
"""The ``expected`` version of a conditional write that needs the key absent."""


@dataclass(frozen=True, slots=True)
class HistoryOp:
    """One client call of a recorded history."""

    index: int
    """Position in invocation order; unique within a history."""
    process: str
    """The client (worker) that made the call; one call at a time per process."""
    kind: OpKind
    key: str
    value: str | None
    """Written value (WRITE, CAS) or value read (READ; None when absent)."""
    level: str
    """The consistency level asked for: one, quorum, all or linearizable."""
    invoke: float
    """When the call was made."""
    complete: float
    """When the client had its answer or gave up waiting."""
    outcome: Outcome
    version: int | None = None
    """For an OK write the version it was given; for an OK read the version read."""
    expected: int | None = None
    """For CAS, the version the write required."""
    error: str = ""
    """For a call that did not succeed, the error's reason (VERSION_MISMATCH...)."""

    def __post_init__(self) -> None:
        if self.complete < self.invoke:
            raise ValueError(f"op {self.index} completes ({self.complete}) before it is invoked")
        if self.kind is OpKind.CAS and self.expected is None:
            raise ValueError(f"op {self.index}: a conditional write needs an expected version")

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.OK

    @property
    def is_write(self) -> bool:
        return self.kind is not OpKind.READ

    def describe(self, origin: float = 0.0) -> str:
        """One line of a timeline: times relative to ``origin``."""
        start = f"{self.invoke - origin:9.3f}s"
        took = f"{(self.complete - self.invoke) * 1000:7.1f} ms"
        if self.kind is OpKind.READ:
            action = f"read  {self.key} @{self.level}"
        elif self.kind is OpKind.WRITE:
            action = f"write {self.key} := {self.value} @{self.level}"
        else:
            action = f"cas   {self.key} if v={self.expected} := {self.value} @{self.level}"
        if self.outcome is Outcome.OK:
            result = f"ok v={self.version}"
            if self.kind is OpKind.READ:
                result = f"ok -> {self.value} v={self.version}"
        elif self.outcome is Outcome.FAILED:
            result = f"failed {self.error}"
        else:
            result = f"unknown {self.error}"
        return f"{start} {took}  {self.process:>6}  #{self.index:<6} {action}  => {result}"

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict; ``from_json`` reads it back."""
        doc: dict[str, Any] = {
            "index": self.index,
            "process": self.process,
            "kind": self.kind.value,
            "key": self.key,
            "value": self.value,
            "level": self.level,
            "invoke": round(self.invoke, 6),
            "complete": round(self.complete, 6),
            "outcome": self.outcome.value,
        }
        if self.version is not None:
            doc["version"] = self.version
        if self.expected is not None:
            doc["expected"] = self.expected
        if self.error:
            doc["error"] = self.error
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> HistoryOp:
        """The operation a ``to_json`` dict describes; ValueError if it is malformed."""
        try:
            return cls(
                index=int(doc["index"]),
                process=str(doc["process"]),
                kind=OpKind(doc["kind"]),
                key=str(doc["key"]),
                value=None if doc.get("value") is None else str(doc["value"]),
                level=str(doc["level"]),
                invoke=float(doc["invoke"]),
                complete=float(doc["complete"]),
                outcome=Outcome(doc["outcome"]),
                version=None if doc.get("version") is None else int(doc["version"]),
                expected=None if doc.get("expected") is None else int(doc["expected"]),
                error=str(doc.get("error", "")),
            )
        except (KeyError, TypeError) as error:
            raise ValueError(f"not a history operation: {doc!r} ({error})") from error


def dump_lines(ops: Iterable[HistoryOp]) -> Iterator[str]:
    """The history as JSON lines (no trailing newlines)."""
    for op in ops:
        yield json.dumps(op.to_json(), sort_keys=True)


def load_lines(lines: Iterable[str]) -> list[HistoryOp]:
    """A history read back from JSON lines; blank lines are skipped."""
    return [HistoryOp.from_json(json.loads(line)) for line in lines if line.strip()]


@dataclass(frozen=True, slots=True)
class FinalRead:
    """A key's value read at ALL once faults healed and replicas were repaired."""

    key: str
    value: str | None
    """None when the key is absent."""
    version: int | None = None


@dataclass(frozen=True, slots=True)
class ReplicaCopy:
    """What one replica stores for a key: its version and value, or a tombstone."""

    timestamp: int
    node_id: str
    """The version's tie-breaker: the node that stamped it."""
    value: bytes
    tombstone: bool = False


@dataclass(frozen=True, slots=True)
class FaultWindow:
    """A fault of one kind that was in force from ``start`` to ``end``."""

    kind: str
    start: float
    end: float
    detail: str = ""


@dataclass(frozen=True, slots=True)
class LeaderSample:
    """What one node said of the leadership when a watcher asked it."""

    at: float
    """When the answer arrived, on the history's clock."""
    node: str
    leader: str
    """The leader it follows ("" while it knows none); itself while it leads."""
    term: int
    sent: float | None = None
    """When the question left (None: at ``at``): the node answered at some
    instant between ``sent`` and ``at``."""
