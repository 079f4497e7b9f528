"""The sharded side of a bisect step: the cases on real ranks under the implementation's
Python, through the one run loop (`harness.run.parent.loop.run_cases`), each case held against
the single-rank reference the ranks compute under that same implementation."""

from __future__ import annotations

from harness.bisect.implementations import Implementation
from harness.case import Case
from harness.records.result import CaseResult


def runner(ranks: int, backend: str | None = None, timeout: float = 60.0):
    """A `Sharded` callback for `harness.bisect.versions.bisect_versions`."""

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
        )
        record = run_cases(cases, options)
        return {result.case.label(): result for result in record.results}

    return run
