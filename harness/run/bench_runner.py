"""Running bench cases: check each one applies (before anything launches), then time them
all, in-process for one rank or in ONE mlx.launch job for several, yielding one result per
bench case as it finishes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, replace

import mlx.core as mx

from harness.bench_case import BenchCase
from harness.errors import HarnessError, describe
from harness.models import checkpoint
from harness.models.build import tiny_config
from harness.records.bench import ERROR, OK, BenchResult
from harness.run import bench as rank_bench
from harness.run.runner import skip_reason
from harness.run.strategy import BUILTIN, normalize, resolve


@dataclass
class BenchOptions:
    ranks: int = 1
    backend: str | None = None
    hostfile: str | None = None
    # Seconds one bench case (load, warm-up and every trial) may take on the ranks.
    timeout: float = 600.0


def validate(benches: list[BenchCase], ranks: int) -> list[BenchCase]:
    """Every bench case that cannot run at `ranks` is the user's mistake, in one sentence:
    a strategy that does not apply (or does not import), a model that does not fit the
    rank count, lengths beyond the model's context. Returns them with strategies made
    absolute, so every rank resolves the same file."""
    if ranks < 1:
        raise HarnessError(f"--ranks must be at least 1, got {ranks}")
    checked = []
    for bench in benches:
        case = bench.case
        name = normalize(case.strategy)
        if name not in BUILTIN:
            resolve(name)
        case = replace(case, strategy=name)
        reason = skip_reason(case, ranks)
        if reason is not None:
            raise HarnessError(
                f"{bench.label()}: strategy '{case.strategy}' cannot run at {ranks} rank(s): "
                f"{reason}"
            )
        config = checkpoint.case_config(case) if case.checkpoint else tiny_config(case)
        bench.check_context(config)
        checked.append(replace(bench, case=case))
    return checked


def run_bench(benches: list[BenchCase], options: BenchOptions) -> Iterator[BenchResult]:
    """Time validated bench cases (see `validate`), one result per case as it finishes."""
    if options.ranks == 1:
        yield from _in_process(benches)
    else:
        raise HarnessError("multi-rank bench needs the launch API")


def _in_process(benches: list[BenchCase]) -> Iterator[BenchResult]:
    group = mx.distributed.init()
    for index, bench in enumerate(benches):
        started = time.perf_counter()
        try:
            trials = rank_bench.gather(rank_bench.time_case(bench, group), group)
        except Exception as exc:
            yield BenchResult(
                index,
                bench,
                1,
                ERROR,
                f"rank 0 raised {describe(exc)}",
                duration=time.perf_counter() - started,
            )
            continue
        yield BenchResult(
            index, bench, 1, OK, trials=trials, duration=time.perf_counter() - started
        )
