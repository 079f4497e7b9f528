"""The SQLite store (sqlite-utils): runs with their environment, one row per case written
as each case finishes, so a killed run keeps everything it finished."""

from __future__ import annotations

import json
import platform
import shlex
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import sqlite_utils

from harness.errors import HarnessError
from harness.runner import CaseResult

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


# Schema migrations in order; PRAGMA user_version counts how many have run.
MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [_v1, _v2_goldens, _v3_selftest]


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


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _package(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def git_sha() -> str | None:
    repo = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def environment() -> dict:
    return {
        "harness_sha": git_sha(),
        "harness_version": _package("harness"),
        "mlx_version": _package("mlx"),
        "mlx_lm_version": _package("mlx-lm"),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


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
        "started": _now(),
        **environment(),
    }
    with db.conn:
        return db["runs"].insert(row).last_pk


def record_case(
    db, run_id: int, result: CaseResult, verdict: str | None = None, expected: dict | None = None
) -> None:
    """One case's row; a selftest adds its verdict and what the case was expected to give."""
    worst = result.worst
    m = worst.metrics if worst else None
    sharded = result.rank_timings.get(0) or next(iter(result.rank_timings.values()), None)
    ref = result.reference_timings
    row = {
        "run_id": run_id,
        "idx": result.index,
        "case_key": result.case.key(),
        "label": result.case.label(),
        "arch": result.case.arch,
        "variant": result.case.variant,
        "strategy": result.case.strategy,
        "ranks": result.ranks,
        "dtype": result.case.dtype,
        "quant": result.case.quant,
        "precision": result.case.precision,
        "seed": result.case.seed,
        "status": result.status,
        "reason": result.reason,
        "diagnoses": json.dumps(result.diagnoses),
        "warnings": json.dumps(result.warnings),
        "metrics": json.dumps({r: c.to_dict() for r, c in result.comparisons.items()}),
        "timings": json.dumps(
            {"reference": ref.to_dict() if ref else None, "ranks": result.rank_timings}
        ),
        "duration_s": result.duration,
        "finished": _now(),
        "case": json.dumps(result.case.to_dict()),
        "verdict": verdict,
        "expected": json.dumps(expected) if expected is not None else None,
    }
    if m is not None:
        row.update(
            {
                k: getattr(m, k)
                for k in ("max_abs", "rel", "cosine", "kl_max", "top1", "decode_max_abs")
            }
        )
        row["tokens_match"] = int(m.tokens_match)
        row["first_divergent_layer"] = worst.first_divergent_layer
        row["first_divergent_part"] = worst.first_divergent_part
    if result.golden is not None:
        row["golden"] = result.golden.status
        if result.golden.comparison is not None:
            row["golden_max_abs"] = result.golden.comparison.metrics.max_abs
    if sharded:
        row.update(
            prefill_tok_s=sharded["prefill_tok_s"],
            decode_tok_s=sharded["decode_tok_s"],
            peak_memory=sharded["peak_memory"],
        )
    if ref:
        row.update(
            ref_prefill_tok_s=ref.prefill_tok_s,
            ref_decode_tok_s=ref.decode_tok_s,
            ref_peak_memory=ref.peak_memory,
        )
    with db.conn:
        db["cases"].insert(row)


def finish_run(db, run_id: int, status: str) -> dict:
    counts = {s: 0 for s in ("pass", "fail", "skip", "crash", "timeout", "error")}
    for row in db.query(
        "select status, count(*) n from cases where run_id = ? group by status", [run_id]
    ):
        counts[row["status"]] = row["n"]
    failed = counts["fail"] + counts["crash"] + counts["timeout"] + counts["error"]
    update = {
        "status": status,
        "finished": _now(),
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
