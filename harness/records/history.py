"""What changed between two runs (`harness compare`), from one database or two: cases that
started or stopped failing, new diagnoses, goldens whose check changed, and tok/s drops
beyond noise (`harness.records.noise`). A nightly job compares with the previous night.

Cases match on (case key, strategy): the key names the numbers, never the rank count, so a
run on 2 ranks still compares with one on 4 (their throughput is not compared).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from harness.errors import HarnessError
from harness.records import noise, store
from harness.records.result import FAILING

# Golden checks that fail a case; moving into one of them is a regression.
GOLDEN_FAILING = ("mismatch", "corrupt")


@dataclass
class Change:
    label: str
    what: str  # "newly failing", "fixed", "status", "new diagnosis", "golden", "prefill tok/s", ...
    before: str | None
    after: str | None
    regressed: bool


@dataclass
class RunComparison:
    run_a: dict
    run_b: dict
    matched: int
    changes: list[Change] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def regressed(self) -> bool:
        return any(change.regressed for change in self.changes)


def open_existing(path: str | Path):
    store.require_existing(path)
    return store.open_db(path)


def resolve_run(db, spec: str, where: str) -> tuple[dict, list[dict]]:
    """A run by id, or by suite name for that suite's latest run."""
    if spec.isdigit():
        return store.get_run(db, int(spec))
    rows = list(db.query("select id from runs where suite = ? order by id desc limit 1", [spec]))
    if not rows:
        raise HarnessError(f"no run with id or suite '{spec}' in {where}")
    return store.get_run(db, rows[0]["id"])


def _diagnoses(row: dict) -> list[str]:
    return json.loads(row.get("diagnoses") or "[]")


def _samples(row: dict, part: str) -> list[float]:
    """tok/s of every timed call of rank 0 (the rank whose rates the row shows)."""
    timings = json.loads(row.get("timings") or "{}").get("ranks") or {}
    rank = timings.get("0") or {}
    return noise.rates(rank.get(f"{part}_tok_s"), rank.get(f"{part}_samples"))


def _status_change(a: dict, b: dict) -> Change | None:
    failing_a, failing_b = a["status"] in FAILING, b["status"] in FAILING
    if failing_b and not failing_a:
        why = "; ".join(_diagnoses(b)) or (b["reason"] or "").splitlines()[0]
        return Change(b["label"], "newly failing", a["status"], f"{b['status']}: {why}", True)
    if failing_a and not failing_b:
        return Change(b["label"], "fixed", a["status"], b["status"], False)
    if a["status"] != b["status"]:
        return Change(b["label"], "status", a["status"], b["status"], False)
    return None


def _case_changes(a: dict, b: dict) -> list[Change]:
    changes = [_status_change(a, b)]
    new = [d for d in _diagnoses(b) if d not in _diagnoses(a)]
    if new and a["status"] in FAILING and b["status"] in FAILING:
        changes.append(
            Change(b["label"], "new diagnosis", "; ".join(_diagnoses(a)), "; ".join(new), True)
        )
    if a["golden"] and b["golden"] and a["golden"] != b["golden"]:
        regressed = b["golden"] in GOLDEN_FAILING and a["golden"] not in GOLDEN_FAILING
        changes.append(Change(b["label"], "golden", a["golden"], b["golden"], regressed))
    return [change for change in changes if change is not None]


def _throughput(result: RunComparison, pairs: list[tuple[dict, dict]]) -> None:
    """tok/s regressions of the matched cases measured on the same rank count, judged
    together: the other cases tell how much the machine itself moved (see `noise`)."""
    samples = {
        (i, part): (_samples(a, part), _samples(b, part))
        for i, (a, b) in enumerate(pairs)
        if a["ranks"] == b["ranks"]
        for part in ("prefill", "decode")
    }
    verdicts, drift = noise.regressions(samples)
    for (i, part), verdict in verdicts.items():
        if verdict.regressed:
            a, b = pairs[i]
            before = f"{a[f'{part}_tok_s']:,.0f}"
            after = f"{b[f'{part}_tok_s']:,.0f}: {verdict.reason}"
            result.changes.append(Change(b["label"], f"{part} tok/s", before, after, True))
    if drift is None:
        result.notes.append(f"tok/s not compared: fewer than {noise.MIN_CASES} measured cases")
    elif drift.ratio < noise.RATIO or drift.ratio > 1 / noise.RATIO:
        result.notes.append(
            f"every case ran at about {drift.ratio:.2f}x the baseline's tok/s: a different or "
            "busier machine, or a change that slowed everything alike (not flagged per case)"
        )


def compare_runs(
    run_a: dict, cases_a: list[dict], run_b: dict, cases_b: list[dict]
) -> RunComparison:
    """Everything that changed from run A (the baseline) to run B."""
    by_key_a = {(c["case_key"], c["strategy"]): c for c in cases_a}
    by_key_b = {(c["case_key"], c["strategy"]): c for c in cases_b}
    result = RunComparison(run_a, run_b, len(by_key_a.keys() & by_key_b.keys()))
    pairs = []
    for key, b in by_key_b.items():
        a = by_key_a.get(key)
        if a is None:
            failing = b["status"] in FAILING
            result.changes.append(Change(b["label"], "added", None, b["status"], failing))
        else:
            result.changes += _case_changes(a, b)
            pairs.append((a, b))
    for key, a in by_key_a.items():
        if key not in by_key_b:
            result.changes.append(Change(a["label"], "removed", a["status"], None, False))
    _throughput(result, pairs)
    return result
