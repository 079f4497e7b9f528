"""What the service's pages show, read from one harness database: the HUD (each suite's
latest run as a grid, with every row's recent runs), a run with all its cases, one case's
history. Plain functions over a sqlite3 connection (datasette hands them one on its read
thread); they return data for the templates and raise `Missing` or `BadRequest` for the
plugin to answer 404 or 400 with the sentence.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field

from harness.service.plot import Point, RunInfo
from harness.status import FAILING, CaseStatus

STRIP = 10  # runs shown per HUD row: enough to tell a new failure from a flaky one
WINDOW = 90  # runs a chart shows by default
MAX_WINDOW = 2000
PAGE = 50  # rows per page of a history table and its JSON
MAX_PAGE = 1000
# Worst first: a cell that holds several cases shows the worst of them.
SEVERITY = (
    CaseStatus.CRASH,
    CaseStatus.TIMEOUT,
    CaseStatus.ERROR,
    CaseStatus.FAIL,
    CaseStatus.PASS,
    CaseStatus.SKIP,
)


class Missing(LookupError):
    """An id or key that the database does not have (404)."""


class BadRequest(ValueError):
    """A parameter that cannot be used (400)."""


def positive(value: str | None, name: str, default: int, most: int) -> int:
    """A positive integer request parameter, `default` when absent."""
    if value in (None, ""):
        return default
    if not value.isdigit() or int(value) < 1:
        raise BadRequest(f"{name} must be a positive whole number, not '{value}'")
    return min(int(value), most)


def worst(statuses) -> str:
    return min(statuses, key=lambda s: SEVERITY.index(s) if s in SEVERITY else len(SEVERITY))


def split_variant(variant: str) -> tuple[str, str]:
    """(what stays in the HUD row, the shape profile): the variant names the shape too."""
    parts = (variant or "base").split(";")
    shape = next((p.split("=", 1)[1] for p in parts if p.startswith("shape=")), "short")
    rest = [p for p in parts if not p.startswith("shape=")]
    return ";".join(rest) or "base", shape


def diagnosis(row: dict) -> str:
    """One line that says why a case is what it is."""
    said = json.loads(row.get("diagnoses") or "[]")
    if said:
        return "; ".join(said)
    reason = (row.get("reason") or "").strip()
    return reason.splitlines()[0] if reason else ""


def run_info(run: dict) -> RunInfo:
    started = run.get("started") or ""
    versions = f"mlx {run.get('mlx_version')}, mlx-lm {run.get('mlx_lm_version')}"
    sha = (run.get("harness_sha") or "unknown")[:10]
    return RunInfo(
        date=started[5:16].replace("T", " "),
        hover=f"run {run['id']}, {started}, {versions}, harness {sha}",
        versions=versions,
    )


def _rows(conn: sqlite3.Connection, sql: str, params=()) -> list[dict]:
    cursor = conn.execute(sql, params)
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def _marks(ids) -> str:
    return ", ".join("?" for _ in ids)


@dataclass
class Grid:
    """One suite's latest run(s) (one per rank count) as a matrix."""

    kind: str
    suite: str
    runs: list[dict]
    columns: list[tuple[str, str, str, int]]  # (strategy, precision, shape, ranks)
    rows: list[dict] = field(default_factory=list)  # {name, cells: {column: [case]}, strips}
    comparable: bool = False  # its latest run has one before it to compare with


LATEST = """select * from runs where id in (select max(id) from runs where kind != 'bench'
group by kind, suite, ranks) order by suite, kind, ranks"""
CASE_COLUMNS = """run_id, case_key, label, arch, variant, strategy, precision, ranks, status,
diagnoses, reason, golden"""


def hud(conn: sqlite3.Connection, strip: int = STRIP) -> list[Grid]:
    """Every suite's latest run per rank count as one grid, architectures down and
    (strategy, precision, shape, ranks) across; each row with its last `strip` runs."""
    grids: dict[tuple[str, str], Grid] = {}
    for run in _rows(conn, LATEST):
        grid = grids.setdefault(
            (run["kind"], run["suite"]), Grid(run["kind"], run["suite"] or "", [], [])
        )
        grid.runs.append(run)
    for grid in grids.values():
        rows: dict[str, dict] = {}
        columns = set()
        for run in grid.runs:
            cases = _rows(
                conn, f"select {CASE_COLUMNS} from cases where run_id = ? order by idx", [run["id"]]
            )
            for case in cases:
                name, shape = split_variant(case["variant"])
                name = case["arch"] if name == "base" else f"{case['arch']} ({name})"
                column = (case["strategy"], case["precision"], shape, case["ranks"])
                columns.add(column)
                case["diagnosis"] = diagnosis(case)
                row = rows.setdefault(name, {"name": name, "cells": {}, "strips": {}})
                row["cells"].setdefault(column, []).append(case)
            for name, strip_runs in _strips(conn, run, strip).items():
                if name in rows:
                    rows[name]["strips"][run["ranks"]] = strip_runs
        grid.comparable = bool(grid.suite) and comparable(conn, grid.suite)
        grid.columns = sorted(columns, key=lambda c: (c[3], c[0], c[1], c[2]))
        grid.rows = [rows[name] for name in sorted(rows)]
        for row in grid.rows:
            row["trend"] = _trend(row["strips"])
    return list(grids.values())


def _strips(conn, run: dict, strip: int) -> dict[str, list[dict]]:
    """Per HUD row, the worst status of each of the last `strip` runs of this run's
    (kind, suite, ranks), oldest first."""
    recent = _rows(
        conn,
        "select id, started from runs where kind = ? and suite is ? and ranks = ? "
        "and id <= ? order by id desc limit ?",
        [run["kind"], run["suite"], run["ranks"], run["id"], strip],
    )
    ids = [r["id"] for r in recent]
    per_row: dict[str, dict[int, list[str]]] = {}
    for case in _rows(
        conn,
        f"select run_id, arch, variant, status from cases where run_id in ({_marks(ids)})",
        ids,
    ):
        name, _ = split_variant(case["variant"])
        name = case["arch"] if name == "base" else f"{case['arch']} ({name})"
        per_row.setdefault(name, {}).setdefault(case["run_id"], []).append(case["status"])
    return {
        name: [
            {"run_id": r["id"], "started": r["started"], "status": worst(by_run[r["id"]])}
            for r in reversed(recent)
            if r["id"] in by_run
        ]
        for name, by_run in per_row.items()
    }


def _trend(strips: dict[int, list[dict]]) -> str:
    """'new failure' when only the latest run fails, 'flaky' when the status flipped more
    than once in the strip, '' otherwise."""
    words = []
    for runs in strips.values():
        failing = [r["status"] in FAILING for r in runs]
        flips = sum(a != b for a, b in zip(failing, failing[1:], strict=False))
        if flips >= 2:
            words.append("flaky")
        elif failing and failing[-1] and flips == 1 and len(failing) > 1:
            words.append("new failure")
    return ", ".join(sorted(set(words)))


def run_page(conn: sqlite3.Connection, run_id: int) -> tuple[dict, list[dict]]:
    """A run and all its cases (bench cases for a bench run), each case with its one-line
    diagnosis and its worst rank's ladder."""
    runs = _rows(conn, "select * from runs where id = ?", [run_id])
    if not runs:
        raise Missing(f"there is no run {run_id} in this database")
    run = runs[0]
    before = _rows(
        conn,
        "select id from runs where suite is ? and kind = ? and ranks = ? and id < ? "
        "order by id desc limit 1",
        [run["suite"], run["kind"], run["ranks"], run_id],
    )
    run["previous"] = before[0]["id"] if before else None  # what the page compares with
    if run["kind"] == "bench":
        return run, _rows(conn, "select * from bench_cases where run_id = ? order by idx", [run_id])
    cases = _rows(conn, "select * from cases where run_id = ? order by idx", [run_id])
    for case in cases:
        case["diagnosis"] = diagnosis(case)
    if run["kind"] == "explore":
        # What the search found, shrunk, with what it learned and the command to rerun it.
        found = _rows(conn, "select * from explore_failures where run_id = ? order by id", [run_id])
        for failure in found:
            failure["learned"] = "; ".join(json.loads(failure["learned"] or "[]"))
        run["explore_failures"] = found
    return run, cases


HISTORY = """select r.id as run_id, r.started, r.suite, r.kind, r.mlx_version,
  r.mlx_lm_version, r.harness_sha, r.hosts, r.backend, c.strategy, c.ranks, c.status,
  c.max_abs, c.kl_max, c.top1, c.golden, c.golden_max_abs, c.prefill_tok_s, c.decode_tok_s,
  c.diagnoses, c.reason, c.label, c.first_divergent_layer, c.first_divergent_part
from cases c join runs r on r.id = c.run_id
where c.case_key = ? and r.id < ?
order by r.id desc, c.idx
limit ?"""


def case_history(conn, case_key: str, before: int | None, size: int) -> tuple[list[dict], int]:
    """A page of a case's rows, newest first, from runs before `before`; and the run id
    the next page starts below (0 when this is the last page)."""
    rows = _rows(conn, HISTORY, [case_key, before or 2**62, size + 1])
    if not rows and before is None:
        raise Missing(f"there is no case with key '{case_key}' in this database")
    more = len(rows) > size
    rows = rows[:size]
    for row in rows:
        row["diagnosis"] = diagnosis(row)
    return rows, (rows[-1]["run_id"] if more else 0)


def case_chart(conn, case_key: str, window: int) -> tuple[dict, dict, dict[int, RunInfo]]:
    """Prefill and decode series of a case over its last `window` runs: one series per
    (strategy, ranks); and what the x axis says of each run."""
    ids = _rows(
        conn,
        "select distinct run_id from cases where case_key = ? order by run_id desc limit ?",
        [case_key, window],
    )
    oldest = ids[-1]["run_id"] if ids else 0
    rows = _rows(conn, HISTORY.replace("r.id < ?", "r.id >= ?"), [case_key, oldest, -1])
    prefill: dict[str, list[Point]] = {}
    decode: dict[str, list[Point]] = {}
    runs: dict[int, RunInfo] = {}
    for row in reversed(rows):
        name = f"{row['strategy']}, {row['ranks']} rank(s)"
        failing = row["status"] if row["status"] in FAILING else None
        prefill.setdefault(name, []).append(Point(row["run_id"], row["prefill_tok_s"], failing))
        decode.setdefault(name, []).append(Point(row["run_id"], row["decode_tok_s"], failing))
        runs[row["run_id"]] = run_info({**row, "id": row["run_id"]})
    return prefill, decode, runs


def last_failure(conn, case_key: str) -> dict | None:
    """The newest failing row of a case with its ladder: every rank's metrics."""
    rows = _rows(
        conn,
        f"""select c.run_id, c.label, c.status, c.diagnoses, c.reason, c.metrics, c.golden,
  c.golden_max_abs, c.first_divergent_layer, c.first_divergent_part, r.started
from cases c join runs r on r.id = c.run_id
where c.case_key = ? and c.status in ({_marks(FAILING)}) order by c.run_id desc limit 1""",
        [case_key, *FAILING],
    )
    if not rows:
        return None
    row = rows[0]
    row["diagnosis"] = diagnosis(row)
    row["ladder"] = [
        {"rank": rank, **(comparison.get("metrics") or {})}
        for rank, comparison in sorted(json.loads(row["metrics"] or "{}").items())
    ]
    return row


def latest_pair(conn, suite: str) -> tuple[int, int]:
    """The latest run of a suite and the one before it on the same kind and rank count."""
    rows = _rows(
        conn, "select id, kind, ranks from runs where suite = ? order by id desc limit 1", [suite]
    )
    if not rows:
        raise Missing(f"there is no run of suite '{suite}' in this database")
    latest = rows[0]
    before = _rows(
        conn,
        "select id from runs where suite = ? and kind = ? and ranks = ? and id < ? "
        "order by id desc limit 1",
        [suite, latest["kind"], latest["ranks"], latest["id"]],
    )
    if not before:
        raise Missing(
            f"suite '{suite}' has one {latest['kind']} run on {latest['ranks']} rank(s): "
            "nothing to compare it with yet"
        )
    return before[0]["id"], latest["id"]


def comparable(conn, suite: str) -> bool:
    """Whether `latest_pair` has a pair for the suite (a link to it is no dead end)."""
    try:
        latest_pair(conn, suite)
    except Missing:
        return False
    return True


def comparable_suites(conn) -> list[str]:
    """The suites whose latest run has one before it, by name."""
    suites = [r["suite"] for r in _rows(conn, "select distinct suite from runs order by 1")]
    return [s for s in suites if s and comparable(conn, s)]
