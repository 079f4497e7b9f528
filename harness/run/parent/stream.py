"""A streaming session: one open job of ranks that cases are handed to as they are made
(`harness explore`: hypothesis draws them), judged as `harness run` judges its cases.

Each `run(cases)` is one spec on the open job's rank 0 stdin (`protocol`: the ranks wait
in step for the next spec after each `End`, and a spec of kind `CLOSE` ends them), through
the relaunch driver (`relaunch.Relauncher`, kept open): the watcher's per-case limit
applies to each case, a crash or hang is that case's result, and the job is launched again
only when one died. Local ranks read their specs from a pipe of the parent's. Through
`mlx.launch` (`--hostfile`, another `--backend`) the launcher forwards its stdin, so it
stays open for the job's whole life: the launcher's forwarding thread for rank 0 spins on
that always-writable pipe (about a core on the launching machine while the job is open),
where a run's launch quiets every thread once the ranks have their spec.
"""

from __future__ import annotations

import dataclasses

from harness.case import Case
from harness.records.result import CaseResult
from harness.run.parent import plan, session
from harness.run.parent.job import Job
from harness.run.parent.plan import RunOptions


class CaseStream:
    """One open job of ranks that cases are handed to as they are made (hypothesis draws
    them). The options are checked on entry; nothing launches before the first `run`."""

    def __init__(self, options: RunOptions):
        # Goldens off: drawn cases have none, and nothing is written beside them.
        self.options = dataclasses.replace(options, goldens=None, record_missing=False)
        self._driver = None

    def __enter__(self) -> CaseStream:
        self.options = plan.prepare_options(self.options)
        self._driver = session.relauncher(self.options, keep_open=True)
        return self

    def __exit__(self, kind, value, traceback) -> None:
        """The job ends: told to close (its ranks exit cleanly) after a normal exit, killed
        after an exception (Ctrl-C included)."""
        if self._driver is not None:
            self._driver.close(graceful=kind is None)

    @property
    def job(self) -> Job | None:
        """The open job (its ranks' `hello`, its processes), or None: before the first
        launch, after a crash or a hang until the next call, once closed, and while one
        local rank runs in this process."""
        return self._driver.job if self._driver is not None else None

    @property
    def launches(self) -> int:
        """How many launches so far (0 while one local rank runs in this process)."""
        return self._driver.launches if self._driver is not None else 0

    def run(self, cases: list[Case]) -> list[CaseResult]:
        """Run these cases on the open job's ranks, judged exactly as `harness run` judges
        them (single-rank references computed on the ranks, precision-aware verdicts,
        goldens off), one CaseResult per case in order. Launches on the first call; later
        calls reuse the running ranks (no relaunch); a rank that crashes or hangs gives
        that case its crash/timeout result, and the rest of the call (or the next call)
        relaunches. A case that cannot apply is a skip with the reason, as in a run."""
        if self._driver is None:
            raise RuntimeError("CaseStream.run outside its 'with' block")
        prepared = plan.prepare_cases(cases, self.options)
        results = {r.index: r for r in session.run_prepared(prepared, self.options, self._driver)}
        return [results[index] for index in range(len(prepared))]
