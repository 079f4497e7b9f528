"""The sharded side of a bisect step or an implementation diff: the cases on real ranks
under the implementation's Python, through the one run loop (`harness.run.parent.loop.run_cases`),
each case held against the single-rank reference the ranks compute under that same
implementation."""

from __future__ import annotations

from collections.abc import Callable

from harness.bisect.implementations import Implementation, References
from harness.case import Case
from harness.records.result import CaseResult
from harness.status import CaseStatus, ReferenceStatus

# Built-in strategies an implementation may lack for an architecture, as skip reasons name them.
SHARDING = {"tp": "tensor-parallel shard()", "pp": "pipeline()"}
# (implementation, cases) -> each case's sharded result by label.
Runner = Callable[[Implementation, list[Case]], dict[str, CaseResult]]


def runner(
    ranks: int, backend: str | None = None, timeout: float = 60.0, keep_outputs: bool = False
) -> Runner:
    """Runs cases sharded on `ranks` ranks; `keep_outputs` keeps every rank's output on its
    result, to hold two implementations' sharded runs against each other."""

    def run(implementation: Implementation, cases: list[Case]) -> dict[str, CaseResult]:
        # Imported here: the run layer loads mlx, which planning a bisect never needs.
        from harness.run.parent.loop import run_cases
        from harness.run.parent.plan import RunOptions

        options = RunOptions(
            ranks=ranks,
            backend=backend,
            timeout=timeout,
            repeats=0,
            goldens=None,  # the bisect holds the references to its own baseline
            python=implementation.python,
            env=implementation.rank_env(),
            impl=dict(implementation.impl or {}),
            keep_outputs=keep_outputs,
        )
        record = run_cases(cases, options)
        return {result.case.label(): result for result in record.results}

    return run


def run_supported(
    run: Runner, implementation: Implementation, refs: References, cases: list[Case]
) -> dict[str, CaseResult]:
    """Run the cases the implementation can shard, by label. A case whose single-rank
    reference did not run is left out (judged on the reference alone); one whose strategy
    the implementation lacks is a skip with the reason, without launching anything."""
    results: dict[str, CaseResult] = {}
    runnable = []
    for case in cases:
        reference = refs.cases.get(case.key())
        if reference is None or reference.status != ReferenceStatus.OK:
            continue
        if case.strategy in SHARDING and case.strategy not in reference.strategies:
            reason = f"{case.arch} has no {SHARDING[case.strategy]} in {implementation.label}"
            results[case.label()] = CaseResult(0, case, 0, CaseStatus.SKIP, reason)
        else:
            runnable.append(case)
    results.update(run(implementation, runnable) if runnable else {})
    return results
