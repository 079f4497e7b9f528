"""What changed between two runs (`harness compare` and the service's compare page: one
implementation), from one database or two: cases that started or stopped failing, new
diagnoses, goldens whose check changed, added and removed cases, and tok/s drops the
evidence supports (`harness.records.noise.judge`: run B's measures against their history on
B's setup, read from B's database). A nightly job compares with the previous night.

Cases match on (case key, strategy): the key names the numbers, never the rank count, so a
run on 2 ranks still compares with one on 4 (their throughput is not compared).

Bench runs (`harness bench`) compare with bench runs: bench cases match on (bench key,
strategy, ranks), a case that no longer times (crash, timeout, error) is a regression, and
rank 0's prompt and generation tok/s trials go through the same noise rule.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from harness.errors import HarnessError
from harness.records import noise, store
from harness.records.goldens import GOLDEN_FAILING  # moving into one is a regression
from harness.status import FAILING, BenchStatus, CaseStatus


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


Samples = tuple[list[float], list[float]]


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
    """tok/s of every timed call of rank 0 (the rank whose rates the row shows); of the
    faster look where the run took a second one (`second_look`)."""
    timings = json.loads(row.get("timings") or "{}")
    looks = []
    for ranks in (timings.get("ranks"), (timings.get(store.SECOND_LOOK) or {}).get("ranks")):
        rank = (ranks or {}).get("0") or {}
        samples = noise.rates(rank.get(f"{part}_tok_s"), rank.get(f"{part}_samples"))
        if samples:
            looks.append(samples)
    return max(looks, key=statistics.median, default=[])


def clear_drops(db, run_id: int) -> list[tuple[str, str]]:
    """The (case key, strategy) of each case of a stored run whose tok/s fell clearly
    below its history in a part (noise.CLEAR), which a second look should confirm."""
    run, _ = store.get_run(db, run_id)
    verdicts, _ = noise.judge(measured_history(db, run))
    looked = {(key, strategy) for (key, strategy, _), v in verdicts.items() if v.clear or v.look}
    return sorted(looked)


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


def _bench_throughput(result: RunComparison, measured: dict[tuple[int, str, str], Samples]) -> None:
    """Bench tok/s regressions, judged together: (position, label, what) -> (baseline,
    current) samples. The other measures of the comparison tell how much the machine moved."""
    verdicts, drift = noise.regressions(measured)
    for (position, label, what), verdict in verdicts.items():
        if verdict.regressed:
            base, current = measured[(position, label, what)]
            before = f"{statistics.median(base):,.0f}"
            after = f"{statistics.median(current):,.0f}: {verdict.reason}"
            result.changes.append(Change(label, what, before, after, True))
    if drift is None:
        result.notes.append(f"tok/s not compared: fewer than {noise.MIN_CASES} measured cases")
    elif drift.ratio < noise.RATIO or drift.ratio > 1 / noise.RATIO:
        result.notes.append(
            f"every case ran at about {drift.ratio:.2f}x the baseline's tok/s: a different or "
            "busier machine, or a change that slowed everything alike (not flagged per case)"
        )


PARTS = ("prefill", "decode")
SAME_SETUP = ("kind", "ranks", "hosts", "backend", "mlx_version", "mlx_lm_version")


def measured_history(db, run: dict, limit: int = noise.HISTORY + noise.PERSIST) -> noise.Runs:
    """tok/s samples of the runs of `run`'s setup (kind, ranks, hosts, backend, versions)
    up to and including it, oldest first: per run, (case key, strategy, part) -> rank 0's
    samples. A failing case's speed says nothing about the model's, so it is left out."""
    where = " and ".join(f"{column} is ?" for column in SAME_SETUP)
    ids = [
        row["id"]
        for row in db.query(
            f"select id from runs where id <= ? and {where} order by id desc limit ?",
            [run["id"], *(run[column] for column in SAME_SETUP), limit],
        )
    ]
    by_run: dict[int, dict] = {run_id: {} for run_id in reversed(ids)}
    marks = ", ".join("?" for _ in ids)
    left_out = [status for status in FAILING if status != CaseStatus.TIMEOUT]
    for row in db.query(
        f"select run_id, case_key, strategy, status, timings from cases "
        f"where run_id in ({marks}) and status not in ({', '.join('?' for _ in left_out)})",
        [*ids, *left_out],
    ):
        for part in PARTS:
            samples = [] if row["status"] == CaseStatus.TIMEOUT else _samples(row, part)
            if samples or row["status"] == CaseStatus.TIMEOUT:
                by_run[row["run_id"]][(row["case_key"], row["strategy"], part)] = samples
    return list(by_run.values())


def _throughput(result: RunComparison, history: noise.Runs, labels: dict) -> None:
    """tok/s regressions of run B (the newest of `history`) and suspects, with notes."""
    verdicts, drift = noise.judge(history)
    for (case_key, strategy, part), verdict in verdicts.items():
        if not (verdict.regressed or verdict.suspect):
            continue
        what = f"{part} tok/s" + ("" if verdict.regressed else " (suspect)")
        samples = history[-1][(case_key, strategy, part)]
        now = statistics.median(samples) if samples else 0.0
        before = f"{now / verdict.ratio:,.0f} (its history)" if verdict.ratio else "its history"
        after = f"{now:,.0f}: {verdict.reason}" if samples else verdict.reason
        label = labels.get((case_key, strategy), case_key)
        result.changes.append(Change(label, what, before, after, verdict.regressed))
    if drift is None:
        result.notes.append(
            f"tok/s not judged: run B's database holds {len(history) - 1} earlier run(s) of its "
            f"setup; the rule needs {noise.MIN_BASELINE} (a clear drop), "
            f"{noise.MIN_BASELINE + noise.PERSIST - 1} (a smaller drop that persists): see "
            "harness/records/noise.py"
        )
    elif drift < noise.RATIO or drift > 1 / noise.RATIO:
        result.notes.append(
            f"every case ran at about {drift:.2f}x its history's tok/s: a different or "
            "busier machine, or a change that slowed everything alike (not flagged per case)"
        )


def compare_runs(
    run_a: dict,
    cases_a: list[dict],
    run_b: dict,
    cases_b: list[dict],
    history: noise.Runs | None = None,
) -> RunComparison:
    """Everything that changed from run A (the baseline) to run B; tok/s from `history`,
    the measures of B's setup up to B (`measured_history`)."""
    by_key_a = {(c["case_key"], c["strategy"]): c for c in cases_a}
    by_key_b = {(c["case_key"], c["strategy"]): c for c in cases_b}
    result = RunComparison(run_a, run_b, len(by_key_a.keys() & by_key_b.keys()))
    for key, b in by_key_b.items():
        a = by_key_a.get(key)
        if a is None:
            failing = b["status"] in FAILING
            result.changes.append(Change(b["label"], "added", None, b["status"], failing))
        else:
            result.changes += _case_changes(a, b)
    for key, a in by_key_a.items():
        if key not in by_key_b:
            result.changes.append(Change(a["label"], "removed", a["status"], None, False))
    if history is None:
        result.notes.append("tok/s not judged: no history of run B's setup was given")
    else:
        _throughput(result, history, {(c["case_key"], c["strategy"]): c["label"] for c in cases_b})
    return result


BenchCases = list[tuple[dict, list[dict]]]  # stored bench_cases rows, each with its trials
BENCH_MEASURES = {"prompt_tps": "prompt tok/s", "generation_tps": "generation tok/s"}


def _bench_label(row: dict) -> str:
    return f"{row['label']} {row['strategy']} @ {row['ranks']} rank(s)"


def compare_bench_runs(
    run_a: dict, benches_a: BenchCases, run_b: dict, benches_b: BenchCases
) -> RunComparison:
    """Everything that changed from bench run A (the baseline) to bench run B."""
    key = lambda row: (row["bench_key"], row["strategy"], row["ranks"])  # noqa: E731
    by_key_a = {key(row): (row, trials) for row, trials in benches_a}
    by_key_b = {key(row): (row, trials) for row, trials in benches_b}
    result = RunComparison(run_a, run_b, len(by_key_a.keys() & by_key_b.keys()))
    measured: dict[tuple[int, str, str], Samples] = {}
    for position, (k, (b, trials_b)) in enumerate(by_key_b.items()):
        label = _bench_label(b)
        if k not in by_key_a:
            result.changes.append(
                Change(label, "added", None, b["status"], b["status"] != BenchStatus.OK)
            )
            continue
        a, trials_a = by_key_a[k]
        if a["status"] != b["status"]:
            after = f"{b['status']}: {b['reason']}" if b["reason"] else b["status"]
            stopped = a["status"] == BenchStatus.OK
            what = (
                "newly failing"
                if stopped
                else "fixed"
                if b["status"] == BenchStatus.OK
                else "status"
            )
            result.changes.append(Change(label, what, a["status"], after, stopped))
        for column, what in BENCH_MEASURES.items():
            measured[(position, label, what)] = tuple(
                [t[column] for t in trials if t["rank"] == 0] for trials in (trials_a, trials_b)
            )
    for k, (a, _) in by_key_a.items():
        if k not in by_key_b:
            result.changes.append(Change(_bench_label(a), "removed", a["status"], None, False))
    _bench_throughput(result, measured)
    return result


def compare_stored(db_a, spec_a: str, where_a: str, db_b, spec_b: str, where_b: str):
    """Resolve two runs (an id, or a suite for its latest) and compare them: case runs
    with case runs, bench runs with bench runs."""
    run_a, cases_a = resolve_run(db_a, spec_a, where_a)
    run_b, cases_b = resolve_run(db_b, spec_b, where_b)
    bench = {run_a["kind"] == "bench", run_b["kind"] == "bench"}
    if bench == {True, False}:
        raise HarnessError(
            f"run {run_a['id']} is a '{run_a['kind']}' run and run {run_b['id']} a "
            f"'{run_b['kind']}' run: compare bench runs with bench runs"
        )
    if True in bench:
        return compare_bench_runs(
            run_a,
            [(row, row["trials"]) for row in store.get_run(db_a, run_a["id"])[1]],
            run_b,
            [(row, row["trials"]) for row in store.get_run(db_b, run_b["id"])[1]],
        )
    return compare_runs(run_a, cases_a, run_b, cases_b, measured_history(db_b, run_b))
