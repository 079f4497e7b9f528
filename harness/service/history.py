"""The suite and bench history charts' data: a suite's runs as the geometric mean of their
cases' tok/s, a bench case's runs as rank 0's median trial, each over a window of runs."""

from __future__ import annotations

import statistics

from harness.service import pages
from harness.service.plot import Point, RunInfo, Series
from harness.status import FAILING, BenchStatus


def _geometric_mean(values: list[float]) -> float | None:
    values = [v for v in values if v]
    return statistics.geometric_mean(values) if values else None


def suite_view(rows: list[dict]) -> tuple[Series, Series, list[dict], dict[int, RunInfo]]:
    """Per run, the geometric mean over its cases: the usual summary of a benchmark suite,
    where each case weighs the same whatever its absolute speed."""
    runs: dict[int, dict] = {}
    for row in rows:
        run = runs.setdefault(
            row["run_id"],
            {k: row[k] for k in ("run_id", "started", "ranks", "run_status")}
            | {k: row[k] for k in ("mlx_version", "mlx_lm_version", "harness_sha")}
            | {"cases": 0, "failed": 0, "prefill": [], "decode": []},
        )
        run["cases"] += 1
        run["failed"] += row["status"] in FAILING
        run["prefill"].append(row["prefill_tok_s"])
        run["decode"].append(row["decode_tok_s"])
    prefill, decode, info = {}, {}, {}
    for run in runs.values():
        run["prefill_tok_s"] = _geometric_mean(run.pop("prefill"))
        run["decode_tok_s"] = _geometric_mean(run.pop("decode"))
        name = f"{run['ranks']} rank(s)"
        failing = "failing cases" if run["failed"] else None
        prefill.setdefault(name, []).append(Point(run["run_id"], run["prefill_tok_s"], failing))
        decode.setdefault(name, []).append(Point(run["run_id"], run["decode_tok_s"], failing))
        info[run["run_id"]] = pages.run_info({**run, "id": run["run_id"]})
    return prefill, decode, sorted(runs.values(), key=lambda r: -r["run_id"]), info


def bench_view(samples: list[dict], rows: list[dict]) -> tuple[Series, Series, dict]:
    """Rank 0's median per run, one series per (strategy, ranks), as the bench table shows;
    a bench case that timed nothing (crash, timeout) is a mark on the axis."""
    trials: dict[tuple[str, int], dict[str, list[float]]] = {}
    for row in samples:
        name = f"{row['strategy']}, {row['ranks']} rank(s)"
        per_run = trials.setdefault((name, row["run_id"]), {"prompt": [], "generation": []})
        per_run["prompt"].append(row["prompt_tps"])
        per_run["generation"].append(row["generation_tps"])
    prompt, generation, info = {}, {}, {}
    for row in sorted(rows, key=lambda r: r["run_id"]):
        name = f"{row['strategy']}, {row['ranks']} rank(s)"
        values = trials.get((name, row["run_id"]))
        failing = None if row["status"] == BenchStatus.OK else row["status"]
        for series, part in ((prompt, "prompt"), (generation, "generation")):
            value = statistics.median(values[part]) if values else None
            series.setdefault(name, []).append(Point(row["run_id"], value, failing))
        info[row["run_id"]] = pages.run_info({**row, "id": row["run_id"]})
    return prompt, generation, info


BENCH_SAMPLES = """select run_id, strategy, ranks, prompt_tps, generation_tps from bench_samples
where bench_key = ? and rank = 0 and run_id >= ? order by run_id"""


def window(rows: list[dict], window: int) -> list[dict]:
    """The rows of the newest `window` runs (rows come newest first)."""
    kept = sorted({row["run_id"] for row in rows}, reverse=True)[:window]
    return [row for row in rows if kept and row["run_id"] >= kept[-1]]
