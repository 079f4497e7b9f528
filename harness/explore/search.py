"""The search: hypothesis draws examples for one target (architecture, strategy, the
precisions it may draw) and hands each to `evaluate` (the ranks, through a CaseStream; a
pure-Python predicate in tests); the first failure is shrunk to its smallest form.

hypothesis has no time budget of its own. Drawing stops when the budget is spent by
raising `_Stop`, a BaseException hypothesis does not catch: its run ends at once, with
no failure to shrink and nothing reported. A failure found in time may shrink for
`shrink_s` more; past that the smallest failing example seen so far stands (every call
hypothesis makes while shrinking is smaller than the best one so far, so the last failing
call is the best).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from hypothesis import HealthCheck, Phase, Verbosity, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis.database import ExampleDatabase

from harness import scenario as scenarios
from harness.explore.space import Boundaries, Example, examples, operations
from harness.records.result import CaseResult
from harness.status import CaseStatus

# The case an example runs as, on the ranks: built by the caller (it knows the options).
Evaluate = Callable[[Example], CaseResult]


@dataclass(frozen=True)
class Target:
    """What one search explores: an architecture under a strategy, at these precisions."""

    arch: str
    strategy: str
    precisions: tuple[str, ...]
    bounds: Boundaries = Boundaries()
    # The fp32 tolerance its examples are held to ((name, value) pairs: a suite's loosest
    # for this architecture and strategy, as deepseek_v41's compressed attention needs
    # past 39 tokens); none: the precision's own.
    tolerance: tuple[tuple[str, float], ...] = ()

    @property
    def key(self) -> str:
        return f"{self.arch}/{self.strategy}/{'+'.join(self.precisions)}"


@dataclass
class Found:
    """A failure: the example as shrunk, and its result on the ranks."""

    target: Target
    example: Example
    result: CaseResult
    first_seen: Example  # as first drawn, before shrinking
    shrinks: int = 0  # smaller failing examples found while shrinking
    learned: list[str] = field(default_factory=list)


@dataclass
class Searched:
    """One target's search: how much ran and what it found."""

    target: Target
    examples: int = 0  # distinct examples run on the ranks (drawn, replayed, neighbours)
    operations: int = 0
    seconds: float = 0.0
    found: Found | None = None
    exhausted: bool = False  # hypothesis ran out of examples before the budget
    skipped: int = 0  # examples the ranks could not apply
    skip_reason: str | None = None


class _Stop(BaseException):
    """The budget is spent (a BaseException: hypothesis lets it through, unshrunk)."""


class ExampleFailed(Exception):
    """Raised for hypothesis when an example fails on the ranks, so it shrinks it."""


class Memo:
    """Every example's result by (precision, scenario): hypothesis replays its final
    example, and neighbours may repeat a shrink step; the ranks run each once."""

    def __init__(self, evaluate: Evaluate, on_new: Callable[[Example, CaseResult], None]):
        self.evaluate, self.on_new = evaluate, on_new
        self.results: dict[tuple[str, str], CaseResult] = {}
        self.operations = 0  # of the examples run
        # Examples the ranks could not apply (an architecture whose caches cannot merge
        # skips serve programs): how many, and the first one's reason.
        self.skipped = 0
        self.skip_reason: str | None = None

    @property
    def examples(self) -> int:
        """Distinct examples run on the ranks."""
        return len(self.results)

    def __call__(self, example: Example) -> CaseResult:
        key = (example.precision, scenarios.canonical(example.scenario))
        if key not in self.results:
            self.results[key] = self.evaluate(example)
            self.operations += operations(example.scenario)
            if self.results[key].status == CaseStatus.SKIP:
                self.skipped += 1
                self.skip_reason = self.skip_reason or self.results[key].reason
            self.on_new(example, self.results[key])
        return self.results[key]


def search(
    target: Target,
    memo: Memo,
    *,
    budget_s: float,
    shrink_s: float,
    seed: int,
    database: ExampleDatabase | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Searched:
    """Draw examples for `target` until the budget is spent or one fails; shrink it."""
    searched = Searched(target)
    start = clock()
    draw_until = start + budget_s
    shrink_until: list[float] = []

    @settings(
        database=database,
        deadline=None,
        max_examples=10**6,
        derandomize=False,  # `seed` decides, whatever profile the caller loaded
        phases=(Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink),
        suppress_health_check=list(HealthCheck),
        report_multiple_bugs=False,
        print_blob=False,
        verbosity=Verbosity.quiet,
    )
    @hypothesis_seed(seed)
    @given(examples(target.bounds, target.precisions))
    def probe(example: Example) -> None:
        now = clock()
        if now > (shrink_until[0] if shrink_until else draw_until):
            raise _Stop
        result = memo(example)
        if result.failed:
            if searched.found is None:
                shrink_until.append(now + shrink_s)
                searched.found = Found(target, example, result, first_seen=example)
            elif example != searched.found.example:
                searched.found.example, searched.found.result = example, result
                searched.found.shrinks += 1
            raise ExampleFailed(result.reason or result.status)

    # The example database keys a test by its source; the target tells searches apart.
    probe.hypothesis.inner_test._hypothesis_internal_add_digest = target.key.encode()
    try:
        probe()
        searched.exhausted = True
    except (_Stop, ExampleFailed):
        pass
    searched.seconds = clock() - start
    # The memo is this target's: what it ran before (the corpus replayed) counts too.
    searched.examples, searched.operations = memo.examples, memo.operations
    searched.skipped, searched.skip_reason = memo.skipped, memo.skip_reason
    return searched
