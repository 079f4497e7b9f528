"""Bench results and the side-by-side table: median, spread, ratio to the first strategy,
and whether a difference is within noise.

The numbers are rank 0's (what `mlx_lm.benchmark` prints); every rank's raw trials are
kept in the result and the store. Noise rule: two strategies' tok/s differ beyond noise
only when their sample ranges (min to max over the trials) do not overlap. With 5 trials
each that is a distribution-free test: two samples of one distribution fail to overlap
with probability 2 / C(10, 5) < 1%.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field

from harness.case import BenchCase
from harness.records.result import now
from harness.status import BenchStatus

METRICS = ("prompt_tps", "generation_tps", "ttft_s")


@dataclass
class BenchResult:
    """One bench case's outcome: every rank's trials, or why there are none."""

    index: int
    bench: BenchCase
    ranks: int
    status: BenchStatus
    reason: str | None = None
    trials: list[dict] = field(default_factory=list)  # {rank, trial, prompt_tps, ...}
    duration: float = 0.0

    @property
    def failed(self) -> bool:
        return self.status != BenchStatus.OK


@dataclass(frozen=True)
class Spread:
    median: float
    low: float
    high: float

    @classmethod
    def of(cls, samples: list[float]) -> Spread:
        return cls(statistics.median(samples), min(samples), max(samples))

    def overlaps(self, other: Spread) -> bool:
        """Within noise of `other`: the two sample ranges overlap (the module's rule)."""
        return self.low <= other.high and other.low <= self.high


@dataclass
class BenchLine:
    """One row of the side-by-side table."""

    index: int
    key: str
    label: str
    strategy: str
    ranks: int
    status: str  # a BenchStatus, as stored
    reason: str | None
    stats: dict[str, Spread]  # METRICS -> rank 0's spread; empty without trials
    peak_memory_gb: dict[int, float]  # per rank, the largest over its trials
    baseline: str | None = None  # the strategy the ratios are to (None: this is it)
    ratios: dict[str, float] = field(default_factory=dict)  # median / baseline's median
    noise: dict[str, bool] = field(default_factory=dict)  # within noise of the baseline


def line_of(
    index: int,
    key: str,
    label: str,
    strategy: str,
    ranks: int,
    status: str,
    reason: str | None,
    trials: list[dict],
) -> BenchLine:
    rank0 = [t for t in trials if t["rank"] == 0]
    stats = {m: Spread.of([t[m] for t in rank0]) for m in METRICS} if rank0 else {}
    peaks: dict[int, float] = {}
    for t in trials:
        peaks[t["rank"]] = max(peaks.get(t["rank"], 0.0), t["peak_memory_gb"])
    return BenchLine(index, key, label, strategy, ranks, status, reason, stats, peaks)


def side_by_side(lines: list[BenchLine]) -> list[BenchLine]:
    """Each line's ratios to the first finished line of the same key (the same model at
    the same shapes): the first strategy given is the baseline."""
    first: dict[str, BenchLine] = {}
    for line in lines:
        if not line.stats:
            continue
        base = first.setdefault(line.key, line)
        if base is line:
            continue
        line.baseline = base.strategy
        for m in METRICS:
            base_median = base.stats[m].median
            line.ratios[m] = line.stats[m].median / base_median if base_median else float("nan")
            line.noise[m] = line.stats[m].overlaps(base.stats[m])
    return lines


def result_line(result: BenchResult) -> BenchLine:
    bench = result.bench
    return line_of(
        result.index,
        bench.key(),
        bench.label(),
        bench.case.strategy,
        result.ranks,
        result.status,
        result.reason,
        result.trials,
    )


def bench_row(result: BenchResult) -> dict:
    """A result as one `bench_cases` row (without run_id); its trials go to `bench_trials`."""
    bench, case = result.bench, result.bench.case
    return {
        "idx": result.index,
        "bench_key": bench.key(),
        "case_key": case.key(),
        "label": bench.label(),
        "arch": case.arch,
        "variant": case.variant,
        "precision": case.precision,
        "strategy": case.strategy,
        "ranks": result.ranks,
        **bench.shapes(),
        "num_trials": bench.num_trials,
        "warmup": bench.warmup,
        "status": result.status,
        "reason": result.reason,
        "duration_s": result.duration,
        "finished": now(),
        "bench": json.dumps(bench.to_dict()),
    }


def row_line(row: dict, trials: list[dict]) -> BenchLine:
    """A stored `bench_cases` row and its trials as a line of the side-by-side table."""
    return line_of(
        row["idx"],
        row["bench_key"],
        row["label"],
        row["strategy"],
        row["ranks"],
        row["status"],
        row["reason"],
        trials,
    )
