"""Running the properties: one under hypothesis (`run_property`), all of them on simulated
ranks in this process, or on real ranks through one `mlx.launch` of `harness.props.rank_job`."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, Phase, Verbosity, given, settings
from hypothesis import strategies as st

from harness.props.registry import PROPERTIES, Property
from harness.props.simulate import simulate
from harness.run import protocol
from harness.run.parent.target import Target, rank_count
from harness.run.parent.watch import watched

MAX_SIMULATED_RANKS = 8
SIMULATED_RANKS = st.integers(1, MAX_SIMULATED_RANKS)


@dataclass
class PropertyResult:
    name: str
    passed: bool
    examples: int  # checks run, shrinking included
    detail: str | None = None  # why it failed, with the (shrunk) example
    seconds: float = 0.0


@dataclass
class PropsReport:
    ranks: int
    simulated: bool  # ranks simulated in this process (1 to 8 per example), not launched
    results: list[PropertyResult] = field(default_factory=list)
    error: str | None = None  # a failure of the run as a whole (launch, timeout)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.results) and all(r.passed for r in self.results)


def simulate_check(check: Callable, example: Any, **kwargs: Any) -> None:
    """Run `check(example, group, **kwargs)` on `example.ranks` simulated ranks."""
    simulate(lambda group: check(example, group, **kwargs), example.ranks)


def run_property(
    prop: Property,
    max_examples: int,
    ranks: st.SearchStrategy[int] = SIMULATED_RANKS,
    execute: Callable[[Callable, Any], None] = simulate_check,
) -> PropertyResult:
    """Draw up to `max_examples` examples and run the check on each; a failure is shrunk
    and reported with its example. Derandomized, and nothing timed (no deadline, no
    health checks), so every rank draws the same examples in the same order."""
    runs = 0

    @settings(
        max_examples=max_examples,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        verbosity=Verbosity.quiet,
        # Hypothesis's own CI profile (chosen when CI is set) would append a
        # reproduce_failure blob to every report.
        print_blob=False,
    )
    @given(prop.examples(ranks))
    def property_test(example: Any) -> None:
        nonlocal runs
        runs += 1
        try:
            execute(prop.check, example)
        except Exception as error:
            error.add_note(f"example: {example}")
            raise

    start = time.perf_counter()
    try:
        property_test()
    except Exception as error:
        detail = _describe(error)
        return PropertyResult(prop.name, False, runs, detail, time.perf_counter() - start)
    return PropertyResult(prop.name, True, runs, None, time.perf_counter() - start)


def _describe(error: BaseException) -> str:
    """One paragraph: the error's first line, then its notes (rank, example)."""
    others = ""
    if isinstance(error, BaseExceptionGroup):  # hypothesis found several distinct failures
        others = f" (and {len(error.exceptions) - 1} other distinct failures)"
        error = error.exceptions[0]
    lines = str(error).strip().splitlines()
    notes = "; ".join(getattr(error, "__notes__", []))
    return f"{type(error).__name__}: {lines[0] if lines else ''}{others}" + (
        f" [{notes}]" if notes else ""
    )


def run_props_inprocess(max_examples: int = 25) -> PropsReport:
    """Every property on simulated ranks (1 to 8 drawn per example), in this process."""
    start = time.perf_counter()
    results = [run_property(p, max_examples) for p in PROPERTIES]
    return PropsReport(1, True, results, seconds=time.perf_counter() - start)


def run_props(
    ranks: int,
    backend: str | None = None,
    hostfile: str | None = None,
    max_examples: int = 25,
    timeout: float = 300,
) -> PropsReport:
    """The properties on `ranks` ranks: simulated in-process for 1, else one launch of the
    `props` job, watched as a run's cases are. A crash or hang of the launch becomes a
    failed report (the job is killed when the ranks take over `timeout` seconds to start
    or for one property)."""
    ranks = rank_count(ranks, timeout, backend, hostfile)
    if ranks == 1 and hostfile is None:
        return run_props_inprocess(max_examples)
    target = Target(ranks, backend, hostfile)
    start = time.perf_counter()
    events: list[protocol.Start | protocol.Property] = []
    error = None
    with watched(
        target, {"kind": "props", "max_examples": max_examples}, timeout, timeout
    ) as watch:
        for message, _ in watch.messages():
            if isinstance(message, (protocol.Start, protocol.Property)):
                events.append(message)
    if watch.timed_out is not None:
        error = f"timed out after {watch.timed_out:g}s{watch.tails()}"
    elif watch.died:
        error = watch.failure(started=bool(events), what="property")[1]
    return PropsReport(
        target.ranks, False, results_of(events, error), error, time.perf_counter() - start
    )


def results_of(
    events: list[protocol.Start | protocol.Property], error: str | None
) -> list[PropertyResult]:
    """Every property's result as the ranks reported it. The property a dead or hung job
    was in, and those it never reached, are failures."""
    finished = {
        e.result["name"]: PropertyResult(**e.result)
        for e in events
        if isinstance(e, protocol.Property)
    }
    started = {e.name for e in events if isinstance(e, protocol.Start)}
    why = (error or "the job ended").splitlines()[0]
    results = []
    for prop in PROPERTIES:
        if prop.name in finished:
            results.append(finished[prop.name])
        elif prop.name in started:
            results.append(PropertyResult(prop.name, False, 0, f"interrupted: {why}"))
        else:
            results.append(PropertyResult(prop.name, False, 0, f"not run: {why}"))
    return results
