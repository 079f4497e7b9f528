"""The status vocabularies: one type per thing that has a status, so the same word in two
vocabularies ("skip" for a case and for a bisect step) is two types, and a reader can
jump from a value to every use.

Each value is what the database stores and the JSON pages show: never change one, or old
databases read differently. Standard library only: every layer, down to `harness.errors`
and the records, imports it.
"""

from __future__ import annotations

from enum import StrEnum


class CaseStatus(StrEnum):
    """What one case came to (`cases.status`)."""

    PASS = "pass"
    FAIL = "fail"  # the model's numbers: beyond tolerance of the reference
    SKIP = "skip"  # cannot apply here (the installed mlx-lm, a preflight rule), with why
    CRASH = "crash"  # the model's code raised or a rank died in it
    TIMEOUT = "timeout"
    ERROR = "error"  # the setup's or the harness's fault, never the model's


FAILING = (CaseStatus.FAIL, CaseStatus.CRASH, CaseStatus.TIMEOUT, CaseStatus.ERROR)


class RunStatus(StrEnum):
    """What a run of any kind came to (`runs.status`)."""

    RUNNING = "running"
    PASSED = "passed"
    FAILED = "failed"
    INTERRUPTED = "interrupted"  # SIGTERM or Ctrl-C, or the process died before it ended


class BenchStatus(StrEnum):
    """What one bench case came to (`bench_cases.status`): timed, or why not."""

    OK = "ok"
    CRASH = "crash"
    TIMEOUT = "timeout"
    ERROR = "error"


class ReferenceStatus(StrEnum):
    """What became of computing a case's single-rank reference: its outputs (`ok`), or why
    not. A run's ranks answer ok, crash or error (`harness.errors.blame`); the references
    job of bisect and diff-impl ok, skip (this mlx-lm cannot build the case) or crash, and
    its watcher a timeout, crash or error."""

    OK = "ok"
    SKIP = "skip"
    CRASH = "crash"
    TIMEOUT = "timeout"
    ERROR = "error"


class GoldenStatus(StrEnum):
    """What became of one golden (`cases.golden`): a check against it, or what a golden
    command did to it."""

    # A check's.
    MATCH = "match"
    MISMATCH = "mismatch"
    MISSING = "missing"
    CORRUPT = "corrupt"
    WRITTEN = "written"
    # A golden command's.
    EXISTS = "exists"
    UPDATED = "updated"
    UNAVAILABLE = "unavailable"  # this machine cannot compute the case


class StepVerdict(StrEnum):
    """A bisect step's answer for one implementation (a release, a commit), as `git bisect
    run` takes it: GOOD, BAD, or SKIP when the implementation cannot be judged (not a
    case's SKIP: a step skips when every case of it could not be held to anything)."""

    GOOD = "good"
    BAD = "bad"
    SKIP = "skip"


class SelftestVerdict(StrEnum):
    """What the selftest makes of one case of the fault catalog (`cases.verdict`)."""

    CAUGHT = "caught"  # a fault: expected status, diagnoses, layer and sub-block
    MISSED = "missed"  # a fault that passed
    WRONG = "wrong diagnosis"
    PASSED = "passed"  # a control
    FALSE_ALARM = "false alarm"
    NOT_RUN = "not run"  # skipped or errored before the sharded side ran: proves nothing

    @property
    def bad(self) -> bool:
        return self is not SelftestVerdict.CAUGHT and self is not SelftestVerdict.PASSED
