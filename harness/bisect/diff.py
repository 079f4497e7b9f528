"""`diff-impl`: two implementations of one model type on the same tiny weights and prompts.

Every zoo architecture of that model type runs its fp32 base case under both (releases,
commits, source trees or model files, see `harness.bisect.implementations`); the result
is the ladder of metrics of B against A and the first decoder layer where they diverge.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from harness.bisect import implementations
from harness.case import Case
from harness.errors import HarnessError
from harness.records.compare import Comparison, compare, tolerance_for
from harness.zoo import ARCHS


@dataclass
class ImplDiff:
    case: Case
    a: str  # the implementations' labels
    b: str
    comparison: Comparison | None  # None when either side could not run the case
    detail: str | None = None


def cases_of(model_type: str) -> list[Case]:
    archs = [arch.name for arch in ARCHS.values() if arch.model_type == model_type]
    if not archs:
        known = ", ".join(sorted({arch.model_type for arch in ARCHS.values()}))
        raise HarnessError(
            f"no architecture of the zoo has model_type '{model_type}'; known: {known}"
        )
    return [Case(arch, strategy="none") for arch in archs]


def diff_impl(model_type: str, a: str, b: str, repo: Path | None = None) -> list[ImplDiff]:
    cases = cases_of(model_type)
    with implementations.resolve(a, model_type, repo) as first:
        refs_a = implementations.references(first, cases)
    with implementations.resolve(b, model_type, repo) as second:
        refs_b = implementations.references(second, cases)
    diffs = []
    for case in cases:
        x, y = refs_a.cases[case.key()], refs_b.cases[case.key()]
        labels = (first.label, second.label)
        if x.output is None or y.output is None:
            side, why = (labels[0], x) if x.output is None else (labels[1], y)
            diffs.append(ImplDiff(case, *labels, None, f"{side}: {why.status}: {why.detail}"))
            continue
        tol = tolerance_for(case.precision, case.tolerance)
        diffs.append(ImplDiff(case, *labels, compare(x.output, y.output, tol, world=1)))
    return diffs
