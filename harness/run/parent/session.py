"""The cases of a run on its ranks: hand the runnable cases to the ranks (in this process
for one local rank, else through the relaunch driver: one launch, and another after each
crash or hang), watch every case, and judge each rank's output against the case's
reference as it arrives, yielding one result per case.

The parent does no model work: references are computed on the ranks
(`harness.run.rank.cases`), or are the case's golden (`reference="golden"`, for a model no
single host holds), or another strategy on the same ranks (`reference="pp"`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from harness import paths
from harness.case import Case
from harness.errors import HarnessError
from harness.records import goldens, verdict
from harness.records.outputs import Output, Timings
from harness.records.result import CaseResult
from harness.run.parent.hosts import check_hosts
from harness.run.parent.plan import GOLDEN, SINGLE, RunOptions, prepare, skip_reason
from harness.run.parent.relaunch import Relauncher
from harness.run.parent.watch import Watch
from harness.run.protocol import Reference, Result
from harness.status import CaseStatus, ReferenceStatus


def run(cases: list[Case], options: RunOptions) -> Iterator[CaseResult]:
    """Prepare, then run."""
    yield from run_prepared(*prepare(cases, options))


def relauncher(options: RunOptions, keep_open: bool = False) -> Relauncher:
    """The relaunch driver of a run's cases on the options' target."""
    return Relauncher(
        options.target(), options.startup_timeout, options.timeout, keep_open=keep_open
    )


def run_prepared(
    cases: list[Case], options: RunOptions, driver: Relauncher | None = None
) -> Iterator[CaseResult]:
    """Run prepared cases (see `plan.prepare`), one result per case as it finishes, through
    `driver` (one whose job stays open between calls: `CaseStream`) or a new one."""
    runnable = []
    for index, case in enumerate(cases):
        reason = f"known failure: {case.known_failure}" if case.known_failure else None
        reason = reason or skip_reason(case, options.ranks)
        if reason is None and options.reference not in (SINGLE, GOLDEN):
            if options.reference == case.strategy:
                reason = f"the reference strategy is the case's own ({case.strategy})"
            else:
                reason = skip_reason(
                    Case.from_dict({**case.to_dict(), "strategy": options.reference}), options.ranks
                )
                reason = reason and f"reference {options.reference}: {reason}"
        if reason is not None:
            yield CaseResult(index, case, options.ranks, CaseStatus.SKIP, reason)
        else:
            runnable.append((index, case))
    if runnable:
        yield from _Session(runnable, options).results(driver or relauncher(options))


class _Session:
    """The cases of one run on its ranks: the relaunch driver's work (`relaunch.Work`)."""

    def __init__(self, runnable: list[tuple[int, Case]], options: RunOptions):
        self.options = options
        self.target = options.target()
        self.cases = dict(runnable)
        self.remaining = [index for index, _ in runnable]
        # By case key: cases that differ only in strategy share one reference (and the
        # fp32 truth of a low-precision one).
        self.references: dict[str, tuple[Output, Timings | None] | str] = {}
        self.truths: dict[str, Output] = {}
        self.goldens: dict[int, tuple[goldens.Golden, dict] | str] = {}
        self.last = time.perf_counter()

    def spec(self) -> dict:
        """The job spec of the remaining cases (relaunch.Work)."""
        wanted = []
        if self.options.reference == SINGLE:
            first: dict[str, int] = {}
            for i in self.remaining:
                first.setdefault(self.cases[i].key(), i)
            wanted = [i for key, i in first.items() if key not in self.references]
        held = {self.cases[i].key() for i in self.remaining}
        return {
            "kind": "cases",
            "cases": [{"index": i, "case": self.cases[i].to_dict()} for i in self.remaining],
            "references": wanted,
            # The tokens sharded decodes are fed, of references computed in an earlier launch.
            "forced": {
                key: ref[0].tokens.tolist()
                for key, ref in self.references.items()
                if key in held and isinstance(ref, tuple)
            },
            "reference_strategy": None
            if self.options.reference in (SINGLE, GOLDEN)
            else self.options.reference,
            "impl": self.options.impl,
            "capture": self.options.capture,
            "repeats": self.options.repeats,
        }

    # -- driving (relaunch.Work) --------------------------------------------------------

    def results(self, driver: Relauncher) -> Iterator[CaseResult]:
        if self.options.reference == GOLDEN:
            yield from self._load_goldens()
        yield from driver.drive(self)

    def received(self, message, arrays: dict, watch: Watch) -> Iterator[CaseResult]:
        if isinstance(message, Reference):
            self._reference(message, arrays)
        elif isinstance(message, Result):
            self.remaining.remove(message.index)
            yield self._judged(message, arrays, watch)

    def cut_short(self, watch: Watch, unfinished: list[int]) -> Iterator[CaseResult]:
        if watch.timed_out is not None:
            yield from self._timed_out(watch, unfinished)
        else:
            yield from self._died(watch, unfinished)
        if self.remaining and self.target.hostfile is not None:
            try:
                check_hosts(self.target)
            except HarnessError as exc:
                yield from self._not_run(f"not run: {exc}")

    def stalled(self, watch: Watch) -> Iterator[CaseResult]:
        _, reason = watch.failure(started=False)
        yield self._result(self.remaining.pop(0), CaseStatus.ERROR, reason)

    def _not_run(self, reason: str) -> Iterator[CaseResult]:
        """Every remaining case fails with the same fault of the setup."""
        for index in self.remaining:
            yield self._result(index, CaseStatus.ERROR, reason)
        self.remaining = []

    # -- outcomes -----------------------------------------------------------------------

    def _result(self, index: int, status: str, reason: str | None = None, **kw) -> CaseResult:
        now = time.perf_counter()
        duration, self.last = now - self.last, now
        result = CaseResult(index, self.cases[index], self.options.ranks, status, reason, **kw)
        result.duration = duration
        result.reference = self._reference_label(index)
        return result

    def _reference_label(self, index: int) -> str:
        if self.options.reference == GOLDEN:
            stored = self.goldens.get(index)
            if isinstance(stored, tuple):
                meta = stored[1]
                return (
                    f"golden {meta.get('key')} (mlx-lm {meta.get('mlx_lm_version')}, "
                    f"{meta.get('platform')}, {meta.get('created')})"
                )
            return "golden"
        if self.options.reference == SINGLE:
            return "single-rank"
        return f"{self.options.reference} on {self.options.ranks} ranks"

    def _reference(self, message: Reference, arrays: dict) -> None:
        key = self.cases[message.index].key()
        if message.status != ReferenceStatus.OK:
            self.references[key] = message.reason or message.status
            return
        timings = message.timings
        own = {k: v for k, v in arrays.items() if not k.startswith("truth:")}
        self.references[key] = (
            Output.from_arrays(own),
            Timings(**timings) if timings else None,
        )
        truth = {k.removeprefix("truth:"): v for k, v in arrays.items() if k.startswith("truth:")}
        if truth:
            self.truths[key] = Output.from_arrays(truth)

    def _died(self, watch: Watch, indices: list[int]) -> Iterator[CaseResult]:
        """The launch ended inside a case or a reference round, or before any (the ranks
        could not start: a fault of the setup, so every remaining case says so)."""
        if watch.current is None:
            _, reason = watch.failure(started=False)
            yield from self._not_run(f"the ranks failed before any case started: {reason}")
            return
        if watch.current.phase == "reference":
            yield from self._reference_died(indices, watch)
            return
        if not indices:
            return  # ended between cases: the rest re-launch
        index = indices[0]
        self.remaining.remove(index)
        status, reason = watch.failure(started=True)
        yield self._result(index, status, reason)

    def _reference_died(self, indices: list[int], watch: Watch) -> Iterator[CaseResult]:
        """A reference round died: the case the failing rank computed gets the blame (all
        of the round's when that cannot be told); the others run again."""
        failing = watch.failing_ranks()
        culprits = [indices[r] for r in sorted(failing) if r < len(indices)] or indices
        _, reason = watch.failure(started=True)
        keys = {self.cases[i].key() for i in culprits}
        for key in keys:
            self.references[key] = f"the single-rank reference crashed: {reason}"
        for index in [i for i in self.remaining if self.cases[i].key() in keys]:
            self.remaining.remove(index)
            yield self._result(
                index, CaseStatus.ERROR, f"the single-rank reference failed: {reason}"
            )

    def _timed_out(self, watch: Watch, unfinished: list[int]) -> Iterator[CaseResult]:
        limit = watch.timed_out
        if watch.current is None:
            yield from self._not_run(f"the ranks did not start within {limit:g}s{watch.tails()}")
            return
        what = "reference round" if watch.current.phase == "reference" else "case"
        reason = f"{what} did not finish within {limit:g}s; each rank's Python stack is below"
        reason += watch.tails()
        for index in unfinished:
            self.remaining.remove(index)
            if what == "case":
                yield self._result(index, CaseStatus.TIMEOUT, reason)
            else:
                yield self._result(
                    index, CaseStatus.ERROR, f"the single-rank reference timed out: {reason}"
                )

    # -- judging ------------------------------------------------------------------------

    def _judged(self, message: Result, arrays: dict, watch: Watch) -> CaseResult:
        index = message.index
        if message.failures:
            return self._result(index, *watch.in_step(message.failures))
        outputs = verdict.rank_outputs(message.ranks, arrays, "")
        timings = {r["rank"]: r["timings"] for r in message.ranks if r.get("timings")}
        if self.options.reference == GOLDEN:
            stored = self.goldens[index]
            if isinstance(stored, str):
                return self._result(index, CaseStatus.ERROR, stored, rank_timings=timings)
            result = self._result(index, CaseStatus.PASS, rank_timings=timings)
            return verdict.judge_against_golden(result, stored[0], outputs)
        if self.options.reference == SINGLE:
            reference = self.references.get(self.cases[index].key())
            if not isinstance(reference, tuple):
                why = reference or "no single-rank reference arrived"
                return self._result(
                    index,
                    CaseStatus.ERROR,
                    f"the single-rank reference failed: {why}",
                    rank_timings=timings,
                )
            ref_output, ref_timings = reference
        else:
            ref_ranks = message.reference_ranks or []
            ref_outputs = verdict.rank_outputs(ref_ranks, arrays, "ref")
            ref_output = verdict.filled(ref_outputs[0], ref_outputs)
            ref_timings = next(
                (Timings(**r["timings"]) for r in ref_ranks if r.get("timings")), None
            )
        result = self._result(
            index, CaseStatus.PASS, rank_timings=timings, reference_timings=ref_timings
        )
        truth = None
        if self.options.reference == SINGLE:
            truth = self.truths.get(self.cases[index].key())
        requests = {r["rank"]: r.get("requests", []) for r in message.ranks}
        verdict.judge(result, ref_output, outputs, truth, requests)
        if self.options.keep_outputs:
            result.outputs = {rank: verdict.filled(o, outputs) for rank, o in outputs.items()}
        if self.options.reference == SINGLE:
            verdict.against_golden(
                result, ref_output, self.options.goldens, self.options.record_missing
            )
        return result

    def _load_goldens(self) -> Iterator[CaseResult]:
        directory = self.options.goldens or paths.SHIPPED_GOLDENS
        for index in list(self.remaining):
            key = self.cases[index].key()
            try:
                stored = goldens.load(key, directory)
            except goldens.CorruptGolden as exc:
                stored = str(exc)
            if stored is None:
                stored = (
                    f"no golden {key} in {directory} to hold the case against; record it "
                    "where the model fits one host ('harness golden record') or pull it "
                    "from a golden service ('harness golden pull URL')"
                )
            self.goldens[index] = stored
            if isinstance(stored, str):
                self.remaining.remove(index)
                yield self._result(index, CaseStatus.ERROR, stored)
