"""The SQLite store (sqlite-utils): runs with their environment, one row per case written
as each case finishes, so a killed run keeps everything it finished."""

from __future__ import annotations

import shlex
from collections.abc import Callable
from pathlib import Path

import sqlite_utils

from harness.errors import HarnessError
from harness.records.provenance import environment
from harness.records.result import FAILING, STATUSES, CaseResult, case_row, now

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


# Schema migrations in order; PRAGMA user_version counts how many have run.
MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [
    _v1,
    _v2_goldens,
    _v3_selftest,
    _v4_reference,
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
) -> int:
    row = {
        "kind": kind,
        "status": "running",
        "suite": suite,
        "ranks": ranks,
        "backend": backend or ("ring" if ranks > 1 else "in-process"),
        "hosts": hosts or "localhost",
        "command": shlex.join(command),
        "started": now(),
        **environment(),
    }
    with db.conn:
        return db["runs"].insert(row).last_pk


def record_case(db, run_id: int, result: CaseResult, extra: dict | None = None) -> None:
    """One case's row, committed at once; `extra` adds columns (a selftest's verdict)."""
    row = {"run_id": run_id, **case_row(result), **(extra or {})}
    with db.conn:
        db["cases"].insert(row)


def finish_run(db, run_id: int, status: str) -> dict:
    counts = {s: 0 for s in STATUSES}
    for row in db.query(
        "select status, count(*) n from cases where run_id = ? group by status", [run_id]
    ):
        counts[row["status"]] = row["n"]
    failed = sum(counts[s] for s in FAILING)
    update = {
        "status": status,
        "finished": now(),
        "cases": sum(counts.values()),
        "passed": counts["pass"],
        "failed": failed,
        "skipped": counts["skip"],
    }
    with db.conn:
        db["runs"].update(run_id, update)
    return update


def get_run(db, run_id: int | None) -> tuple[dict, list[dict]]:
    if run_id is None:
        rows = list(db.query("select id from runs order by id desc limit 1"))
        if not rows:
            raise HarnessError("the database has no runs yet; start one with 'harness run'")
        run_id = rows[0]["id"]
    try:
        run = db["runs"].get(run_id)
    except sqlite_utils.db.NotFoundError:
        raise HarnessError(f"no run with id {run_id} in the database") from None
    cases = list(db.query("select * from cases where run_id = ? order by idx", [run_id]))
    return run, cases
