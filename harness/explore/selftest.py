"""explore's selftest: proof that the search finds and shrinks what it exists to find.

Every catalog fault that records its smallest scenario (`Fault.scenario`: batch width, the
cache's growth step, a request leaving, a reused prefix) is explored on the architectures
it applies to, within a budget each: `caught` when explore finds it and shrinks it to an
example no larger than the entry's (rows, then prompt tokens, then steps: `space.size`),
`not shrunk` when what it found is larger, `missed` when it finds nothing. mlx-lm's own
tp and pp on the same architectures are the controls: `passed` when nothing is found,
`false alarm` otherwise. All of it is one explore run: one launch, one stored run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from harness.errors import HarnessError
from harness.explore.runner import Explored, ExploreOptions, explore, plan_targets
from harness.explore.search import Searched, Target
from harness.explore.space import Example, size
from harness.faults.catalog import CATALOG, Fault
from harness.run.parent.plan import RunOptions


class ExploreVerdictWord(StrEnum):
    """What explore's selftest says of a fault's search, or of a control's."""

    CAUGHT = "caught"  # found, and shrunk no larger than the catalog's scenario
    NOT_SHRUNK = "not shrunk"
    MISSED = "missed"
    PASSED = "passed"  # a control: nothing found
    FALSE_ALARM = "false alarm"


GOOD = (ExploreVerdictWord.CAUGHT, ExploreVerdictWord.PASSED)
CONTROLS = ("tp", "pp")


@dataclass
class ExploreVerdict:
    name: str  # the fault, or the control's strategy
    arch: str
    control: bool
    verdict: ExploreVerdictWord
    expected: dict | None  # the catalog's smallest scenario (faults)
    searched: Searched

    @property
    def ok(self) -> bool:
        return self.verdict in GOOD


@dataclass
class ExploreSelftest:
    explored: Explored
    verdicts: list[ExploreVerdict] = field(default_factory=list)
    not_applicable: list[tuple[str, str]] = field(default_factory=list)  # (target, why)

    @property
    def ok(self) -> bool:
        return bool(self.verdicts) and all(v.ok for v in self.verdicts)


def searchable(names: list[str] | None = None) -> list[Fault]:
    """The catalog's faults that record their smallest scenario (or those named)."""
    faults = [f for f in CATALOG.values() if f.scenario is not None and not f.control]
    return [f for f in faults if names is None or f.name in names]


def judge(fault: Fault | None, searched: Searched) -> ExploreVerdictWord:
    found = searched.found
    if fault is None:
        return ExploreVerdictWord.PASSED if found is None else ExploreVerdictWord.FALSE_ALARM
    if found is None:
        return ExploreVerdictWord.MISSED
    expected = Example(fault.precision, fault.scenario)
    if size(found.example) <= size(expected):
        return ExploreVerdictWord.CAUGHT
    return ExploreVerdictWord.NOT_SHRUNK


def run_explore_selftest(
    ranks: int,
    budget: float,
    options: ExploreOptions,
    run_options: RunOptions,
    database,
    *,
    command: list[str],
    all_archs: bool = False,
    names: list[str] | None = None,
    on_searched=lambda searched: None,
) -> ExploreSelftest:
    """Explore every searchable fault on its architectures and the controls on theirs,
    `budget` seconds of search each, in one explore run."""
    planned: list[tuple[Fault | None, Target]] = []
    not_applicable: list[tuple[str, str]] = []
    archs: list[str] = []
    for fault in searchable(names):
        for arch in fault.archs(all_archs):
            targets, skipped = _plan(arch, fault.strategy, fault.precision, ranks)
            planned += [(fault, t) for t in targets]
            not_applicable += skipped
            archs += [arch] if arch not in archs else []
    for arch in archs:
        for strategy in CONTROLS:
            targets, skipped = _plan(arch, strategy, "fp32", ranks)
            planned += [(None, t) for t in targets]
            not_applicable += skipped
    options.budget = budget * len(planned)
    options.shrink = budget
    explored = explore(
        [t for _, t in planned],
        options,
        run_options,
        database,
        command=command,
        on_searched=on_searched,
    )
    report = ExploreSelftest(explored, not_applicable=not_applicable)
    for (fault, target), searched in zip(planned, explored.searched, strict=False):
        name = fault.name if fault else target.strategy
        expected = fault.scenario if fault else None
        verdict = judge(fault, searched)
        report.verdicts.append(
            ExploreVerdict(name, target.arch, fault is None, verdict, expected, searched)
        )
    return report


def _plan(arch: str, strategy: str, precision: str, ranks: int):
    """The one target of a fault or control on an architecture, or why it cannot run."""
    try:
        return plan_targets([arch], strategy, [precision], ranks)
    except HarnessError as exc:
        return [], [(f"{arch}/{strategy}", str(exc))]
