"""The one run loop: start a stored run, record each result as it arrives, finish the run.
SIGTERM and Ctrl-C mark the run `interrupted` and keep every recorded result. `harness
run`, `harness selftest`, `harness bench`, each bisect step and anything later go
through it; what they do with each result is their `on_result` callback."""

from __future__ import annotations

import dataclasses
import signal
import threading
import time
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import dataclass, field

from harness.case import Case
from harness.records import rundiff, store
from harness.records.bench import BenchResult
from harness.records.result import CaseResult
from harness.run.parent import plan, session
from harness.run.parent.bench import BenchOptions
from harness.run.parent.plan import RunOptions
from harness.status import CaseStatus, RunStatus

Result = CaseResult | BenchResult
# Called with each result before it is stored; returns extra columns for its row, or None.
OnResult = Callable[[Result], dict | None]


@dataclass
class RunRecord:
    run_id: int | None
    options: RunOptions | BenchOptions
    results: list = field(default_factory=list)  # CaseResult or BenchResult
    status: RunStatus = RunStatus.INTERRUPTED
    counts: dict = field(default_factory=dict)
    seconds: float = 0.0
    second_looks: list[str] = field(default_factory=list)  # labels of cases timed again

    @property
    def failed(self) -> bool:
        return self.status == RunStatus.FAILED


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


@contextmanager
def sigterm_interrupts():
    """SIGTERM ends the run the way Ctrl-C does (main thread only: signals live there)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class Recording:
    """A stored run being recorded: `add` each result as it arrives (the loop's one door
    to the store), then `judge` sets the status; what `recording` hands its caller."""

    def __init__(self, record: RunRecord, database, on_result: OnResult | None):
        self.record, self.database, self.on_result = record, database, on_result

    def add(self, result: Result, extra: dict | None = None) -> None:
        """Store one result (with the callback's columns and `extra`) and keep it."""
        columns = {**((self.on_result(result) if self.on_result else None) or {}), **(extra or {})}
        if self.database is not None:
            store.record(self.database, self.record.run_id, result, columns or None)
        self.record.results.append(result)

    def judge(self, judge: Callable[[list], bool] | None = None) -> None:
        """The run fails when `judge` (default: any failing result) says so."""
        results = self.record.results
        bad = judge(results) if judge else any(r.failed for r in results)
        self.record.status = RunStatus.FAILED if bad else RunStatus.PASSED


@contextmanager
def recording(
    options: RunOptions | BenchOptions,
    database=None,
    *,
    kind: str = "run",
    suite: str | None = None,
    command: list[str] | None = None,
    on_result: OnResult | None = None,
    started: float | None = None,
    versions: dict | None = None,
):
    """Store a run of any kind (when given a database): start it, let the caller add each
    result as it arrives and judge it, finish it; SIGTERM and Ctrl-C leave it
    `interrupted` with every result kept. For callers whose results come from callbacks
    (explore's search) rather than an iterable. `versions`: the mlx and mlx-lm the cases
    ran under, when not this process's (a bisect step's)."""
    started = time.perf_counter() if started is None else started
    record = RunRecord(None, options)
    if database is not None:
        record.run_id = store.start_run(
            database,
            kind,
            suite,
            options.ranks,
            options.backend,
            options.hostfile,
            command or ["harness", kind],
            versions,
        )
    try:
        with sigterm_interrupts():
            yield Recording(record, database, on_result)
    finally:
        if database is not None:
            record.counts = store.finish_run(database, record.run_id, record.status)
        record.seconds = time.perf_counter() - started


def run_loop(
    results: Iterable[Result],
    options: RunOptions | BenchOptions,
    database=None,
    *,
    judge: Callable[[list], bool] | None = None,
    **how,
) -> RunRecord:
    """Store a run of any kind (when given a database): start it, record each result as it
    arrives, finish it; SIGTERM and Ctrl-C leave it `interrupted` with every result kept.
    The run fails when `judge` (default: any failing result) says so. `how`: recording's
    kind, suite, command, on_result, started and versions."""
    with recording(options, database, **how) as run:
        for result in results:
            run.add(result)
        run.judge(judge)
    return run.record


def run_cases(cases: list[Case], options: RunOptions, database=None, **how) -> RunRecord:
    """Plan the cases, then run and store them through `run_loop` (`how`: its kind, suite,
    command, on_result and judge); a stored run then takes its `second_look`."""
    started = time.perf_counter()
    cases, options = plan.prepare(cases, options)
    record = run_loop(
        session.run_prepared(cases, options), options, database, started=started, **how
    )
    if database is not None and how.get("kind", "run") == "run" and options.repeats:
        second_look(record, database)
    return record


def second_look(record: RunRecord, database) -> None:
    """Time again, in one more launch, the cases whose tok/s fell under `noise.CLEAR` of
    their history in a part (prefill or decode), and keep those timings beside the first
    (the run-to-run diff reads the faster): a burst of load on the machine (measured here:
    1.5 s of a busy core held three cases of an unchanged run at 0.4-0.49x) has passed by
    then, a slower model has not. Costs nothing when no case fell that far."""
    if record.status == RunStatus.INTERRUPTED or record.run_id is None:
        return
    wanted = set(rundiff.clear_drops(database, record.run_id))
    again = [
        r
        for r in record.results
        if r.status == CaseStatus.PASS and (r.case.key(), r.case.strategy) in wanted
    ]
    if not again:
        return
    cases = [r.case for r in again]
    options = dataclasses.replace(record.options, goldens=None, record_missing=False)
    with sigterm_interrupts():
        try:
            for result in session.run_prepared(cases, options):
                if result.rank_timings:
                    first = again[result.index]
                    store.add_second_look(database, record.run_id, first.index, result.rank_timings)
                    record.second_looks.append(first.case.label())
        except KeyboardInterrupt:
            return  # the first look stands
