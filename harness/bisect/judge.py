"""Judging cases under one implementation: good, bad or skip, per case and for a group.

A case is bad when its reference crashed or hung (the watchdog's timeout) or moved beyond
its tolerance from the baseline (its golden, or the good endpoint's reference), or when its
sharded run failed, crashed or hung; skip when the implementation cannot run it (or the
baseline has nothing to hold it against, or either run met a setup or harness error);
good otherwise.
A group is bad if any case is, skip if every case is."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from harness.bisect.implementations import References
from harness.case import Case
from harness.records import goldens
from harness.records.ladder import Comparison, compare, tolerance_for
from harness.records.outputs import Output
from harness.records.result import CaseResult
from harness.status import CaseStatus, ReferenceStatus, StepVerdict

BASELINES = ("goldens", "good")


@dataclass
class CaseVerdict:
    case: Case
    verdict: StepVerdict
    detail: str | None = None
    comparison: Comparison | None = None  # the reference against the baseline
    sharded: CaseResult | None = None  # the sharded run, when ranks > 1


def held(
    case: Case, output: Output, baseline: Output | Path
) -> tuple[StepVerdict, Comparison | None]:
    """The reference against the baseline: (verdict, comparison). A golden is read, never
    written: bisecting leaves no `obtained` files behind."""
    tol = tolerance_for(case.precision, case.tolerance)
    if isinstance(baseline, Output):
        comparison = compare(baseline, output, tol, world=1)
    else:
        try:
            stored = goldens.load(case.key(), baseline)
        except goldens.CorruptGolden:
            return StepVerdict.SKIP, None
        if stored is None:
            return StepVerdict.SKIP, None
        golden, _ = stored
        comparison = goldens.hold(golden, output, tol)
        goldens.localize(comparison, golden, goldens.layer_norms(output.layers), tol)
    return (StepVerdict.GOOD if comparison.passed else StepVerdict.BAD), comparison


def judge_case(
    case: Case,
    refs: References,
    baseline: Output | Path | None,
    sharded: CaseResult | None = None,
) -> CaseVerdict:
    reference = refs.cases.get(case.key())
    label = refs.implementation.label
    if reference is None or reference.status == ReferenceStatus.SKIP:
        detail = reference.detail if reference else "not run"
        return CaseVerdict(case, StepVerdict.SKIP, f"{label} cannot run it: {detail}")
    detail = f"under {label}: {reference.status}: {reference.detail}"
    if reference.status in (ReferenceStatus.CRASH, ReferenceStatus.TIMEOUT):
        return CaseVerdict(case, StepVerdict.BAD, detail)  # the model under this implementation
    if reference.status == ReferenceStatus.ERROR:  # the setup's or the harness's fault
        return CaseVerdict(case, StepVerdict.SKIP, detail)  # never the model's
    if baseline is None:
        return CaseVerdict(
            case, StepVerdict.SKIP, "the good endpoint cannot run it: nothing to hold it to"
        )
    verdict, comparison = held(case, reference.output, baseline)
    if comparison is None:
        return CaseVerdict(case, StepVerdict.SKIP, f"no golden for {case.key()} in {baseline}")
    detail = None
    if verdict == StepVerdict.BAD:
        detail = f"reference moved: max|Δ| {comparison.metrics.max_abs:.2e}"
    if sharded is None or verdict == StepVerdict.BAD:
        return CaseVerdict(case, verdict, detail, comparison, sharded)
    if sharded.status in (
        CaseStatus.CRASH,
        CaseStatus.FAIL,
        CaseStatus.TIMEOUT,
    ):  # the model under this release
        verdict, detail = StepVerdict.BAD, f"sharded run {sharded.status}: {sharded.reason}"
    elif sharded.status in (CaseStatus.ERROR, CaseStatus.SKIP):
        # The setup's or the harness's fault (a loader this release lacks): never the model's.
        verdict, detail = StepVerdict.SKIP, f"sharded run {sharded.status}: {sharded.reason}"
    return CaseVerdict(case, verdict, detail, comparison, sharded)


# How a bisect step's verdict is stored as a case's status.
STORED_STATUS = {
    StepVerdict.GOOD: CaseStatus.PASS,
    StepVerdict.BAD: CaseStatus.FAIL,
    StepVerdict.SKIP: CaseStatus.SKIP,
}


def step_results(verdicts: list[CaseVerdict], ranks: int) -> Iterator[CaseResult]:
    """A step's verdicts as case results to store: the sharded run's comparisons when there
    is one, else the reference's against the baseline."""
    for index, v in enumerate(verdicts):
        comparisons = {0: v.comparison} if v.comparison is not None else {}
        if v.sharded is not None and v.sharded.comparisons:
            comparisons = v.sharded.comparisons
        status = STORED_STATUS[v.verdict]
        yield CaseResult(index, v.case, ranks, status, v.detail, comparisons)


def store_step(
    database, name: str, versions: dict, verdicts: list[CaseVerdict], command: list[str], ranks: int
) -> int:
    """One bisect step (a release or a commit, judged) as a stored run of kind `bisect`,
    through the one run loop (its store API, SIGTERM and Ctrl-C); returns the run's id."""
    # Imported here: the run layer loads mlx, which judging never needs.
    from harness.run.parent.loop import run_loop
    from harness.run.parent.plan import RunOptions

    record = run_loop(
        step_results(verdicts, ranks),
        RunOptions(ranks=ranks),
        database,
        kind="bisect",
        suite=name,
        command=command,
        on_result=lambda result: {"verdict": verdicts[result.index].verdict},
        versions={"mlx_version": versions.get("mlx"), "mlx_lm_version": versions.get("mlx-lm")},
    )
    return record.run_id


def group_verdict(verdicts: list[CaseVerdict]) -> StepVerdict:
    if any(v.verdict == StepVerdict.BAD for v in verdicts):
        return StepVerdict.BAD
    if all(v.verdict == StepVerdict.SKIP for v in verdicts):
        return StepVerdict.SKIP
    return StepVerdict.GOOD
