"""The selftest: proof that the harness catches what it exists to catch.

Every fault of the catalog (`harness.faults.catalog`) runs on the architectures it applies
to, all in ONE launch, through the same runner as any suite; each case is judged against
what the catalog expects:

- a fault is `caught` when its status is the expected one (fail, crash, timeout), every
  expected diagnosis is present and the layer and sub-block named are the injected ones;
  `missed` when it passed; `wrong diagnosis` otherwise (given vs expected is reported);
- a control is `passed`, or a `false alarm`.

A fault of a shape class runs at its shape profile (`long-chunked`, `mixed`, ...), a
serving fault at its smallest scenario (harness.scenario); the others at the default
prompts with fewer decode steps.

Architectures: each fault's representative subset by default (see the catalog), every
architecture it applies to with `all_archs`. Cases whose built-in parallelism breaks a
preflight rule at the rank count are reported as not applicable, never run.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

from harness.case import Case
from harness.errors import HarnessError
from harness.faults.catalog import CATALOG, Fault
from harness.records.result import CaseResult
from harness.run.parent.loop import run_cases
from harness.run.parent.plan import RunOptions, skip_reason
from harness.shapes import get_shape
from harness.status import CaseStatus, SelftestVerdict

DECODE_STEPS = 3
SHORT = {"decode_steps": DECODE_STEPS}  # the default prompts, fewer steps: a faster short


@dataclass
class Planned:
    fault: Fault
    case: Case


@dataclass
class SelftestCase:
    fault: str
    arch: str
    precision: str
    bug_class: str
    control: bool
    verdict: SelftestVerdict
    status: CaseStatus
    expected_status: CaseStatus
    diagnoses: list[str]
    expected_diagnoses: list[str]
    layer: int | None = None  # named by the diagnosis
    part: str | None = None
    expected_layer: int | None = None  # injected
    expected_part: str | None = None
    detail: str = ""  # the first line of the reason

    @property
    def ok(self) -> bool:
        return not self.verdict.bad

    def row(self) -> dict:
        """The columns a selftest case adds to its stored row."""
        return {"verdict": self.verdict, "expected": json.dumps(self.expected())}

    def expected(self) -> dict:
        """What the case was expected to give, as stored beside its row."""
        return {
            "fault": self.fault,
            "bug_class": self.bug_class,
            "status": self.expected_status,
            "diagnoses": self.expected_diagnoses,
            "layer": self.expected_layer,
            "part": self.expected_part,
        }


@dataclass
class SelftestReport:
    ranks: int
    verdicts: list[SelftestCase] = field(default_factory=list)
    not_applicable: list[tuple[str, str, str]] = field(default_factory=list)  # fault, arch, why
    run_id: int | None = None
    seconds: float = 0.0

    @property
    def faults(self) -> list[SelftestCase]:
        return [v for v in self.verdicts if not v.control]

    @property
    def controls(self) -> list[SelftestCase]:
        return [v for v in self.verdicts if v.control]

    @property
    def detection_rate(self) -> float | None:
        """Caught with the expected diagnosis, over the fault cases that ran."""
        return _rate(
            [
                v.verdict == SelftestVerdict.CAUGHT
                for v in self.faults
                if v.verdict != SelftestVerdict.NOT_RUN
            ]
        )

    @property
    def false_alarm_rate(self) -> float | None:
        return _rate(
            [
                v.verdict == SelftestVerdict.FALSE_ALARM
                for v in self.controls
                if v.verdict != SelftestVerdict.NOT_RUN
            ]
        )

    @property
    def ok(self) -> bool:
        return bool(self.verdicts) and all(v.ok for v in self.verdicts)


def _rate(flags: list[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


def plan(
    ranks: int,
    all_archs: bool = False,
    names: list[str] | None = None,
    precision: str | None = None,
) -> tuple[list[Planned], list[tuple[str, str, str]]]:
    """The selftest's cases (crash and timeout faults last: they end their launch) and
    the (fault, arch, reason) pairs that do not apply at `ranks`; every entry at
    `precision` instead of its own when given (how the catalog fares at q4-bf16)."""
    unknown = sorted(set(names or []) - set(CATALOG))
    if unknown:
        raise HarnessError(f"unknown fault '{unknown[0]}'; known: {', '.join(CATALOG)}")
    planned, not_applicable = [], []
    for fault in CATALOG.values():
        if names and fault.name not in names:
            continue
        for arch in fault.archs(all_archs):
            if ranks < fault.min_ranks:
                not_applicable.append((fault.name, arch, f"needs at least {fault.min_ranks} ranks"))
                continue
            # External strategies have no preflight rules: check the parallelism underneath.
            shape = get_shape(fault.shape).fields() if fault.shape else SHORT
            fields = {**fault.precision_fields(precision), **shape, "scenario": fault.scenario}
            base = Case(arch, fault.base, **fields)
            reason = skip_reason(base, ranks)
            if reason is not None:
                not_applicable.append((fault.name, arch, reason))
                continue
            planned.append(Planned(fault, Case(arch, fault.strategy, **fields)))
    planned.sort(key=lambda p: p.fault.expected in (CaseStatus.CRASH, CaseStatus.TIMEOUT))
    return planned, not_applicable


def judge(fault: Fault, result: CaseResult) -> SelftestCase:
    expected = fault.expected_diagnoses(result.ranks)
    first = next((c for c in result.comparisons.values() if not c.passed), None)
    verdict = SelftestCase(
        fault=fault.name,
        arch=result.case.arch,
        precision=result.case.precision,
        bug_class=fault.bug_class,
        control=fault.control,
        verdict=SelftestVerdict.NOT_RUN,
        status=result.status,
        expected_status=fault.expected,
        diagnoses=list(result.diagnoses),
        expected_diagnoses=expected,
        layer=first.first_divergent_layer if first else None,
        part=first.first_divergent_part if first else None,
        expected_layer=fault.layer,
        expected_part=fault.part,
        detail=(result.reason or "").strip().split("\n")[0],
    )
    if result.status in (CaseStatus.SKIP, CaseStatus.ERROR):
        return verdict
    if fault.control:
        passed = result.status == CaseStatus.PASS
        verdict.verdict = SelftestVerdict.PASSED if passed else SelftestVerdict.FALSE_ALARM
        return verdict
    if result.status == CaseStatus.PASS:
        verdict.verdict = SelftestVerdict.MISSED
        return verdict
    # A crash carries no diagnoses: its reason (rank, exception or signal) is what it says.
    given = [*result.diagnoses, verdict.detail]
    found = all(any(e in g for g in given) for e in expected)
    placed = fault.layer is None or (verdict.layer, verdict.part) == (fault.layer, fault.part)
    caught = result.status == fault.expected and found and placed
    verdict.verdict = SelftestVerdict.CAUGHT if caught else SelftestVerdict.WRONG
    return verdict


def run_selftest(
    ranks: int = 2,
    *,
    timeout: float = 60.0,
    all_archs: bool = False,
    names: list[str] | None = None,
    backend: str | None = None,
    hostfile: str | None = None,
    database=None,
    command: list[str] | None = None,
    progress: Callable[[SelftestCase], None] | None = None,
    precision: str | None = None,
) -> SelftestReport:
    """Run the catalog at `ranks` in one launch and judge every case; with a database,
    store it as a run of kind `selftest` with each case's verdict and expectation."""
    planned, not_applicable = plan(ranks, all_archs, names, precision)
    if not planned:
        raise HarnessError(f"no fault of the catalog applies at {ranks} rank(s); try --ranks 2")
    report = SelftestReport(ranks, not_applicable=not_applicable)
    options = RunOptions(
        ranks=ranks, backend=backend, hostfile=hostfile, timeout=timeout, repeats=1, goldens=None
    )

    def on_result(result: CaseResult) -> dict:
        verdict = judge(planned[result.index].fault, result)
        report.verdicts.append(verdict)
        if progress is not None:
            progress(verdict)
        return verdict.row()

    record = run_cases(
        [p.case for p in planned],
        options,
        database,
        kind="selftest",
        suite="selftest",
        command=command or ["harness", "selftest"],
        on_result=on_result,
        judge=lambda results: not report.ok,
    )
    report.run_id, report.seconds = record.run_id, record.seconds
    return report
