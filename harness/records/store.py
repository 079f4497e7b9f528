"""The SQLite store (sqlite-utils): runs with their environment, one row per case written
as each case finishes, so a killed run keeps everything it finished."""

from __future__ import annotations

import json
import shlex
import sqlite3
from collections.abc import Callable
from pathlib import Path

import sqlite_utils

from harness.errors import HarnessError
from harness.records.bench import BenchResult, bench_row
from harness.records.provenance import environment
from harness.records.result import CaseResult, case_row, now
from harness.status import FAILING, BenchStatus, CaseStatus, RunStatus

DEFAULT_DB = "harness.db"


def _v1(db: sqlite_utils.Database) -> None:
    db["runs"].create(
        {
            "id": int,
            "kind": str,
            "status": str,
            "suite": str,
            "command": str,
            "ranks": int,
            "backend": str,
            "hosts": str,
            "started": str,
            "finished": str,
            "harness_sha": str,
            "harness_version": str,
            "mlx_version": str,
            "mlx_lm_version": str,
            "python": str,
            "platform": str,
            "cases": int,
            "passed": int,
            "failed": int,
            "skipped": int,
        },
        pk="id",
    )
    db["cases"].create(
        {
            "id": int,
            "run_id": int,
            "idx": int,
            "case_key": str,
            "label": str,
            "arch": str,
            "variant": str,
            "strategy": str,
            "ranks": int,
            "dtype": str,
            "quant": int,
            "precision": str,
            "seed": int,
            "status": str,
            "reason": str,
            "diagnoses": str,
            "warnings": str,
            "max_abs": float,
            "rel": float,
            "cosine": float,
            "kl_max": float,
            "top1": float,
            "decode_max_abs": float,
            "tokens_match": int,
            "first_divergent_layer": int,
            "first_divergent_part": str,
            "metrics": str,
            "prefill_tok_s": float,
            "decode_tok_s": float,
            "peak_memory": int,
            "ref_prefill_tok_s": float,
            "ref_decode_tok_s": float,
            "ref_peak_memory": int,
            "timings": str,
            "duration_s": float,
            "finished": str,
            "case": str,
        },
        pk="id",
        foreign_keys=[("run_id", "runs", "id")],
    )
    db["cases"].create_index(["run_id"])
    db["cases"].create_index(["case_key"])


def _v2_goldens(db: sqlite_utils.Database) -> None:
    db["cases"].add_column("golden", str)
    db["cases"].add_column("golden_max_abs", float)


def _v3_selftest(db: sqlite_utils.Database) -> None:
    # A selftest case knows what it should have produced and whether it did.
    db["cases"].add_column("expected", str)
    db["cases"].add_column("verdict", str)


def _v4_reference(db: sqlite_utils.Database) -> None:
    # What a case was held against: the single-rank run, its golden, another strategy.
    db["cases"].add_column("reference", str)


def _v5_bench(db: sqlite_utils.Database) -> None:
    # `harness bench`: runs of kind "bench", one bench_cases row per (model, strategy,
    # shapes) and every rank's every trial in bench_trials, as mlx-lm's generation reports
    # them (tok/s, seconds, GB).
    db["bench_cases"].create(
        {
            "id": int,
            "run_id": int,
            "idx": int,
            "bench_key": str,
            "case_key": str,
            "label": str,
            "arch": str,
            "variant": str,
            "precision": str,
            "strategy": str,
            "ranks": int,
            "prompt_tokens": int,
            "generation_tokens": int,
            "batch_size": int,
            "prefill_step_size": int,
            "num_trials": int,
            "warmup": int,
            "status": str,
            "reason": str,
            "duration_s": float,
            "finished": str,
            "bench": str,
        },
        pk="id",
        foreign_keys=[("run_id", "runs", "id")],
    )
    db["bench_cases"].create_index(["run_id"])
    db["bench_cases"].create_index(["bench_key"])
    db["bench_trials"].create(
        {
            "id": int,
            "run_id": int,
            "bench_case_id": int,
            "rank": int,
            "trial": int,
            "prompt_tps": float,
            "generation_tps": float,
            "ttft_s": float,
            "peak_memory_gb": float,
            "wall_s": float,
        },
        pk="id",
        foreign_keys=[("run_id", "runs", "id"), ("bench_case_id", "bench_cases", "id")],
    )
    db["bench_trials"].create_index(["bench_case_id"])
    # One row per raw sample with its shapes: what `compare` and the service read.
    db.create_view(
        "bench_samples",
        """select c.run_id, c.idx, c.bench_key, c.label, c.arch, c.variant, c.precision,
       c.strategy, c.ranks, c.prompt_tokens, c.generation_tokens, c.batch_size,
       c.prefill_step_size, t.rank, t.trial, t.prompt_tps, t.generation_tps, t.ttft_s,
       t.peak_memory_gb, t.wall_s
from bench_trials t join bench_cases c on c.id = t.bench_case_id""",
    )
    # The tok/s `harness run` keeps are bare model calls on the comparison shapes (a fixed
    # batch of short prompts, a few cached decode steps), not generation tok/s as users
    # quote them (those are bench_samples): this view names them for what they are.
    db.create_view(
        "model_call_throughput",
        """select run_id, idx, label, strategy, ranks,
       prefill_tok_s as model_call_prefill_tok_s, decode_tok_s as model_call_decode_tok_s,
       ref_prefill_tok_s as reference_model_call_prefill_tok_s,
       ref_decode_tok_s as reference_model_call_decode_tok_s, peak_memory
from cases""",
    )


def _v6_location(db: sqlite_utils.Database) -> None:
    # Where a failing scenario case first went wrong (JSON, records.scenario.locate).
    db["cases"].add_column("location", str)


def _v7_explore(db: sqlite_utils.Database) -> None:
    # `harness explore`: runs of kind "explore" count the examples and operations they ran;
    # each example is a case row saying how it came to run (drawn, replayed, a neighbour
    # asked about a failure); each failure found keeps its shrunk form in explore_failures.
    db["runs"].add_column("examples", int)
    db["runs"].add_column("operations", int)
    db["cases"].add_column("explore", str)
    db["explore_failures"].create(
        {
            "id": int,
            "run_id": int,
            "target": str,
            "arch": str,
            "strategy": str,
            "precision": str,
            "scenario": str,
            "first_seen": str,
            "status": str,
            "reason": str,
            "location": str,
            "learned": str,
            "command": str,
            "examples_before": int,
            "shrinks": int,
            "found": str,
        },
        pk="id",
        foreign_keys=[("run_id", "runs", "id")],
    )
    db["explore_failures"].create_index(["target"])


# Schema migrations in order; PRAGMA user_version counts how many have run.
MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [
    _v1,
    _v2_goldens,
    _v3_selftest,
    _v4_reference,
    _v5_bench,
    _v6_location,
    _v7_explore,
]


def open_db(path: str | Path) -> sqlite_utils.Database:
    try:
        db = sqlite_utils.Database(path)
        current = db.execute("PRAGMA user_version").fetchone()[0]
    except Exception as exc:
        raise HarnessError(f"cannot open database '{path}': {exc}") from None
    # WAL: each case's commit is cheap and a killed harness still keeps every commit.
    db.enable_wal()
    for step, migrate in enumerate(MIGRATIONS[current:], start=current + 1):
        with db.conn:
            migrate(db)
            db.execute(f"PRAGMA user_version = {step}")
    return db


def start_run(
    db,
    kind: str,
    suite: str | None,
    ranks: int,
    backend: str | None,
    hosts: str | None,
    command: list[str],
    versions: dict | None = None,
) -> int:
    """A new run's row; `versions` replaces this process's mlx / mlx-lm versions when the
    cases ran under another environment (a bisect step)."""
    row = {
        "kind": kind,
        "status": RunStatus.RUNNING,
        "suite": suite,
        "ranks": ranks,
        "backend": backend or ("ring" if ranks > 1 else "in-process"),
        "hosts": hosts or "localhost",
        "command": shlex.join(command),
        "started": now(),
        **environment(),
        **(versions or {}),
    }
    with db.conn:
        return db["runs"].insert(row).last_pk


def record(db, run_id: int, result: CaseResult | BenchResult, extra: dict | None = None) -> None:
    """One result's row, committed at once, whatever the run's kind: a case (`extra` adds
    columns, a selftest's verdict), or a bench case with all its trials."""
    with db.conn:
        if isinstance(result, BenchResult):
            case_id = db["bench_cases"].insert({"run_id": run_id, **bench_row(result)}).last_pk
            db["bench_trials"].insert_all(
                {"run_id": run_id, "bench_case_id": case_id, **trial} for trial in result.trials
            )
        else:
            db["cases"].insert({"run_id": run_id, **case_row(result), **(extra or {})})


SECOND_LOOK = "second_look"  # the key of a second look's timings in a case's `timings`


def add_second_look(db, run_id: int, idx: int, rank_timings: dict) -> None:
    """Keep a case's timings from a second look in the same run (beside its first: the
    run-to-run diff reads the faster, harness.records.rundiff)."""
    rows = list(
        db.query("select id, timings from cases where run_id = ? and idx = ?", [run_id, idx])
    )
    if not rows:
        return
    timings = json.loads(rows[0]["timings"] or "{}")
    timings[SECOND_LOOK] = {"ranks": rank_timings}
    with db.conn:
        db["cases"].update(rows[0]["id"], {"timings": json.dumps(timings)})


def finish_run(db, run_id: int, status: RunStatus) -> dict:
    """Close a run with its counts: of its cases, or of a bench run's bench cases (every
    bench case applies or the command stopped before launching: none is skipped)."""
    bench = db["runs"].get(run_id)["kind"] == "bench"
    table, statuses = ("bench_cases", BenchStatus) if bench else ("cases", CaseStatus)
    counts = {s: 0 for s in statuses}
    for row in db.query(
        f"select status, count(*) n from {table} where run_id = ? group by status", [run_id]
    ):
        counts[row["status"]] = row["n"]
    passed = counts[BenchStatus.OK] if bench else counts[CaseStatus.PASS]
    update = {
        "status": status,
        "finished": now(),
        "cases": sum(counts.values()),
        "passed": passed,
        "failed": sum(counts.values()) - passed if bench else sum(counts[s] for s in FAILING),
        "skipped": 0 if bench else counts[CaseStatus.SKIP],
    }
    with db.conn:
        db["runs"].update(run_id, update)
    return update


def record_explore(db, run_id: int, examples: int, operations: int, failures: list[dict]) -> None:
    """An explore run's counts, and each failure it found (a row of `explore_failures`
    without run_id and found), committed at once."""
    with db.conn:
        db["runs"].update(run_id, {"examples": examples, "operations": operations})
        db["explore_failures"].insert_all(
            {"run_id": run_id, "found": now(), **failure} for failure in failures
        )


def explore_failures(db, target: str | None = None) -> list[dict]:
    """Stored explore failures, oldest first (of one target when given): the corpus."""
    where, args = ("where target = ?", [target]) if target else ("", [])
    return list(db.query(f"select * from explore_failures {where} order by id", args))


def get_run(db, run_id: int | None, kind: str | None = None) -> tuple[dict, list[dict]]:
    """A run (the latest, of `kind` when given, when `run_id` is None) and its rows: its
    cases, or for a bench run its bench cases, each with its `trials`."""
    if run_id is None:
        where, args = ("where kind = ?", [kind]) if kind else ("", [])
        rows = list(db.query(f"select id from runs {where} order by id desc limit 1", args))
        if not rows:
            command = f"harness {kind or 'run'}"
            what = f"{kind} runs" if kind else "runs"
            raise HarnessError(f"the database has no {what} yet; start one with '{command}'")
        run_id = rows[0]["id"]
    try:
        run = db["runs"].get(run_id)
    except sqlite_utils.db.NotFoundError:
        raise HarnessError(f"no run with id {run_id} in the database") from None
    if kind is not None and run["kind"] != kind:
        raise HarnessError(f"run {run_id} is a '{run['kind']}' run, not a {kind} run")
    if run["kind"] != "bench":
        return run, list(db.query("select * from cases where run_id = ? order by idx", [run_id]))
    cases = list(db.query("select * from bench_cases where run_id = ? order by idx", [run_id]))
    trials: dict[int, list[dict]] = {c["id"]: [] for c in cases}
    for trial in db.query(
        "select * from bench_trials where run_id = ? order by bench_case_id, rank, trial", [run_id]
    ):
        trials[trial["bench_case_id"]].append(trial)
    return run, [{**c, "trials": trials[c["id"]]} for c in cases]


def require_existing(path: str | Path) -> None:
    """A harness database must already be at `path` (for readers: opening one with
    `open_db` would create or migrate it)."""
    path = Path(path)
    if not path.is_file():
        raise HarnessError(f"no database at {path}; 'harness run --db {path}' creates one")
    try:
        with sqlite3.connect(f"file:{path.resolve()}?mode=ro", uri=True) as conn:
            tables = {row[0] for row in conn.execute("select name from sqlite_master")}
    except sqlite3.DatabaseError as exc:
        raise HarnessError(f"{path} is not a SQLite database ({exc})") from None
    if not {"runs", "cases"} <= tables:
        raise HarnessError(f"{path} is not a harness database: it has no runs and cases tables")


def require_current(path: str | Path) -> None:
    """For a reader that must not write (the service): the harness database at `path` has
    every migration, else one sentence on how to bring it up to date."""
    require_existing(path)
    with sqlite3.connect(f"file:{Path(path).resolve()}?mode=ro", uri=True) as conn:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version < len(MIGRATIONS):
        raise HarnessError(
            f"{path} was written by an older harness (schema {version} of {len(MIGRATIONS)}); "
            f"'harness report --db {path}' brings it up to date"
        )
