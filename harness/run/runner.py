"""Running cases: plan (skip what cannot apply), compute each case's single-rank reference,
run the sharded side (in-process for one rank, one mlx.launch job for several), compare
every rank's output with the reference, and yield one result per case as it finishes."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import numpy as np

from harness import preflight
from harness.case import Case
from harness.errors import HarnessError, describe
from harness.models import checkpoint
from harness.models.build import tiny_config
from harness.records import goldens
from harness.records.compare import compare, tolerance_for
from harness.records.outputs import Output, Timings
from harness.records.result import CaseResult
from harness.run import launch
from harness.run.execute import run_case, shape_skip_reason
from harness.run.strategy import BUILTIN, normalize, resolve
from harness.zoo import support


@dataclass
class RunOptions:
    ranks: int = 1
    backend: str | None = None
    hostfile: str | None = None
    timeout: float = 60.0
    repeats: int = 3
    capture: bool = True
    goldens: Path | None = goldens.GOLDENS_DIR  # None: do not compare with goldens
    record_missing: bool = False
    # Where ranks and parent exchange files; on a cluster, a folder every host sees at the
    # same path (a shared filesystem). None: a local temporary folder.
    workdir: Path | None = None


def skip_reason(case: Case, ranks: int) -> str | None:
    """Why a case cannot apply at `ranks` ranks, or None."""
    sup = support(case.arch)
    if not sup.available:
        return sup.reason
    strategy = resolve(case.strategy)
    if strategy.requires and not getattr(sup, strategy.requires):
        kind = {"tp": "tensor-parallel shard()", "pp": "pipeline()"}[strategy.requires]
        return f"{case.arch} has no {kind} in the installed mlx-lm"
    return (
        checkpoint.skip_reason(case) or shape_skip_reason(case) or preflight_violation(case, ranks)
    )


def preflight_violation(case: Case, ranks: int) -> str | None:
    """The first divisibility or shape rule the case breaks at `ranks`, as one sentence."""
    config = checkpoint.case_config(case) if case.checkpoint else tiny_config(case)
    violations = preflight.check(config, case.strategy, ranks, case.quant, case.group_size)
    return violations[0].message if violations else None


def validate(cases: list[Case], options: RunOptions) -> list[Case]:
    """Check what would otherwise fail late; return cases with strategies made absolute."""
    if options.ranks < 1:
        raise HarnessError(f"--ranks must be at least 1, got {options.ranks}")
    if options.hostfile is not None:
        launch.check_options(options.backend, options.hostfile)
        hosts = launch.hostfile_ranks(options.hostfile)
        if options.ranks not in (1, hosts):
            raise HarnessError(
                f"--ranks {options.ranks} disagrees with the {hosts} hosts in '{options.hostfile}'"
            )
        options.ranks = hosts
    if options.ranks > 1:
        launch.check_options(options.backend, options.hostfile)
        launch.find_launcher()
    checked = []
    for case in cases:
        name = normalize(case.strategy)
        if name not in BUILTIN:
            resolve(name)  # an external strategy that does not import fails here, once
        checked.append(Case.from_dict({**case.to_dict(), "strategy": name}))
    return checked


def run(cases: list[Case], options: RunOptions) -> Iterator[CaseResult]:
    cases = validate(cases, options)
    runnable = []
    for index, case in enumerate(cases):
        reason = skip_reason(case, options.ranks)
        if reason is not None:
            yield CaseResult(index, case, options.ranks, "skip", reason)
        else:
            runnable.append((index, case))
    if options.ranks == 1:
        yield from _run_in_process(runnable, options)
    else:
        yield from _run_launched(runnable, options)


def _reference(case: Case, options: RunOptions) -> tuple[Output, Timings]:
    return run_case(case, None, capture=options.capture, repeats=options.repeats)


def _run_in_process(runnable: list[tuple[int, Case]], options: RunOptions) -> Iterator[CaseResult]:
    # References first: a strategy may patch model classes for the rest of the process.
    references = {}
    for index, case in runnable:
        started = time.perf_counter()
        try:
            references[index] = (_reference(case, options), time.perf_counter() - started)
        except Exception as exc:
            references[index] = (exc, 0.0)
    group = mx.distributed.init()
    for index, case in runnable:
        reference, ref_seconds = references[index]
        if isinstance(reference, Exception):
            yield _reference_error(index, case, options, reference)
            continue
        started = time.perf_counter()
        try:
            output, timings = run_case(case, group, options.capture, options.repeats)
        except Exception as exc:
            yield CaseResult(
                index,
                case,
                1,
                "crash",
                f"rank 0 raised {describe(exc)}",
                reference_timings=reference[1],
                duration=time.perf_counter() - started,
            )
            continue
        result = _judge(index, case, 1, reference, {0: output}, {0: timings.to_dict()})
        result.duration = time.perf_counter() - started + ref_seconds
        yield _against_golden(result, reference[0], options)


def _run_launched(runnable: list[tuple[int, Case]], options: RunOptions) -> Iterator[CaseResult]:
    if not runnable:
        return
    cases = dict(runnable)
    job_options = launch.JobOptions(
        ranks=options.ranks,
        backend=options.backend,
        hostfile=options.hostfile,
        timeout=options.timeout,
        capture=options.capture,
        repeats=options.repeats,
    )
    if options.workdir is not None:
        options.workdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="harness-job-", dir=options.workdir) as workdir:
        entries = [(i, c.to_dict()) for i, c in runnable]
        last = time.perf_counter()
        for outcome in launch.run_job(entries, job_options, Path(workdir)):
            case = cases[outcome.index]
            try:
                reference = _reference(case, options)
            except Exception as exc:
                yield _reference_error(outcome.index, case, options, exc)
                continue
            result = _from_outcome(outcome, case, options, reference)
            now = time.perf_counter()
            result.duration, last = now - last, now
            yield _against_golden(result, reference[0], options)


def _reference_error(index: int, case: Case, options: RunOptions, exc: Exception) -> CaseResult:
    return CaseResult(
        index,
        case,
        options.ranks,
        "error",
        f"the single-rank reference failed: {describe(exc)}",
    )


def _from_outcome(
    outcome: launch.CaseOutcome, case: Case, options: RunOptions, reference: tuple[Output, Timings]
) -> CaseResult:
    timings = {r.rank: r.timings for r in outcome.ranks if r.timings}
    if outcome.status != "done":
        return CaseResult(
            outcome.index,
            case,
            options.ranks,
            outcome.status,
            outcome.detail,
            reference_timings=reference[1],
            rank_timings=timings,
        )
    errors = [f"rank {r.rank} raised {r.error}" for r in outcome.ranks if r.status == "error"]
    if errors:
        return CaseResult(
            outcome.index,
            case,
            options.ranks,
            "crash",
            "; ".join(errors),
            reference_timings=reference[1],
            rank_timings=timings,
        )
    outputs = {}
    for r in outcome.ranks:
        with np.load(r.output) as data:
            outputs[r.rank] = Output.from_arrays(dict(data))
    return _judge(outcome.index, case, options.ranks, reference, outputs, timings)


def _judge(
    index: int,
    case: Case,
    ranks: int,
    reference: tuple[Output, Timings],
    outputs: dict[int, Output],
    timings: dict[int, dict],
) -> CaseResult:
    """Compare every rank's output with the reference; the case passes if all ranks do."""
    ref, ref_timings = reference
    tol = tolerance_for(case.precision, case.tolerance)
    # Pipeline ranks hold different layers: each rank's layer states, filled in from the
    # other ranks', so the first divergent layer can be found wherever it lives.
    merged: dict[str, np.ndarray] = {}
    for output in outputs.values():
        merged.update(output.layers)
    comparisons = {}
    for rank, output in sorted(outputs.items()):
        test = Output(output.prefill, output.decode, output.tokens, {**merged, **output.layers})
        comparisons[rank] = compare(ref, test, tol, world=ranks)
    result = CaseResult(
        index,
        case,
        ranks,
        "pass",
        comparisons=comparisons,
        reference_timings=ref_timings,
        rank_timings=timings,
    )
    failing = [r for r, c in comparisons.items() if not c.passed]
    for c in comparisons.values():
        result.warnings += [w for w in c.warnings if w not in result.warnings]
    if failing:
        result.status = "fail"
        first = comparisons[failing[0]]
        result.diagnoses = list(first.diagnoses)
        if len(failing) < len(comparisons):
            passing = [r for r in comparisons if r not in failing]
            result.diagnoses.append(
                f"ranks disagree: rank {', '.join(map(str, failing))} fail, "
                f"rank {', '.join(map(str, passing))} pass"
            )
        result.reason = f"rank {failing[0]}: " + "; ".join(first.diagnoses)
    return result


def _against_golden(result: CaseResult, reference: Output, options: RunOptions) -> CaseResult:
    """Hold the single-rank reference against the stored golden of the case's key."""
    if options.goldens is None or result.status in ("skip", "error"):
        return result
    tol = tolerance_for(result.case.precision, result.case.tolerance)
    check = goldens.check(result.case, reference, tol, options.goldens, options.record_missing)
    result.golden = check
    if check.status in ("missing", "written"):
        result.warnings.append(check.detail)
    elif check.status in ("mismatch", "corrupt"):
        result.diagnoses.append(f"golden {check.status}")
        result.reason = "; ".join(filter(None, [result.reason, check.detail]))
        if result.status == "pass":
            result.status = "fail"
    return result
