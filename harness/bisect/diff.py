"""`diff-impl`: two implementations of one model type on the same tiny weights and prompts.

Every zoo architecture of that model type runs its fp32 base case under both (releases,
commits, source trees or model files, see `harness.bisect.implementations`); the result
is the ladder of metrics of B against A and the first decoder layer where they diverge.

In mlx-lm a model's sharding lives in its model file (`shard()`, `pipeline()`), so with
ranks > 1 each implementation also runs the cases sharded (tp, pp) on real ranks: each
sharded run is held against its own implementation's single-rank run, and B's sharded
outputs against A's, so a regression in `shard()` shows even where the unsharded forwards
agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from harness.bisect import implementations, sharded
from harness.case import Case
from harness.errors import HarnessError
from harness.records.ladder import Comparison, compare, tolerance_for
from harness.records.result import CaseResult
from harness.status import CaseStatus
from harness.zoo import ARCHS

STRATEGIES = tuple(sharded.SHARDING)


@dataclass
class ImplDiff:
    case: Case
    a: str  # the implementations' labels
    b: str
    comparison: Comparison | None  # None when either side could not run the case
    detail: str | None = None
    failed: bool = False  # a side's model crashed or hung: they differ, whatever the numbers


@dataclass
class ShardedDiff:
    case: Case  # a sharded case (strategy tp or pp)
    a: str
    b: str
    runs: tuple[CaseResult | None, CaseResult | None]  # each against its own single rank
    between: Comparison | None = None  # B's sharded outputs against A's, rank by rank
    detail: str | None = None  # why the two sharded runs could not be compared

    @property
    def differ(self) -> bool:
        statuses = [run.status if run else None for run in self.runs]
        return statuses[0] != statuses[1] or (self.between is not None and not self.between.passed)


@dataclass
class ImplDiffs:
    unsharded: list[ImplDiff]
    sharded: list[ShardedDiff] = field(default_factory=list)
    ranks: int = 1


def cases_of(model_type: str) -> list[Case]:
    archs = [arch.name for arch in ARCHS.values() if arch.model_type == model_type]
    if not archs:
        known = ", ".join(sorted({arch.model_type for arch in ARCHS.values()}))
        raise HarnessError(
            f"no architecture of the zoo has model_type '{model_type}'; known: {known}"
        )
    return [Case(arch, strategy="none") for arch in archs]


def diff_impl(
    model_type: str,
    a: str,
    b: str,
    repo: Path | None = None,
    ranks: int = 1,
    strategies: tuple[str, ...] = STRATEGIES,
    timeout: float = 60.0,
) -> ImplDiffs:
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown:
        raise HarnessError(
            f"--strategy is one of {', '.join(STRATEGIES)}, not '{unknown[0]}' "
            "(diff-impl compares the model files' own shard() and pipeline())"
        )
    implementations.check_timeout(timeout)
    cases = cases_of(model_type)
    sharded_cases = [Case(c.arch, strategy=s) for c in cases for s in strategies if ranks > 1]
    run = sharded.runner(ranks, timeout=timeout, keep_outputs=True) if ranks > 1 else None
    sides = []
    for spec in (a, b):
        # A commit's worktree lives only inside the block: run everything it needs there.
        with implementations.resolve(spec, model_type, repo) as implementation:
            refs = implementations.references(implementation, cases, timeout)
            runs = sharded.run_supported(run, implementation, refs, sharded_cases) if run else {}
            sides.append((implementation.label, refs, runs))
    (label_a, refs_a, runs_a), (label_b, refs_b, runs_b) = sides
    diffs = ImplDiffs([], ranks=ranks)
    for case in cases:
        x, y = refs_a.cases[case.key()], refs_b.cases[case.key()]
        if x.output is None or y.output is None:
            side, why = (label_a, x) if x.output is None else (label_b, y)
            detail = f"{side}: {why.status}: {why.detail}"
            failed = any(r.status in (CaseStatus.CRASH, CaseStatus.TIMEOUT) for r in (x, y))
            diffs.unsharded.append(ImplDiff(case, label_a, label_b, None, detail, failed))
            continue
        tol = tolerance_for(case.precision, case.tolerance)
        comparison = compare(x.output, y.output, tol, world=1)
        diffs.unsharded.append(ImplDiff(case, label_a, label_b, comparison))
    for case in sharded_cases:
        pair = (runs_a.get(case.label()), runs_b.get(case.label()))
        diffs.sharded.append(_between(case, label_a, label_b, pair, ranks))
    return diffs


def _between(case: Case, a: str, b: str, runs, ranks: int) -> ShardedDiff:
    """B's sharded run held against A's, rank by rank: the first failing rank's
    comparison, else the worst."""
    x, y = runs
    for label, run in ((a, x), (b, y)):
        if run is None:
            return ShardedDiff(case, a, b, runs, detail=f"{label}: its single-rank run failed")
        if not run.outputs:
            why = f"{label}: {run.status}" + (f": {run.reason}" if run.reason else "")
            return ShardedDiff(case, a, b, runs, detail=why)
    tol = tolerance_for(case.precision, case.tolerance)
    shared = sorted(set(x.outputs) & set(y.outputs))
    comparisons = [compare(x.outputs[r], y.outputs[r], tol, world=ranks) for r in shared]
    failing = [c for c in comparisons if not c.passed]
    between = failing[0] if failing else max(comparisons, key=lambda c: c.metrics.max_abs)
    return ShardedDiff(case, a, b, runs, between)
