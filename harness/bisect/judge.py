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
from harness.bisect.search import BAD, GOOD, SKIP
from harness.case import Case
from harness.records import goldens
from harness.records.ladder import Comparison, compare, tolerance_for
from harness.records.outputs import Output
from harness.records.result import CRASH, ERROR, FAIL, PASS, TIMEOUT, CaseResult
from harness.records.result import SKIP as SKIP_STATUS
from harness.run.rank.references import SKIP as SKIP_REFERENCE

BASELINES = ("goldens", "good")


@dataclass
class CaseVerdict:
    case: Case
    verdict: str
    detail: str | None = None
    comparison: Comparison | None = None  # the reference against the baseline
    sharded: CaseResult | None = None  # the sharded run, when ranks > 1


def held(case: Case, output: Output, baseline: Output | Path) -> tuple[str, Comparison | None]:
    """The reference against the baseline: (verdict, comparison). A golden is read, never
    written: bisecting leaves no `obtained` files behind."""
    tol = tolerance_for(case.precision, case.tolerance)
    if isinstance(baseline, Output):
        comparison = compare(baseline, output, tol, world=1)
    else:
        try:
            stored = goldens.load(case.key(), baseline)
        except goldens.CorruptGolden:
            return SKIP, None
        if stored is None:
            return SKIP, None
        golden, _ = stored
        comparison = goldens.hold(golden, output, tol)
        goldens.localize(comparison, golden, goldens.layer_norms(output.layers), tol)
    return (GOOD if comparison.passed else BAD), comparison


def judge_case(
    case: Case,
    refs: References,
    baseline: Output | Path | None,
    sharded: CaseResult | None = None,
) -> CaseVerdict:
    reference = refs.cases.get(case.key())
    label = refs.implementation.label
    if reference is None or reference.status == SKIP_REFERENCE:
        detail = reference.detail if reference else "not run"
        return CaseVerdict(case, SKIP, f"{label} cannot run it: {detail}")
    if reference.status in (CRASH, TIMEOUT):  # the model under this implementation
        return CaseVerdict(case, BAD, f"under {label}: {reference.status}: {reference.detail}")
    if reference.status == ERROR:  # the setup's or the harness's fault: never the model's
        return CaseVerdict(case, SKIP, f"under {label}: {reference.status}: {reference.detail}")
    if baseline is None:
        return CaseVerdict(case, SKIP, "the good endpoint cannot run it: nothing to hold it to")
    verdict, comparison = held(case, reference.output, baseline)
    if comparison is None:
        return CaseVerdict(case, SKIP, f"no golden for {case.key()} in {baseline}")
    detail = None
    if verdict == BAD:
        detail = f"reference moved: max|Δ| {comparison.metrics.max_abs:.2e}"
    if sharded is None or verdict == BAD:
        return CaseVerdict(case, verdict, detail, comparison, sharded)
    if sharded.status in (CRASH, FAIL, TIMEOUT):  # the model under this release
        verdict, detail = BAD, f"sharded run {sharded.status}: {sharded.reason}"
    elif sharded.status in (ERROR, SKIP_STATUS):
        # The setup's or the harness's fault (a loader this release lacks): never the model's.
        verdict, detail = SKIP, f"sharded run {sharded.status}: {sharded.reason}"
    return CaseVerdict(case, verdict, detail, comparison, sharded)


# How a bisect step's verdict is stored as a case's status.
STORED_STATUS = {GOOD: PASS, BAD: FAIL, SKIP: SKIP_STATUS}


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


def group_verdict(verdicts: list[CaseVerdict]) -> str:
    if any(v.verdict == BAD for v in verdicts):
        return BAD
    if all(v.verdict == SKIP for v in verdicts):
        return SKIP
    return GOOD
