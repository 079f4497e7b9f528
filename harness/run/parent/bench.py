"""Running bench cases: check that each one applies (before anything launches), then time
them all, in this process for one local rank or in ONE launch of the worker's `bench` job
(`harness.run.rank.bench`) for several, yielding one result per bench case as it finishes.

A bench case that crashes or hangs costs only itself: it is recorded with the ranks' words
and log tails, and the cases after it run in a fresh launch.
"""

from __future__ import annotations

import dataclasses
import signal
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

from harness.case import BenchCase
from harness.errors import HarnessError, blame
from harness.models import checkpoint
from harness.models.build import tiny_config
from harness.records.bench import CRASH, ERROR, OK, TIMEOUT, BenchResult
from harness.run.parent import launch
from harness.run.parent.hosts import check_hosts
from harness.run.parent.plan import skip_reason
from harness.strategies import BUILTIN, normalize, resolve

GRACE = 5.0  # seconds to let the other ranks' error frames and exits arrive


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

    def target(self) -> launch.Target:
        return launch.Target(self.ranks, self.backend, self.hostfile, self.python, self.env)


def validate(
    benches: list[BenchCase], options: BenchOptions
) -> tuple[list[BenchCase], BenchOptions]:
    """Every bench case that cannot run is the user's mistake, in one sentence, before
    anything launches: a strategy that does not apply at the rank count (or does not
    import), lengths beyond the model's context, options the launch cannot take. Returns
    the cases with strategies made absolute (every rank resolves the same file) and the
    options with the rank count a hostfile sets."""
    ranks = launch.rank_count(options.ranks, options.timeout, options.backend, options.hostfile)
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
        launch.find_launcher(options.python)
    if options.hostfile is not None or options.python is not None:
        check_hosts(options.target())
    return checked, options


def run_bench(benches: list[BenchCase], options: BenchOptions) -> Iterator[BenchResult]:
    """Time validated bench cases (see `validate`), one result per case as it finishes."""
    if options.target().in_process:
        yield from _in_process(benches)
    else:
        yield from _Launches(benches, options).results()


def _in_process(benches: list[BenchCase]) -> Iterator[BenchResult]:
    import mlx.core as mx

    from harness.run.rank import bench as rank_bench  # the one rank is this process

    group = mx.distributed.init()
    for index, bench in enumerate(benches):
        started = time.perf_counter()
        try:
            trials = rank_bench.gather(rank_bench.time_case(bench, group), group)
        except Exception as exc:
            status, reason = blame(exc)
            if status == ERROR and not isinstance(exc, HarnessError):
                reason += "\n--- traceback ---\n" + "".join(traceback.format_exception(exc))
            yield BenchResult(index, bench, 1, status, f"rank 0 {reason}")
            continue
        duration = time.perf_counter() - started
        yield BenchResult(index, bench, 1, OK, trials=trials, duration=duration)


class _Launches:
    """The bench cases of one run on its ranks, through as many launches as crashes need."""

    def __init__(self, benches: list[BenchCase], options: BenchOptions):
        self.benches, self.options = benches, options
        self.target = options.target()
        self.remaining = list(range(len(benches)))
        self.last = time.perf_counter()
        self.errors: list[dict] = []  # the error frames of the latest launch

    def results(self) -> Iterator[BenchResult]:
        stalled = 0
        while self.remaining:
            before = len(self.remaining)
            # The launcher spins as it does under mlx_lm.benchmark run by hand: bench times
            # what users see (on one machine its threads take CPU from the ranks).
            job = launch.Job(self.target, self._spec(), quiet_launcher=False)
            try:
                yield from self._consume(job)
            finally:
                job.kill()
            stalled = stalled + 1 if len(self.remaining) == before else 0
            if stalled == 2:
                # Two launches in a row timed nothing: stop rather than loop.
                reason = self._failure(self.errors, job, False)
                yield self._result(self.remaining.pop(0), ERROR, reason)
                stalled = 0

    def _spec(self) -> dict:
        timeout = self.options.timeout
        return {
            "kind": "bench",
            "cases": [{"index": i, "case": self.benches[i].to_dict()} for i in self.remaining],
            # A hung case leaves every rank's Python stack in its log before the watchdog.
            "dump_after": max(timeout * 0.8, timeout - 2),
        }

    def _result(self, index: int, status: str, reason: str | None = None, **kw) -> BenchResult:
        now = time.perf_counter()
        duration, self.last = now - self.last, now
        bench = self.benches[index]
        return BenchResult(index, bench, self.target.ranks, status, reason, duration=duration, **kw)

    def _consume(self, job: launch.Job) -> Iterator[BenchResult]:
        current, grace = None, None
        errors = self.errors = []
        clock, limit = time.monotonic(), self.options.startup_timeout
        for item in job.messages():
            now = time.monotonic()
            if item is None:
                if grace is not None and now > grace:
                    break
                if grace is None and now - clock > limit:
                    yield self._timed_out(current, job, limit)
                    return
                continue
            message = item[0]
            kind = message["type"]
            if kind == "start":
                current, clock, limit = message["indices"][0], now, self.options.timeout
            elif kind == "result":
                self.remaining.remove(message["index"])
                yield self._result(message["index"], OK, trials=message["trials"])
                current, clock = None, now
            elif kind == "error":
                errors.append(message)
                grace = grace or now + GRACE
            elif kind == "hello":
                clock = now
            elif kind == "end":
                break
        if current is not None:
            self.remaining.remove(current)
            status = CRASH if not errors or any(e["status"] == CRASH for e in errors) else ERROR
            yield self._result(current, status, self._failure(errors, job, True))

    def _timed_out(self, current: int | None, job: launch.Job, limit: float) -> BenchResult:
        time.sleep(0.5)  # the ranks' stack dumps land just before the limit
        job.kill()
        if current is None:
            index = self.remaining.pop(0)
            return self._result(index, TIMEOUT, f"no rank started within {limit:g}s{_tails(job)}")
        self.remaining.remove(current)
        reason = (
            f"bench case did not finish within {limit:g}s (--timeout); each rank's Python "
            f"stack is below{_tails(job)}"
        )
        return self._result(current, TIMEOUT, reason)

    def _failure(self, errors: list[dict], job: launch.Job, started: bool) -> str:
        """Why a launch ended early: what the ranks said, how ranks that said nothing
        ended, then every rank's log tail."""
        job.settle()
        reported = {e["rank"] for e in errors}
        parts = []
        for rank, code in sorted(job.exit_codes().items()):
            if rank in reported:
                continue
            # mlx.launch ends the other ranks with SIGTERM once one rank exits.
            if code < 0 and code != -signal.SIGTERM:
                parts.append(f"rank {rank} killed by {signal.Signals(-code).name}")
            elif code > 0:
                parts.append(f"rank {rank} exited with code {code}")
        # A peer's death surfaces on the survivors as a lost connection: list it last.
        errors = sorted(errors, key=lambda e: "connection to a peer" in e["reason"])
        parts += [f"rank {e['rank']} {e['reason']}" for e in errors]
        if not parts:
            what = "this bench case finished" if started else "any bench case ran"
            parts = [f"the launch ended before {what}"]
        return "; ".join(dict.fromkeys(parts)) + _tails(job)


def _tails(job: launch.Job) -> str:
    out = [
        f"\n--- rank {rank} log ---\n{tail.strip()}"
        for rank, tail in job.log_tails().items()
        if tail.strip()
    ]
    if not job.hello:
        text = "\n".join([*job.output, *job.stderr][-20:]).strip()
        out += [f"\n--- mlx.launch ---\n{text[-1500:]}"] if text else []
    return "".join(out)
