"""An explore run: the targets planned (one sentence for what cannot run), one CaseStream
for every example of every target (the ranks keep each model while its examples run),
the corpus replayed first, each target searched for its share of the budget, a failure
shrunk and explained, everything stored through the one run loop as a run of kind
`explore`."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from harness import suites
from harness.case import Case
from harness.errors import HarnessError
from harness.explore import corpus, learn, repro
from harness.explore.search import Found, Memo, Searched, Target, search
from harness.explore.space import Boundaries, Example, operations
from harness.models.build import tiny_config
from harness.records import store
from harness.records.result import CaseResult
from harness.run.parent.loop import recording
from harness.run.parent.plan import RunOptions, skip_reason
from harness.run.parent.stream import CaseStream
from harness.strategies import normalize


class ExampleRole(StrEnum):
    """How an example came to run (`cases.explore`)."""

    DRAWN = "drawn"  # by hypothesis: searching or shrinking
    REPLAY = "replay"  # a stored failure of the corpus, run first
    NEIGHBOUR = "neighbour"  # asked about a shrunk failure (harness.explore.learn)


@dataclass
class ExploreOptions:
    budget: float  # seconds of drawing, shared by the targets
    seed: int
    db_path: Path
    flags: repro.RunFlags
    # A failure found may shrink for this long past its target's share of the budget.
    shrink: float | None = None

    def __post_init__(self) -> None:
        if not self.budget > 0:
            raise HarnessError(f"--budget must be a number of seconds above 0, got {self.budget:g}")

    @property
    def shrink_s(self) -> float:
        return self.budget if self.shrink is None else self.shrink


@dataclass
class Explored:
    run_id: int | None
    seed: int
    searched: list[Searched] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (target, why)
    seconds: float = 0.0
    launches: int = 0
    status: str = "interrupted"
    # Every example stored, whichever target's and however it came to run (counted as
    # each is stored, so an interrupted search counts what it ran).
    examples: int = 0
    operations: int = 0

    @property
    def failures(self) -> list[Found]:
        return [s.found for s in self.searched if s.found is not None]


def case_of(target: Target, example: Example) -> Case:
    """The case an example runs as on the ranks."""
    return Case(
        arch=target.arch,
        strategy=target.strategy,
        **suites.parse_precision(example.precision),
        scenario=example.scenario,
        tolerance=dict(target.tolerance),
    )


def plan_targets(
    archs: list[str],
    strategy: str | None,
    precisions: list[str],
    ranks: int,
    tolerance: tuple[tuple[str, float], ...] = (),
) -> tuple[list[Target], list[tuple[str, str]]]:
    """Every architecture under the strategy given (else tp and pp, where the installed
    mlx-lm has them) at these precisions; what cannot run at `ranks` is skipped with the
    reason (a suite's Metal-only architecture on this CPU is skipped, the others explored).
    An unknown architecture, strategy or precision is one sentence."""
    for label in precisions:
        suites.parse_precision(label)
    targets, skipped = [], []
    for arch in archs:
        suites.get_arch(arch)
        for name in [strategy] if strategy else ["tp", "pp"]:
            target = Target(arch, normalize(name), tuple(precisions))
            why = skip_reason(case_of(target, Example(precisions[0], _PLAIN)), ranks)
            if why:
                skipped.append((target.key, why))
                continue
            config = tiny_config(Case(arch))
            bounds = Boundaries.from_config(config)
            targets.append(
                Target(target.arch, target.strategy, target.precisions, bounds, tolerance)
            )
    return targets, skipped


def nothing_to_explore(ranks: int, skipped: list[tuple[str, str]]) -> HarnessError:
    """A plan with no target left: one sentence with each target's reason."""
    reasons = "; ".join(f"{key}: {why}" for key, why in skipped)
    return HarnessError(f"nothing to explore at {ranks} rank(s): {reasons}")


_PLAIN = {"kind": "batch", "prompts": [8], "prefill_step": 2048, "decode": 1}


def explore(
    targets: list[Target],
    options: ExploreOptions,
    run_options: RunOptions,
    database,
    *,
    command: list[str],
    on_searched: Callable[[Searched], None] = lambda searched: None,
) -> Explored:
    """Search every target through one CaseStream, storing each example as it runs."""
    started = time.monotonic()
    explored = Explored(None, options.seed)
    hypothesis_db = corpus.hypothesis_database(options.db_path)
    suite = ",".join(sorted({t.arch for t in targets}))
    with (
        CaseStream(run_options) as stream,
        recording(run_options, database, kind="explore", suite=suite, command=command) as run,
    ):
        explored.run_id = run.record.run_id
        role = [ExampleRole.DRAWN]

        def keep(example: Example, result: CaseResult) -> None:
            result.index = len(run.record.results)
            run.add(result, {"explore": role[0]})
            explored.examples += 1
            explored.operations += operations(example.scenario)

        try:
            for left, target in enumerate(targets):
                role[0] = ExampleRole.DRAWN
                memo = Memo(lambda example, t=target: stream.run([case_of(t, example)])[0], keep)
                share = (options.budget - (time.monotonic() - started)) / (len(targets) - left)
                searched = _replay(target, memo, database, role) or search(
                    target,
                    memo,
                    budget_s=max(share, 0.0),
                    shrink_s=options.shrink_s,
                    seed=options.seed,
                    database=hypothesis_db,
                )
                explored.searched.append(searched)
                if searched.found is not None:
                    role[0] = ExampleRole.NEIGHBOUR
                    _record_failure(searched, memo, options, database, explored)
                on_searched(searched)
        finally:
            explored.launches = stream.launches
            explored.seconds = time.monotonic() - started
            if database is not None and explored.run_id is not None:
                store.record_explore(
                    database, explored.run_id, explored.examples, explored.operations, []
                )
        run.judge(lambda results: bool(explored.failures))
    explored.status = run.record.status
    return explored


def _replay(target: Target, memo: Memo, database, role: list[str]) -> Searched | None:
    """The corpus's failures for this target, run first; the first that still fails is
    this target's finding (already shrunk), without a search."""
    if database is None:
        return None
    role[0] = ExampleRole.REPLAY
    start = time.monotonic()
    for example in corpus.replays(database, target):
        result = memo(example)
        if result.failed:
            found = Found(target, example, result, first_seen=example)
            return Searched(target, memo.examples, memo.operations, time.monotonic() - start, found)
    role[0] = ExampleRole.DRAWN
    return None


def _record_failure(searched: Searched, memo: Memo, options, database, explored) -> None:
    found = searched.found
    learn.learn(found, memo)
    searched.examples, searched.operations = memo.examples, memo.operations
    command = reproduction(found, options.flags)
    if database is not None:
        row = corpus.failure_row(found, command, explored.examples)
        store.record_explore(
            database, explored.run_id, explored.examples, explored.operations, [row]
        )


def reproduction(found: Found, flags: repro.RunFlags) -> str:
    target, example = found.target, found.example
    return repro.command(target.arch, target.strategy, example.precision, example.scenario, flags)
