"""Judging a case's outputs: every rank's output against the case's reference (a
single-rank run, another strategy's, or a golden), the case's status and diagnoses, and
the reference held against the stored golden."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from harness.errors import HarnessError, describe
from harness.records import diagnose, envelope, goldens, scenario
from harness.records.ladder import compare, layer_keys, ranks_apart, tolerance_for
from harness.records.outputs import Output
from harness.records.result import CaseResult
from harness.status import CaseStatus


def rank_outputs(ranks: list[dict], arrays: dict, prefix: str) -> dict[int, Output]:
    outputs = {}
    for entry in ranks:
        head = f"{prefix}{entry['rank']}:"
        outputs[entry["rank"]] = Output.from_arrays(
            {k.removeprefix(head): v for k, v in arrays.items() if k.startswith(head)}
        )
    return outputs


def filled(output: Output, outputs: dict[int, Output]) -> Output:
    """A rank's output with its layer states filled in from the other ranks': pipeline
    ranks each hold different layers, so a divergent layer is found wherever it lives."""
    layers: dict[str, np.ndarray] = {}
    for other in outputs.values():
        layers.update(other.layers)
    return dataclasses.replace(output, layers={**layers, **output.layers})


def judge(
    result: CaseResult,
    ref: Output,
    outputs: dict[int, Output],
    truth: Output | None = None,
    requests: dict[int, list[dict]] | None = None,
) -> None:
    """Compare every rank's output with the reference (and a low-precision case's with
    the fp32 truth, records.envelope); each rank's later requests must match its first.
    The case passes if all ranks do; a failing scenario case says where it first went
    wrong (records.scenario)."""
    case = result.case
    tol = tolerance_for(case.precision, case.tolerance)
    for rank, output in sorted(outputs.items()):
        cmp = compare(ref, filled(output, outputs), tol, world=result.ranks, truth=truth)
        if case.scenario is not None:
            where = scenario.explain(case.scenario, cmp, ref, output, tol, truth)
            result.location = result.location or where
        differing = [r["diagnosis"] for r in (requests or {}).get(rank, []) if r["diagnosis"]]
        if differing:
            # The first request matched (or not): a later one differing is its own finding.
            cmp.passed = False
            cmp.diagnoses.insert(0, differing[0])
        result.comparisons[rank] = cmp
    if truth is not None and len(outputs) > 1:
        apart = envelope.disagreement(ref, truth, outputs, layer_keys(truth.layers))
        if apart is not None:
            for cmp in result.comparisons.values():
                ranks_apart(cmp, apart, ref, result.ranks)
            if case.scenario is not None and result.location is None:
                result.location = scenario.at(case.scenario, ref, apart.prefill, apart.decode)
                if result.location is not None:
                    for cmp in result.comparisons.values():
                        cmp.diagnoses.append(result.location["sentence"])
    conclude(result)


def conclude(result: CaseResult) -> None:
    comparisons = result.comparisons
    failing = [r for r, c in comparisons.items() if not c.passed]
    for c in comparisons.values():
        result.warnings += [w for w in c.warnings if w not in result.warnings]
    if failing:
        result.status = CaseStatus.FAIL
        first = comparisons[failing[0]]
        result.diagnoses = list(first.diagnoses)
        if len(failing) < len(comparisons):
            passing = [r for r in comparisons if r not in failing]
            result.diagnoses.append(diagnose.ranks_disagree(failing, passing))
        result.reason = f"rank {failing[0]}: " + "; ".join(first.diagnoses)


def judge_against_golden(
    result: CaseResult, golden: goldens.Golden, outputs: dict[int, Output]
) -> CaseResult:
    """Every rank held against the golden itself (full logits, or top-k logprobs for a
    real vocabulary); the first divergent layer from the golden's per-layer norms."""
    tol = tolerance_for(result.case.precision, result.case.tolerance)
    for rank, output in sorted(outputs.items()):
        comparison = goldens.hold(golden, output, tol)
        goldens.localize(comparison, golden, goldens.layer_norms(output.layers), tol)
        result.comparisons[rank] = comparison
    conclude(result)
    return result


def against_golden(
    result: CaseResult, reference: Output, directory: Path | None, record_missing: bool
) -> None:
    """Hold the single-rank reference against the stored golden of the case's key (a
    low-precision case has none: its fp32 truth is computed on the ranks instead; nor
    has a scenario case: drawn by the hundred, kept as a corpus, not as goldens)."""
    if directory is None or result.case.low_precision or result.case.scenario is not None:
        return
    tol = tolerance_for(result.case.precision, result.case.tolerance)
    try:
        check = goldens.check(result.case, reference, tol, directory, record_missing)
    except OSError as exc:
        raise HarnessError(f"cannot write goldens in {directory}: {describe(exc)}") from None
    result.golden = check
    if check.status in goldens.GOLDEN_WARNING:
        result.warnings.append(check.detail)
    elif check.status in goldens.GOLDEN_FAILING:
        result.diagnoses.append(diagnose.golden_status(check.status))
        result.reason = "; ".join(filter(None, [result.reason, check.detail]))
        if result.status == CaseStatus.PASS:
            result.status = CaseStatus.FAIL
