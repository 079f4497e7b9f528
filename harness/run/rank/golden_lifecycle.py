"""Single-rank references computed here, and the golden lifecycle commands built on them:
record the missing goldens, update on purpose, verify every golden, diff against a fresh
reference. The file format and the check itself live in `harness.records.goldens`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from harness.case import Case
from harness.errors import HarnessError, describe
from harness.records.goldens import (
    CorruptGolden,
    GoldenCheck,
    GoldenDiff,
    check,
    diff,
    has_obtained,
    paths,
    save,
    stored_case,
    stored_keys,
)
from harness.records.ladder import tolerance_for
from harness.records.outputs import Output
from harness.run.rank.one_case import run_case
from harness.status import GoldenStatus
from harness.zoo import support


@dataclass
class GoldenAction:
    """What `record` / `update` / `verify` did with one golden."""

    key: str
    case: Case | None  # None when the sidecar is too damaged to rebuild the case
    status: GoldenStatus  # record: WRITTEN | EXISTS; update: UPDATED | WRITTEN; verify: the
    # check's; any: UNAVAILABLE (this machine cannot compute the case)
    check: GoldenCheck | None = None


def reference_output(case: Case) -> Output:
    output, _ = run_case(Case.from_dict({**case.to_dict(), "strategy": "none"}), None, repeats=0)
    return output


def unique_cases(cases: list[Case]) -> list[Case]:
    """One case per key: goldens do not depend on the strategy."""
    seen: dict[str, Case] = {}
    for case in cases:
        seen.setdefault(case.key(), case)
    return list(seen.values())


def _unavailable(case: Case, reason: str) -> GoldenAction:
    return GoldenAction(
        case.key(),
        case,
        GoldenStatus.UNAVAILABLE,
        GoldenCheck(case.key(), GoldenStatus.UNAVAILABLE, reason),
    )


def _computed(cases: list[Case], actions: list[GoldenAction]):
    """(case, reference) for each unique case this machine can compute; a case it cannot
    (architecture missing, a loader that differs in this mlx-lm) becomes `unavailable` and
    the others go on."""
    for case in unique_cases(cases):
        status = support(case.arch)
        if not status.available:
            actions.append(_unavailable(case, status.reason))
            continue
        try:
            output = reference_output(case)
        except HarnessError as exc:
            actions.append(_unavailable(case, str(exc)))
            continue
        except Exception as exc:
            actions.append(_unavailable(case, f"the reference cannot run here: {describe(exc)}"))
            continue
        yield case, output


def record(cases: list[Case], directory: Path) -> list[GoldenAction]:
    """Write the goldens that are missing; existing ones are kept untouched."""
    actions: list[GoldenAction] = []
    missing = []
    for case in unique_cases(cases):
        if paths(case.key(), directory)[1].exists():
            actions.append(GoldenAction(case.key(), case, GoldenStatus.EXISTS))
        else:
            missing.append(case)
    for case, output in _computed(missing, actions):
        save(case, output, directory)
        actions.append(GoldenAction(case.key(), case, GoldenStatus.WRITTEN))
    return actions


def update(cases: list[Case], reason: str, directory: Path) -> list[GoldenAction]:
    """Rewrite goldens on purpose; the reason goes into each sidecar's history."""
    if not reason or not reason.strip():
        raise HarnessError("updating goldens needs a non-empty --reason")
    actions: list[GoldenAction] = []
    for case, output in _computed(cases, actions):
        existed = paths(case.key(), directory)[1].exists()
        save(case, output, directory, reason=reason if existed else None)
        actions.append(
            GoldenAction(
                case.key(), case, GoldenStatus.UPDATED if existed else GoldenStatus.WRITTEN
            )
        )
    return actions


def verify(cases: list[Case] | None, directory: Path) -> list[GoldenAction]:
    """Recompute each case's reference and hold it against its golden. Without cases,
    every stored golden is verified from the case recorded in its sidecar."""
    actions: list[GoldenAction] = []
    if cases is None:
        cases = []
        for key in stored_keys(directory):
            try:
                cases.append(stored_case(key, directory))
            except CorruptGolden as exc:
                actions.append(
                    GoldenAction(
                        key,
                        None,
                        GoldenStatus.CORRUPT,
                        GoldenCheck(key, GoldenStatus.CORRUPT, str(exc)),
                    )
                )
    for case, output in _computed(cases, actions):
        tol = tolerance_for(case.precision, case.tolerance)
        result = check(case, output, tol, directory)
        actions.append(GoldenAction(case.key(), case, result.status, result))
    return sorted(actions, key=lambda a: a.key)


def diff_golden(key: str, directory: Path) -> GoldenDiff:
    """The golden against its `obtained` file, or against a reference recomputed now."""
    fresh = None
    if not has_obtained(key, directory):
        fresh = reference_output(stored_case(key, directory))
    return diff(key, fresh, directory)
