"""The cases of a run on its ranks: hand the runnable cases to the ranks (in this process
for one local rank, else one launch), watch every case, and judge each rank's output
against the case's reference as it arrives, yielding one result per case.

The parent does no model work: references are computed on the ranks
(`harness.run.rank.cases`), or are the case's golden (`reference="golden"`, for a model no
single host holds), or another strategy on the same ranks (`reference="pp"`).
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Iterator

from harness.case import Case
from harness.errors import INTERNAL, HarnessError, blame
from harness.records import goldens, verdict
from harness.records.outputs import Output, Timings
from harness.records.result import CRASH, ERROR, PASS, SKIP, TIMEOUT, CaseResult
from harness.run.parent import launch
from harness.run.parent.hosts import check_hosts
from harness.run.parent.plan import GOLDEN, SINGLE, RunOptions, prepare, skip_reason


def run(cases: list[Case], options: RunOptions) -> Iterator[CaseResult]:
    """Prepare, then run."""
    yield from run_prepared(*prepare(cases, options))


def run_prepared(cases: list[Case], options: RunOptions) -> Iterator[CaseResult]:
    """Run prepared cases (see `plan.prepare`), one result per case as it finishes."""
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
            yield CaseResult(index, case, options.ranks, SKIP, reason)
        else:
            runnable.append((index, case))
    if runnable:
        yield from _Session(runnable, options).results()


def _who(target: launch.Target, rank: int) -> str:
    if target.hostfile is None:
        return f"rank {rank}"
    hosts = target.hosts()
    return f"rank {rank} (host {hosts[rank]})" if rank < len(hosts) else f"rank {rank}"


class _Session:
    """The cases of one run on its ranks, through as many launches as crashes require."""

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

    # -- the stream of messages, in this process or from a launch -----------------------

    def _spec(self) -> dict:
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
            "dump_after": max(self.options.timeout * 0.8, self.options.timeout - 2),
        }

    def _in_process(self, spec: dict):
        import mlx.core as mx

        from harness.run.rank.cases import run_on_rank

        current: dict = {}
        try:
            for message, arrays in run_on_rank(spec, mx.distributed.init()):
                if message["type"] == "start":
                    current = message
                yield message, arrays
        except Exception as exc:
            status, reason = blame(exc)
            yield (
                {
                    "type": "error",
                    "rank": 0,
                    "status": status,
                    "reason": reason,
                    "indices": current.get("indices", []),
                    "phase": current.get("phase"),
                    "traceback": "".join(traceback.format_exception(exc))[-3000:],
                },
                {},
            )
        yield {"type": "end"}, {}

    # -- driving ------------------------------------------------------------------------

    def results(self) -> Iterator[CaseResult]:
        if self.options.reference == GOLDEN:
            yield from self._load_goldens()
        while self.remaining:
            if self.target.in_process:
                yield from self._consume(self._in_process(self._spec()), None)
            else:
                job = launch.Job(self.target, self._spec())
                try:
                    yield from self._consume(job.messages(), job)
                finally:
                    job.kill()
            if self.remaining and self.target.hostfile is not None:
                try:
                    check_hosts(self.target)
                except HarnessError as exc:
                    yield from self._not_run(f"not run: {exc}")

    def _not_run(self, reason: str) -> Iterator[CaseResult]:
        """Every remaining case fails with the same fault of the setup."""
        for index in self.remaining:
            yield self._result(index, ERROR, reason)
        self.remaining = []

    def _consume(self, stream, job: launch.Job | None) -> Iterator[CaseResult]:
        current: dict = {}
        clock, limit = time.monotonic(), self.options.startup_timeout
        errors: list[dict] = []
        grace = None
        for item in stream:
            now = time.monotonic()
            if item is None:
                if grace is not None and now > grace:
                    break
                if grace is None and now - clock > limit:
                    yield from self._timed_out(current, job, limit)
                    return
                continue
            message, arrays = item
            kind = message["type"]
            if kind == "start":
                # Long prompts get their multiple of the per-case limit (Case.watchdog_scale).
                limit = self.options.timeout * message.get("scale", 1)
                current, clock = message, now
            elif kind == "reference":
                self._reference(message, arrays)
                clock = now
            elif kind == "result":
                index = message["index"]
                self.remaining.remove(index)
                yield self._judged(index, message, arrays)
                clock = now
            elif kind == "error":
                errors.append(message)
                grace = now + 5.0  # let the other ranks' error frames and exits arrive
            elif kind == "hello":
                clock = now
            elif kind == "end":
                break
        if errors or self.remaining:
            yield from self._died(current, errors, job)

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

    def _reference(self, message: dict, arrays: dict) -> None:
        key = self.cases[message["index"]].key()
        if message["status"] != "ok":
            self.references[key] = message["reason"]
            return
        timings = message.get("timings")
        own = {k: v for k, v in arrays.items() if not k.startswith("truth:")}
        self.references[key] = (
            Output.from_arrays(own),
            Timings(**timings) if timings else None,
        )
        truth = {k.removeprefix("truth:"): v for k, v in arrays.items() if k.startswith("truth:")}
        if truth:
            self.truths[key] = Output.from_arrays(truth)

    def _died(self, current: dict, errors: list[dict], job: launch.Job | None):
        """The launch ended inside `current` (a case or a reference round), or before any
        (the ranks could not start: a fault of the setup, so every remaining case says so)."""
        if not current:
            _, reason = self._failure(errors, job, started=False)
            yield from self._not_run(f"the ranks failed before any case started: {reason}")
            return
        indices = [i for i in current.get("indices", []) if i in self.remaining]
        if current.get("phase") == "reference":
            yield from self._reference_died(indices, errors, job)
            return
        if not indices:
            return  # ended between cases: the rest re-launch
        index = indices[0]
        self.remaining.remove(index)
        status, reason = self._failure(errors, job, started=True)
        yield self._result(index, status, reason)

    def _reference_died(self, indices: list[int], errors: list[dict], job):
        """A reference round died: the case the failing rank computed gets the blame (all
        of the round's when that cannot be told); the others run again."""
        failing = {e["rank"] for e in errors}
        if job is not None:
            failing |= {r for r, code in job.exit_codes().items() if code != 0}
            failing |= job.killed_ranks()
        culprits = [indices[r] for r in sorted(failing) if r < len(indices)] or indices
        _, reason = self._failure(errors, job, started=True)
        keys = {self.cases[i].key() for i in culprits}
        for key in keys:
            self.references[key] = f"the single-rank reference crashed: {reason}"
        for index in [i for i in self.remaining if self.cases[i].key() in keys]:
            self.remaining.remove(index)
            yield self._result(index, ERROR, f"the single-rank reference failed: {reason}")

    def _failure(self, errors: list[dict], job: launch.Job | None, started: bool):
        """(status, reason) of a launch that ended early: ranks that died without a word
        (a signal, a lost host) first, then what the ranks' error frames said, then every
        rank's log tail."""
        if job is not None:
            job.settle()
        reported = {e["rank"] for e in errors}
        deaths = self._exits(job, reported) if job else []
        # A peer's death surfaces on the survivors as a lost connection: list it last.
        errors = sorted(errors, key=lambda e: "connection to a peer" in e["reason"])
        parts = deaths + [f"{_who(self.target, e['rank'])} {e['reason']}" for e in errors]
        if not parts:
            parts = [
                "the launch ended before this case finished"
                if started
                else "the launch failed to start"
            ]
        internal = [e for e in errors if e["status"] == ERROR]
        crashed = deaths or any(e["status"] == CRASH for e in errors)
        status = CRASH if crashed or not internal else ERROR
        reason = "; ".join(dict.fromkeys(parts))
        if internal and internal[0]["reason"].startswith(INTERNAL):
            reason += f"\n--- traceback ---\n{internal[0]['traceback']}"
        if job is not None:
            reason += self._tails(job)
        return status, reason

    def _exits(self, job: launch.Job, reported: set[int]) -> list[str]:
        """What mlx.launch saw of ranks that ended without an error frame of their own."""
        import signal

        parts = []
        for rank, code in sorted(job.exit_codes().items()):
            who = _who(self.target, rank)
            if rank in reported:
                continue
            if code < 0 and code != -signal.SIGTERM:
                parts.append(f"{who} killed by {signal.Signals(-code).name}")
            elif code == 255 and self.target.hostfile is not None:
                parts.append(f"{who} lost its ssh connection (exit 255)")
            elif code > 0:
                parts.append(f"{who} exited with code {code}")
        parts += [
            f"{_who(self.target, r)} was killed" for r in sorted(job.killed_ranks() - reported)
        ]
        return parts

    def _tails(self, job: launch.Job) -> str:
        out = []
        for rank, tail in job.log_tails().items():
            if tail.strip():
                out.append(f"\n--- {_who(self.target, rank)} log ---\n{tail.strip()}")
        if not job.hello:
            launch_text = "\n".join([*job.output, *job.stderr][-20:]).strip()
            if launch_text:
                out.append(f"\n--- mlx.launch ---\n{launch_text[-1500:]}")
        return "".join(out)

    def _timed_out(self, current: dict, job: launch.Job | None, limit: float):
        indices = [i for i in current.get("indices", []) if i in self.remaining]
        if job is not None:
            time.sleep(0.5)  # the ranks' stack dumps land just before the limit
            job.kill()
        if not current:
            tails = self._tails(job) if job else ""
            yield from self._not_run(f"the ranks did not start within {limit:g}s{tails}")
            return
        what = "reference round" if current.get("phase") == "reference" else "case"
        reason = f"{what} did not finish within {limit:g}s; each rank's Python stack is below"
        if job is not None:
            reason += self._tails(job)
        for index in indices:
            self.remaining.remove(index)
            if what == "case":
                yield self._result(index, TIMEOUT, reason)
            else:
                yield self._result(index, ERROR, f"the single-rank reference timed out: {reason}")

    # -- judging ------------------------------------------------------------------------

    def _judged(self, index: int, message: dict, arrays: dict) -> CaseResult:
        outputs = verdict.rank_outputs(message["ranks"], arrays, "")
        timings = {r["rank"]: r["timings"] for r in message["ranks"] if r.get("timings")}
        if self.options.reference == GOLDEN:
            stored = self.goldens[index]
            if isinstance(stored, str):
                return self._result(index, ERROR, stored, rank_timings=timings)
            result = self._result(index, PASS, rank_timings=timings)
            return verdict.judge_against_golden(result, stored[0], outputs)
        if self.options.reference == SINGLE:
            reference = self.references.get(self.cases[index].key())
            if not isinstance(reference, tuple):
                why = reference or "no single-rank reference arrived"
                return self._result(
                    index, ERROR, f"the single-rank reference failed: {why}", rank_timings=timings
                )
            ref_output, ref_timings = reference
        else:
            ref_ranks = message["reference_ranks"]
            ref_outputs = verdict.rank_outputs(ref_ranks, arrays, "ref")
            ref_output = verdict.filled(ref_outputs[0], ref_outputs)
            ref_timings = next(
                (Timings(**r["timings"]) for r in ref_ranks if r.get("timings")), None
            )
        result = self._result(index, PASS, rank_timings=timings, reference_timings=ref_timings)
        truth = None
        if self.options.reference == SINGLE:
            truth = self.truths.get(self.cases[index].key())
        requests = {r["rank"]: r.get("requests", []) for r in message["ranks"]}
        verdict.judge(result, ref_output, outputs, truth, requests)
        if self.options.reference == SINGLE:
            verdict.against_golden(
                result, ref_output, self.options.goldens, self.options.record_missing
            )
        return result

    def _load_goldens(self) -> Iterator[CaseResult]:
        directory = self.options.goldens or goldens.GOLDENS_DIR
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
                yield self._result(index, ERROR, stored)
