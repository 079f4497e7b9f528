"""Bisecting published mlx-lm releases: which release changed which architecture.

Each release is a step: its environment runs every chosen case once (memoized, so the
searches of all architectures share it), and each case is judged against the baseline.
Each architecture is bisected on its own cases, so one run finds every architecture's
change, each at its own release; what changed is the ladder of metrics between the last
good and the first bad release's references, with the first layer where they diverge.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from harness.bisect import implementations, releases
from harness.bisect.judge import BASELINES, CaseVerdict, group_verdict, judge_case
from harness.bisect.search import Bisection, bisect
from harness.bisect.sharded import Runner, run_supported
from harness.case import Case
from harness.errors import HarnessError
from harness.records.ladder import Comparison, compare, tolerance_for
from harness.records.outputs import Output
from harness.status import StepVerdict


@dataclass
class Step:
    release: str
    refs: implementations.References
    verdicts: list[CaseVerdict]
    seconds: float  # environment (cold or cached) plus running the cases
    env_reused: bool


@dataclass
class Finding:
    arch: str
    outcome: str  # "found" | "unchanged" | "unjudgeable"
    detail: str
    bisection: Bisection | None = None
    changed: list[tuple[Case, Comparison]] = field(default_factory=list)


@dataclass
class VersionsBisect:
    releases: list[str]
    findings: list[Finding]
    steps: dict[str, Step]
    seconds: float


def bisect_versions(
    cases: list[Case],
    good: str,
    bad: str,
    inverse: bool = False,
    baseline: str = "goldens",
    goldens_dir: Path | None = None,
    impl: dict[str, str] | None = None,
    sharded: Runner | None = None,
    on_step: Callable[[Step], None] | None = None,
    timeout: float = implementations.DEFAULT_TIMEOUT,
) -> VersionsBisect:
    if baseline not in BASELINES:
        raise HarnessError(f"--baseline is one of {', '.join(BASELINES)}, not '{baseline}'")
    implementations.check_timeout(timeout)
    started = time.perf_counter()
    items = releases.between(good, bad, inverse)
    steps: dict[str, Step] = {}
    baselines: dict[str, Output | Path | None] = {}
    unique = list({case.key(): case for case in cases}.values())
    made: dict[str, tuple[implementations.Implementation, implementations.References, float]] = {}

    def references(version: str):
        if version not in made:
            began = time.perf_counter()
            implementation = implementations.release(version)
            implementation.impl = dict(impl or {})  # the same model files in every release
            refs = implementations.references(implementation, unique, timeout)
            made[version] = (implementation, refs, time.perf_counter() - began)
        return made[version]

    def step(version: str) -> Step:
        if version not in steps:
            steps[version] = _judge_step(version, references(version), cases, baselines, sharded)
            if on_step is not None:
                on_step(steps[version])
        return steps[version]

    if baseline == "good":
        _, refs, _ = references(good)
        for case in cases:
            reference = refs.cases.get(case.key())
            baselines[case.key()] = reference.output if reference else None
    else:
        baselines.update({case.key(): goldens_dir for case in cases})
    findings = [
        _bisect_arch(arch, group, items, step, inverse) for arch, group in _by_arch(cases).items()
    ]
    return VersionsBisect(items, findings, steps, time.perf_counter() - started)


def _by_arch(cases: list[Case]) -> dict[str, list[Case]]:
    groups: dict[str, list[Case]] = {}
    for case in cases:
        groups.setdefault(case.arch, []).append(case)
    return groups


def _judge_step(version: str, made, cases: list[Case], baselines: dict, sharded) -> Step:
    implementation, refs, seconds = made
    started = time.perf_counter()
    runs = run_supported(sharded, implementation, refs, cases) if sharded else {}
    verdicts = [
        judge_case(case, refs, baselines.get(case.key()), runs.get(case.label())) for case in cases
    ]
    env = implementation.env
    seconds += time.perf_counter() - started
    return Step(version, refs, verdicts, seconds, bool(env and env.reused))


def _bisect_arch(arch: str, group: list[Case], items: list[str], step, inverse: bool) -> Finding:
    labels = {case.label() for case in group}

    def judge(version: str) -> StepVerdict:
        return group_verdict([v for v in step(version).verdicts if v.case.label() in labels])

    def reasons(version: str) -> str:
        found = {v.detail for v in step(version).verdicts if v.case.label() in labels}
        return "; ".join(sorted(d for d in found if d))

    old_state, new_state = (
        (StepVerdict.BAD, StepVerdict.GOOD) if inverse else (StepVerdict.GOOD, StepVerdict.BAD)
    )
    since = ""
    if judge(items[0]) == StepVerdict.SKIP:
        # Added to mlx-lm after the old endpoint: bisect from the first release that has it.
        first = _first_runnable(items, judge)
        if first is None:
            return Finding(
                arch, "unjudgeable", f"no release in range runs it: {reasons(items[-1])}"
            )
        since = f" (first runnable in mlx-lm {items[first]})"
        items = items[first:]
    old, new = judge(items[0]), judge(items[-1])
    if new == StepVerdict.SKIP:
        return Finding(arch, "unjudgeable", f"mlx-lm {items[-1]}: {reasons(items[-1])}")
    if old == new:
        return Finding(arch, "unchanged", f"{old} from {items[0]} to {items[-1]}{since}")
    if old == new_state:
        return Finding(arch, "unjudgeable", f"{old} at {items[0]} but {new} at {items[-1]}{since}")
    if len(items) < 2:
        return Finding(arch, "unjudgeable", f"only mlx-lm {items[0]} runs it{since}")
    result = bisect(items, judge, inverse, label=lambda v: f"mlx-lm {v}")
    changed = []
    before, after = step(result.last_old).refs, step(result.first_new).refs
    for case in group:
        a, b = before.cases.get(case.key()), after.cases.get(case.key())
        if a and b and a.output is not None and b.output is not None:
            tol = tolerance_for(case.precision, case.tolerance)
            comparison = compare(a.output, b.output, tol, world=1)
            if not comparison.passed:
                changed.append((case, comparison))
    detail = f"{'fixed' if inverse else 'changed'} in mlx-lm {result.first_new}{since}"
    return Finding(arch, "found", detail, result, changed)


def _first_runnable(items: list[str], judge) -> int | None:
    """The first release that can run the group, by binary search: an architecture, once
    added, stays (the old endpoint cannot run it, the new one can, or none can)."""
    if judge(items[-1]) == StepVerdict.SKIP:
        return None
    low, high = 0, len(items) - 1  # low skips, high runs
    while high - low > 1:
        middle = (low + high) // 2
        if judge(items[middle]) == StepVerdict.SKIP:
            low = middle
        else:
            high = middle
    return high
