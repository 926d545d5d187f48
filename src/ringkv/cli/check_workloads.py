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

Process ``i`` talks to endpoint ``i`` first and moves to the next one after
a call that found its node unavailable, so every node coordinates some calls.
"""

from __future__ import annotations

import dataclasses
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from ringkv.client.channels import PLAINTEXT, Security
from ringkv.client.retry import RetryPolicy
from ringkv.client.sync import Client
from ringkv.core.checkers import counter_value
from ringkv.core.errors import (
    DeadlineExceeded,
    InvalidArgument,
    PreconditionFailed,
    RingkvError,
    Unauthenticated,
    Unavailable,
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
# before any replica stored it (a node that answers VERSION_MISMATCH after
# storing the write breaks this, and the checkers say so).
_DEFINITE_FAILURES = (PreconditionFailed, InvalidArgument, Unauthenticated)
# Errors after which a process tries the next node.
_MOVE_ON = (Unavailable, DeadlineExceeded)
ONE_ATTEMPT = RetryPolicy(attempts=1)


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


class CallRecorder:
    """Thread-safe collector of a run's calls, timed from one origin.

    A call is recorded when it is invoked, so one still running when the run
    ends (or whose thread died) is in the history as UNKNOWN: its write may
    yet land.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.origin = clock()
        self._lock = threading.Lock()
        self._ops: list[HistoryOp] = []
        self._completed = 0
        self.process_errors: list[str] = []
        """Processes that stopped on an unexpected error (a bug in the workload)."""

    def now(self) -> float:
        """Seconds since the recorder was made."""
        return self._clock() - self.origin

    def begin(
        self,
        process: str,
        kind: OpKind,
        key: str,
        value: str | None,
        *,
        level: str,
        expected: int | None = None,
    ) -> int:
        """Record a call as invoked now; its index for ``finish``."""
        with self._lock:
            index = len(self._ops)
            invoke = self.now()
            self._ops.append(
                HistoryOp(
                    index,
                    process,
                    kind,
                    key,
                    value,
                    level,
                    invoke,
                    invoke,
                    Outcome.UNKNOWN,
                    expected=expected,
                )
            )
        return index

    def finish(
        self,
        index: int,
        outcome: Outcome,
        *,
        value: str | None = None,
        version: int | None = None,
        error: str = "",
    ) -> HistoryOp:
        """Record how a call ended; a read's ``value`` is what it returned."""
        with self._lock:
            op = self._ops[index]
            self._ops[index] = op = dataclasses.replace(
                op,
                value=value if op.kind is OpKind.READ else op.value,
                complete=max(op.invoke, self.now()),
                outcome=outcome,
                version=version,
                error=error,
            )
            self._completed += 1
        return op

    def count(self) -> int:
        """How many calls have completed."""
        with self._lock:
            return self._completed

    def history(self) -> list[HistoryOp]:
        """Every call so far in invocation order; those still running as UNKNOWN."""
        with self._lock:
            now = self.now()
            return [
                dataclasses.replace(op, complete=max(op.invoke, now), error="RUNNING")
                if op.outcome is Outcome.UNKNOWN and not op.error
                else op
                for op in self._ops
            ]


def write_outcome(error: BaseException) -> Outcome:
    """FAILED if the write cannot have taken effect, UNKNOWN otherwise."""
    return Outcome.FAILED if isinstance(error, _DEFINITE_FAILURES) else Outcome.UNKNOWN


def error_reason(error: BaseException) -> str:
    return error.reason if isinstance(error, RingkvError) else type(error).__name__


class _Process:
    """One client thread of a workload: one call at a time, as Jepsen's processes.

    Its clients make one attempt per call (the SDK's own retry could apply a
    write twice under one record); after a call that found its node
    unavailable or slow, the process moves on to the next endpoint.
    """

    def __init__(
        self,
        name: str,
        spec: WorkloadSpec,
        clients: Sequence[Client],
        recorder: CallRecorder,
        rng: random.Random,
    ) -> None:
        self.name = name
        self.spec = spec
        self.clients = clients
        self.current = 0
        self.recorder = recorder
        self.rng = rng
        self.seq = 0

    @property
    def client(self) -> Client:
        return self.clients[self.current]

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

    def _failed(self, error: Exception) -> str:
        if isinstance(error, _MOVE_ON):
            self.current = (self.current + 1) % len(self.clients)
        return error_reason(error)

    def read(self, key: str) -> HistoryOp:
        index = self.recorder.begin(self.name, OpKind.READ, key, None, level=self.spec.level)
        try:
            entry = self.client.get(key, consistency=self.spec.level)
        except Exception as error:  # every failure is recorded, none ends the run
            return self.recorder.finish(index, Outcome.FAILED, error=self._failed(error))
        if entry is None:
            return self.recorder.finish(index, Outcome.OK)
        value = entry.value.decode(errors="replace")
        return self.recorder.finish(index, Outcome.OK, value=value, version=entry.version)

    def write(self, key: str, value: str, expected: int | None = None) -> HistoryOp:
        kind = OpKind.WRITE if expected is None else OpKind.CAS
        index = self.recorder.begin(
            self.name, kind, key, value, level=self.spec.level, expected=expected
        )
        level = self.spec.level
        try:
            if expected is None:
                version = self.client.set(key, value, consistency=level)
            elif expected == ABSENT_VERSION:
                version = self.client.set(key, value, if_absent=True, consistency=level)
            else:
                version = self.client.set(key, value, if_version=expected, consistency=level)
        except Exception as error:  # every failure is recorded, none ends the run
            outcome = write_outcome(error)
            return self.recorder.finish(index, outcome, error=self._failed(error))
        return self.recorder.finish(index, Outcome.OK, version=version)

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
        level = self.spec.level
        indices = {
            key: self.recorder.begin(self.name, OpKind.WRITE, key, value, level=level)
            for key, value in items.items()
        }
        try:
            versions = self.client.set_many(items, consistency=level)
        except Exception as error:  # every failure is recorded, none ends the run
            outcome, reason = write_outcome(error), self._failed(error)
            for index in indices.values():
                self.recorder.finish(index, outcome, error=reason)
            return
        for key, index in indices.items():
            self.recorder.finish(index, Outcome.OK, version=versions[key])


def open_client(
    endpoints: Sequence[str],
    first: int,
    *,
    timeout: float,
    security: Security = PLAINTEXT,
    retry: RetryPolicy | None = None,
) -> Client:
    """A client that tries ``endpoints[first]`` first and fails over to the rest."""
    order = [*endpoints[first:], *endpoints[:first]]
    return Client(
        order,
        timeout=timeout,
        retry=retry,
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
    recorder: CallRecorder | None = None,
    seed: int = 0,
    security: Security = PLAINTEXT,
    stop: threading.Event | None = None,
) -> list[HistoryOp]:
    """Run every workload's processes until the duration, the call bound or ``stop``.

    Process ``i`` starts at endpoint ``i`` (modulo their number), so every
    node coordinates some calls.
    """
    recorder = recorder or CallRecorder()
    stop = stop or threading.Event()
    deadline = recorder.now() + limits.duration
    threads: list[threading.Thread] = []
    clients: list[Client] = []
    number = 0
    for spec in specs:
        for _ in range(spec.processes):
            home = number % len(endpoints)
            own = [
                open_client([e], 0, timeout=limits.op_timeout, security=security, retry=ONE_ATTEMPT)
                for e in (*endpoints[home:], *endpoints[:home])
            ]
            clients.extend(own)
            name = f"{spec.workload[0]}{number}"
            process = _Process(name, spec, own, recorder, random.Random(f"{seed}/{number}"))
            number += 1

            def loop(process: _Process = process) -> None:
                try:
                    for _ in range(limits.max_calls_per_process):
                        if stop.is_set() or recorder.now() >= deadline:
                            return
                        process.step()
                except Exception as error:  # its call in flight stays UNKNOWN
                    recorder.process_errors.append(f"{process.name}: {error!r}")

            threads.append(threading.Thread(target=loop, name=name, daemon=True))
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            # A call lasts at most op_timeout: the run ends soon after its duration.
            thread.join(timeout=max(0.0, deadline - recorder.now()) + 2 * limits.op_timeout + 30)
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
    within: float = 120.0,
    security: Security = PLAINTEXT,
) -> dict[str, FinalRead]:
    """Each key's value at ``level``; keys that could not be read (in ``attempts``
    tries each, and ``within`` seconds for all) are left out."""
    final: dict[str, FinalRead] = {}
    give_up = time.monotonic() + within
    with open_client(endpoints, 0, timeout=timeout, security=security) as client:
        for key in keys:
            for attempt in range(attempts):
                if time.monotonic() > give_up:
                    return final
                try:
                    entry = client.get(key, consistency=level)
                except RingkvError:
                    time.sleep(0.2 * (attempt + 1))  # backoff before asking again
                    continue
                if entry is None:
                    final[key] = FinalRead(key, None)
                else:
                    value = entry.value.decode(errors="replace")
                    final[key] = FinalRead(key, value, entry.version)
                break
    return final
