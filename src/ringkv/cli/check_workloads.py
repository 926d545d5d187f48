"""Workloads that record histories: the client side of ``ringkv check`` and the fault suite.

Each workload runs ``processes`` client threads against a live cluster for a
bounded time and a bounded number of calls. Every call is recorded as a
``HistoryOp`` (``ringkv.core.history``) with its invocation and completion
times, its outcome and the version it saw or was given; the checkers in
``ringkv.core.checkers`` judge the history afterwards.

The workloads (keys under a per-run prefix, so runs never meet):

``register``
    Reads and writes of unique values on a few keys, at one level: the
    linearizability checker's input.
``writes``
    Mostly writes of unique values over many keys, some reads: the input of
    the lost-write and version-order checkers.
``counter``
    Read, then a conditional write of the count plus one, expecting the
    version read: the lost-CAS checker's input.
``multiset``
    MultiSet batches of unique values over many keys; each key of a batch is
    recorded as one write.

Process ``i`` talks to endpoint ``i`` first (and fails over to the others),
so every node coordinates some calls.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from ringkv.client.channels import PLAINTEXT, Security
from ringkv.client.sync import Client
from ringkv.core.checkers import counter_value
from ringkv.core.errors import (
    InvalidArgument,
    PreconditionFailed,
    RingkvError,
    Unauthenticated,
)
from ringkv.core.history import (
    ABSENT_VERSION,
    FinalRead,
    HistoryOp,
    OpKind,
    Outcome,
)

WorkloadName = Literal["register", "counter", "writes", "multiset"]
WORKLOADS: tuple[WorkloadName, ...] = ("register", "counter", "writes", "multiset")
MULTISET_BATCH = 4
READ_SHARE = {"register": 0.5, "writes": 0.2}
"""The share of reads among the calls of the workloads that read and write."""

# Errors after which a write cannot have happened: the request was refused
# before any replica stored it.
_DEFINITE_FAILURES = (PreconditionFailed, InvalidArgument, Unauthenticated)


@dataclass(frozen=True, slots=True)
class WorkloadSpec:
    """One workload of a run."""

    workload: WorkloadName
    level: str
    keys: int
    processes: int
    prefix: str
    """Key prefix; the workload's keys are ``prefix + workload + "/" + i``."""

    def key(self, i: int) -> str:
        return f"{self.prefix}{self.workload}/{i}"

    def all_keys(self) -> list[str]:
        return [self.key(i) for i in range(self.keys)]


class HistoryRecorder:
    """Thread-safe collector of a run's operations, timed from one origin."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.origin = clock()
        self._lock = threading.Lock()
        self._next = 0
        self._ops: list[HistoryOp] = []

    def now(self) -> float:
        """Seconds since the recorder was made."""
        return self._clock() - self.origin

    def begin(self) -> tuple[int, float]:
        """A fresh operation index and its invocation time."""
        with self._lock:
            index = self._next
            self._next += 1
        return index, self.now()

    def add(self, op: HistoryOp) -> None:
        with self._lock:
            self._ops.append(op)

    def count(self) -> int:
        """How many operations have completed."""
        with self._lock:
            return len(self._ops)

    def history(self) -> list[HistoryOp]:
        """The operations so far, in invocation order."""
        with self._lock:
            return sorted(self._ops, key=lambda op: op.index)


def write_outcome(error: BaseException) -> Outcome:
    """FAILED if the write cannot have taken effect, UNKNOWN otherwise."""
    return Outcome.FAILED if isinstance(error, _DEFINITE_FAILURES) else Outcome.UNKNOWN


def error_reason(error: BaseException) -> str:
    return error.reason if isinstance(error, RingkvError) else type(error).__name__


class _Process:
    """One client thread of a workload: one call at a time, as Jepsen's processes."""

    def __init__(
        self,
        name: str,
        spec: WorkloadSpec,
        client: Client,
        recorder: HistoryRecorder,
        rng: random.Random,
    ) -> None:
        self.name = name
        self.spec = spec
        self.client = client
        self.recorder = recorder
        self.rng = rng
        self.seq = 0

    def unique(self) -> str:
        self.seq += 1
        return f"{self.name}-{self.seq}"

    def step(self) -> None:
        workload = self.spec.workload
        if workload in READ_SHARE:
            key = self.spec.key(self.rng.randrange(self.spec.keys))
            if self.rng.random() < READ_SHARE[workload]:
                self.read(key)
            else:
                self.write(key, self.unique())
        elif workload == "counter":
            self.increment(self.spec.key(self.rng.randrange(self.spec.keys)))
        else:
            count = min(MULTISET_BATCH, self.spec.keys)
            keys = self.rng.sample(self.spec.all_keys(), count)
            self.write_many({key: self.unique() for key in keys})

    def read(self, key: str) -> HistoryOp:
        index, invoke = self.recorder.begin()
        try:
            entry = self.client.get(key, consistency=self.spec.level)
        except Exception as error:  # every failure is recorded, none ends the run
            op = self._op(
                index, OpKind.READ, key, None, invoke=invoke, outcome=Outcome.FAILED, error=error
            )
        else:
            value = None if entry is None else entry.value.decode(errors="replace")
            version = None if entry is None else entry.version
            op = self._op(
                index, OpKind.READ, key, value, invoke=invoke, outcome=Outcome.OK, version=version
            )
        self.recorder.add(op)
        return op

    def write(self, key: str, value: str, expected: int | None = None) -> HistoryOp:
        kind = OpKind.WRITE if expected is None else OpKind.CAS
        index, invoke = self.recorder.begin()
        try:
            if expected is None:
                version = self.client.set(key, value, consistency=self.spec.level)
            elif expected == ABSENT_VERSION:
                version = self.client.set(key, value, if_absent=True, consistency=self.spec.level)
            else:
                version = self.client.set(
                    key, value, if_version=expected, consistency=self.spec.level
                )
        except Exception as error:  # every failure is recorded, none ends the run
            op = self._op(
                index,
                kind,
                key,
                value,
                invoke=invoke,
                outcome=write_outcome(error),
                expected=expected,
                error=error,
            )
        else:
            op = self._op(
                index,
                kind,
                key,
                value,
                invoke=invoke,
                outcome=Outcome.OK,
                version=version,
                expected=expected,
            )
        self.recorder.add(op)
        return op

    def increment(self, key: str) -> None:
        read = self.read(key)
        if not read.ok:
            return
        count = counter_value(read.value)
        if count < 0:
            return  # not a counter value: nothing to increment
        expected = ABSENT_VERSION if read.version is None else read.version
        self.write(key, f"{count + 1}:{self.unique()}", expected=expected)

    def write_many(self, items: dict[str, str]) -> None:
        index, invoke = self.recorder.begin()
        indices = [index] + [self.recorder.begin()[0] for _ in range(len(items) - 1)]
        try:
            versions = self.client.set_many(items, consistency=self.spec.level)
        except Exception as error:  # every failure is recorded, none ends the run
            outcome = write_outcome(error)
            for i, (key, value) in zip(indices, items.items(), strict=True):
                self.recorder.add(
                    self._op(
                        i, OpKind.WRITE, key, value, invoke=invoke, outcome=outcome, error=error
                    )
                )
            return
        for i, (key, value) in zip(indices, items.items(), strict=True):
            self.recorder.add(
                self._op(
                    i,
                    OpKind.WRITE,
                    key,
                    value,
                    invoke=invoke,
                    outcome=Outcome.OK,
                    version=versions[key],
                )
            )

    def _op(
        self,
        index: int,
        kind: OpKind,
        key: str,
        value: str | None,
        *,
        invoke: float,
        outcome: Outcome,
        version: int | None = None,
        expected: int | None = None,
        error: BaseException | None = None,
    ) -> HistoryOp:
        return HistoryOp(
            index=index,
            process=self.name,
            kind=kind,
            key=key,
            value=value,
            level=self.spec.level,
            invoke=invoke,
            complete=max(invoke, self.recorder.now()),
            outcome=outcome,
            version=version,
            expected=expected,
            error="" if error is None else error_reason(error),
        )


def open_client(
    endpoints: Sequence[str], first: int, *, timeout: float, security: Security = PLAINTEXT
) -> Client:
    """A client that tries ``endpoints[first]`` first and fails over to the rest."""
    order = [*endpoints[first:], *endpoints[:first]]
    return Client(
        order,
        timeout=timeout,
        token_aware=False,
        tls_ca=security.tls_ca,
        tls_cert=security.tls_cert,
        tls_key=security.tls_key,
        token=security.token,
    )


@dataclass(frozen=True, slots=True)
class RunLimits:
    """Bounds of one run: it stops at whichever comes first."""

    duration: float
    max_calls_per_process: int = 100_000
    op_timeout: float = 3.0


def run_workloads(
    endpoints: Sequence[str],
    specs: Sequence[WorkloadSpec],
    limits: RunLimits,
    *,
    recorder: HistoryRecorder | None = None,
    seed: int = 0,
    security: Security = PLAINTEXT,
    stop: threading.Event | None = None,
) -> list[HistoryOp]:
    """Run every workload's processes until the duration, the call bound or ``stop``."""
    recorder = recorder or HistoryRecorder()
    stop = stop or threading.Event()
    deadline = recorder.now() + limits.duration
    threads: list[threading.Thread] = []
    clients: list[Client] = []
    number = 0
    for spec in specs:
        for _ in range(spec.processes):
            client = open_client(
                endpoints, number % len(endpoints), timeout=limits.op_timeout, security=security
            )
            clients.append(client)
            name = f"{spec.workload[0]}{number}"
            process = _Process(name, spec, client, recorder, random.Random(f"{seed}/{number}"))
            number += 1

            def loop(process: _Process = process) -> None:
                for _ in range(limits.max_calls_per_process):
                    if stop.is_set() or recorder.now() >= deadline:
                        return
                    process.step()

            threads.append(threading.Thread(target=loop, name=name, daemon=True))
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            # A call lasts at most op_timeout per attempt, with a few retries.
            thread.join(timeout=limits.duration + 10 * limits.op_timeout + 30)
    finally:
        stop.set()
        for client in clients:
            client.close()
    return recorder.history()


def final_reads(
    endpoints: Sequence[str],
    keys: Sequence[str],
    *,
    level: str = "all",
    timeout: float = 5.0,
    attempts: int = 5,
    security: Security = PLAINTEXT,
) -> dict[str, FinalRead]:
    """Each key's value at ``level``; keys that could not be read are left out."""
    final: dict[str, FinalRead] = {}
    with open_client(endpoints, 0, timeout=timeout, security=security) as client:
        for key in keys:
            for attempt in range(attempts):
                try:
                    entry = client.get(key, consistency=level)
                except RingkvError:
                    time.sleep(0.2 * (attempt + 1))
                    continue
                if entry is None:
                    final[key] = FinalRead(key, None)
                else:
                    value = entry.value.decode(errors="replace")
                    final[key] = FinalRead(key, value, entry.version)
                break
    return final
