"""The one run loop: start a stored run, run the cases, record each result as it arrives,
finish the run. SIGTERM and Ctrl-C mark the run `interrupted` and keep every recorded case.
`harness run`, `harness selftest` and anything later (bisect, a cluster job) go through it;
what they do with each result is their `on_result` callback."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field

from harness.case import Case
from harness.records import store
from harness.records.result import CaseResult
from harness.run.parent import plan, session
from harness.run.parent.plan import RunOptions

# Called with each result before it is stored; returns extra columns for its row, or None.
OnResult = Callable[[CaseResult], dict | None]


@dataclass
class RunRecord:
    run_id: int | None
    options: RunOptions
    results: list[CaseResult] = field(default_factory=list)
    status: str = "interrupted"
    counts: dict = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def failed(self) -> bool:
        return self.status == "failed"


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


def run_cases(
    cases: list[Case],
    options: RunOptions,
    database=None,
    *,
    kind: str = "run",
    suite: str | None = None,
    command: list[str] | None = None,
    on_result: OnResult | None = None,
    judge: Callable[[list[CaseResult]], bool] | None = None,
) -> RunRecord:
    """Run the cases and store them (when given a database) as a run of `kind`. The run
    fails when `judge` (default: any failing case) says so."""
    started = time.perf_counter()
    cases, options = plan.prepare(cases, options)
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
        )
    try:
        with sigterm_interrupts():
            for result in session.run_prepared(cases, options):
                extra = on_result(result) if on_result else None
                if database is not None:
                    store.record_case(database, record.run_id, result, extra)
                record.results.append(result)
            bad = judge(record.results) if judge else any(r.failed for r in record.results)
            record.status = "failed" if bad else "passed"
    finally:
        if database is not None:
            record.counts = store.finish_run(database, record.run_id, record.status)
        record.seconds = time.perf_counter() - started
    return record
