"""Running bench cases: check that each one applies (before anything launches), then time
them all, in this process for one local rank or in one launch of the worker's `bench` job
(`harness.run.rank.bench`) for several, yielding one result per bench case as it finishes.

A bench case that crashes or hangs costs only itself: it is recorded with the ranks' words
and log tails, and the cases after it run in a fresh launch (the relaunch driver,
`harness.run.parent.relaunch`, as a run's cases do).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

from harness.case import BenchCase
from harness.errors import HarnessError
from harness.models import checkpoint
from harness.models.build import tiny_config
from harness.records.bench import BenchResult
from harness.run.parent.hosts import check_hosts
from harness.run.parent.plan import skip_reason
from harness.run.parent.relaunch import Relauncher
from harness.run.parent.target import Target, find_launcher, rank_count
from harness.run.parent.watch import Watch
from harness.run.protocol import Result
from harness.status import BenchStatus
from harness.strategies import BUILTIN, normalize, resolve


@dataclass
class BenchOptions:
    ranks: int = 1
    backend: str | None = None
    hostfile: str | None = None
    # Seconds one bench case (load, warm-up and every trial) may take on the ranks.
    timeout: float = 600.0
    startup_timeout: float = 120.0  # from launch to the first message
    python: str | None = None  # interpreter of the ranks; None: this one
    env: dict[str, str] = field(default_factory=dict)  # extra environment of the ranks

    def target(self) -> Target:
        return Target(self.ranks, self.backend, self.hostfile, self.python, self.env)


def validate(
    benches: list[BenchCase], options: BenchOptions
) -> tuple[list[BenchCase], BenchOptions]:
    """Every bench case that cannot run is the user's mistake, in one sentence, before
    anything launches: a strategy that does not apply at the rank count (or does not
    import), lengths beyond the model's context, options the launch cannot take. Returns
    the cases with strategies made absolute (every rank resolves the same file) and the
    options with the rank count a hostfile sets."""
    ranks = rank_count(options.ranks, options.timeout, options.backend, options.hostfile)
    options = dataclasses.replace(options, ranks=ranks)
    checked = []
    for bench in benches:
        case = bench.case
        name = normalize(case.strategy)
        if name not in BUILTIN:
            resolve(name)
        case = replace(case, strategy=name)
        reason = skip_reason(case, options.ranks)
        if reason is not None:
            raise HarnessError(
                f"{bench.label()}: strategy '{case.strategy}' cannot run at {options.ranks} "
                f"rank(s): {reason}"
            )
        bench.check_context(checkpoint.case_config(case) if case.checkpoint else tiny_config(case))
        checked.append(replace(bench, case=case))
    if options.ranks > 1:
        find_launcher(options.python)
    if options.hostfile is not None or options.python is not None:
        check_hosts(options.target())
    return checked, options


def run_bench(benches: list[BenchCase], options: BenchOptions) -> Iterator[BenchResult]:
    """Time validated bench cases (see `validate`), one result per case as it finishes."""
    # The launcher spins as it does under mlx_lm.benchmark run by hand: bench times what
    # users see (on one machine its threads take CPU from the ranks).
    driver = Relauncher(
        options.target(), options.startup_timeout, options.timeout, like_mlx_launch=True
    )
    yield from driver.drive(_Benches(benches, options))


class _Benches:
    """The bench cases of one run: the relaunch driver's work (`relaunch.Work`)."""

    def __init__(self, benches: list[BenchCase], options: BenchOptions):
        self.benches, self.options = benches, options
        self.remaining = list(range(len(benches)))
        self.last = time.perf_counter()

    def spec(self) -> dict:
        cases = [{"index": i, "case": self.benches[i].to_dict()} for i in self.remaining]
        return {"kind": "bench", "cases": cases}

    def _result(self, index: int, status: str, reason: str | None = None, **kw) -> BenchResult:
        now = time.perf_counter()
        duration, self.last = now - self.last, now
        bench = self.benches[index]
        return BenchResult(
            index, bench, self.options.ranks, status, reason, duration=duration, **kw
        )

    def received(self, message, arrays: dict, watch: Watch) -> Iterator[BenchResult]:
        if isinstance(message, Result):
            self.remaining.remove(message.index)
            if message.failures:
                yield self._result(message.index, *watch.in_step(message.failures))
            else:
                yield self._result(message.index, BenchStatus.OK, trials=message.trials)

    def cut_short(self, watch: Watch, unfinished: list[int]) -> Iterator[BenchResult]:
        limit = watch.timed_out
        if limit is not None:
            index = unfinished[0] if unfinished else self.remaining[0]
            self.remaining.remove(index)
            if not unfinished:
                reason = f"no rank started within {limit:g}s{watch.tails()}"
            else:
                reason = (
                    f"bench case did not finish within {limit:g}s (--timeout); each rank's "
                    f"Python stack is below{watch.tails()}"
                )
            yield self._result(index, BenchStatus.TIMEOUT, reason)
        elif unfinished:
            self.remaining.remove(unfinished[0])
            yield self._result(unfinished[0], *watch.failure(started=True, what="bench case"))

    def stalled(self, watch: Watch) -> Iterator[BenchResult]:
        _, reason = watch.failure(started=False, what="bench case")
        yield self._result(self.remaining.pop(0), BenchStatus.ERROR, reason)
