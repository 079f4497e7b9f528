"""Running the properties: one under hypothesis (`run_property`), all of them on simulated
ranks in this process, or on real ranks through one `mlx.launch` of `harness.props.worker`."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, Phase, Verbosity, given, settings
from hypothesis import strategies as st

from harness.errors import HarnessError
from harness.props.registry import PROPERTIES, Property
from harness.props.simulate import simulate
from harness.run.launch import launch_argv

MAX_RANKS = 8
SIMULATED_RANKS = st.integers(1, MAX_RANKS)


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
    """The properties on `ranks` ranks: simulated in-process for 1, else one `mlx.launch`
    of `harness.props.worker` with real collectives. A crash or hang of the launch
    becomes a failed report (the job is killed after `timeout` seconds)."""
    if ranks < 1:
        raise HarnessError(f"--ranks must be at least 1, got {ranks}")
    if ranks == 1 and hostfile is None:
        return run_props_inprocess(max_examples)
    with tempfile.TemporaryDirectory(prefix="harness-props-") as tmp:
        out = Path(tmp) / "results.jsonl"
        argv = launch_argv(
            ranks,
            "harness.props.worker",
            ["--out", str(out), "--max-examples", str(max_examples)],
            backend,
            hostfile,
        )
        start = time.perf_counter()
        error = _launch(argv, timeout)
        results = read_results(out, error)
        return PropsReport(ranks, False, results, error, time.perf_counter() - start)


def _launch(argv: list[str], timeout: float) -> str | None:
    """Run the job; None if it exited 0, else what went wrong with the log's tail."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    process = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        env=env,
    )
    try:
        log, _ = process.communicate(timeout=timeout)
        what = None if process.returncode == 0 else f"launch exited with code {process.returncode}"
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        log, _ = process.communicate()
        what = f"timed out after {timeout:g}s"
    if what is None:
        return None
    tail = log.decode(errors="replace").strip()[-1500:]
    return what + (f"\n{tail}" if tail else "")


def read_results(path: Path, error: str | None) -> list[PropertyResult]:
    """Every property's result as rank 0 wrote it (JSON lines: `{"start": name}`, then
    `{"name": name, "result": {...}}`). The property a dead or hung job was in, and those
    it never reached, are failures; a line cut short by a crash is ignored."""
    events = []
    for line in path.read_text().splitlines() if path.exists() else []:
        with contextlib.suppress(json.JSONDecodeError):
            events.append(json.loads(line))
    finished = {e["name"]: PropertyResult(**e["result"]) for e in events if "result" in e}
    started = {e["start"] for e in events if "start" in e}
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
