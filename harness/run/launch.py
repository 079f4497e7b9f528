"""Starting ranks with `mlx.launch` and supervising them: the command line, free ports,
and a watchdog that turns a dead or hung rank into a recorded outcome, never a hung run."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from harness.errors import HarnessError

BACKENDS = ("ring", "mpi", "jaccl", "nccl")


def find_launcher() -> str:
    """The `mlx.launch` beside this interpreter, else the one on PATH."""
    beside = Path(sys.executable).with_name("mlx.launch")
    if beside.exists():
        return str(beside)
    found = shutil.which("mlx.launch")
    if found is None:
        raise HarnessError(
            "mlx.launch was not found beside this Python or on PATH; "
            "install mlx into this environment (pip install 'mlx[cpu]' on Linux)."
        )
    return found


def free_port_block(count: int) -> int:
    """A starting port with `count` consecutive free ports after it.

    Every job gets its own ports: two jobs on the default port collide, and a collision
    looks like a hang.
    """
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            start = probe.getsockname()[1]
        if start + count < 65535 and all(_port_free(start + i) for i in range(count)):
            return start
    raise HarnessError("could not find free local ports for mlx.launch")


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def check_options(backend: str | None, hostfile: str | None) -> None:
    """Fail before anything starts on an unknown backend or a missing hostfile."""
    if backend is not None and backend not in BACKENDS:
        raise HarnessError(f"unknown backend '{backend}'; known: {', '.join(BACKENDS)}")
    if hostfile is not None and not Path(hostfile).is_file():
        raise HarnessError(f"hostfile '{hostfile}' does not exist")


def hostfile_ranks(hostfile: str) -> int:
    """How many ranks an mlx.launch hostfile starts: one per host entry."""
    try:
        data = json.loads(Path(hostfile).read_text())
    except (OSError, ValueError) as exc:
        raise HarnessError(f"hostfile '{hostfile}' is not readable JSON: {exc}") from None
    hosts = data.get("hosts") if isinstance(data, dict) else data
    if not isinstance(hosts, list) or not hosts:
        raise HarnessError(f"hostfile '{hostfile}' lists no hosts")
    return len(hosts)


def launch_argv(
    ranks: int,
    module: str,
    args: list[str],
    backend: str | None = None,
    hostfile: str | None = None,
) -> list[str]:
    """The `mlx.launch` command that runs `python -m module args...` on `ranks` ranks.

    `--` ends mlx.launch's own options: it would otherwise take the module's `-n` etc.
    """
    check_options(backend, hostfile)
    argv = [find_launcher(), "--python", sys.executable]
    if hostfile is not None:
        argv += ["--hostfile", hostfile]
    else:
        argv += ["-n", str(ranks)]
    argv += ["--backend", backend or "ring"]
    if (backend or "ring") == "ring":
        argv += ["--starting-port", str(free_port_block(ranks))]
    return argv + ["--", "-m", module, *args]


@dataclass
class RankResult:
    rank: int
    status: str  # "ok" | "error" | "missing"
    error: str | None = None
    timings: dict | None = None
    output: Path | None = None  # the rank's npz


@dataclass
class CaseOutcome:
    """What the ranks did with one case: `done` (every rank wrote a result, ok or error),
    `crash` (a rank died without one) or `timeout` (the watchdog stopped the job)."""

    index: int
    status: str
    ranks: list[RankResult]
    detail: str | None = None


@dataclass
class JobOptions:
    ranks: int
    backend: str | None = None
    hostfile: str | None = None
    timeout: float = 60.0  # per case, from its first rank's start
    startup_timeout: float = 120.0  # from launch to the first case's start
    capture: bool = True
    repeats: int = 3


def run_job(
    entries: list[tuple[int, dict]], options: JobOptions, workdir: Path
) -> Iterator[CaseOutcome]:
    """Run `(index, case_dict)` entries on `options.ranks` ranks, yielding each case's
    outcome as soon as every rank finished it. A dead or hung job costs the case it was
    on; the remaining cases run in a fresh launch."""
    remaining = list(entries)
    attempt = 0
    while remaining:
        job = workdir / f"launch{attempt}"
        attempt += 1
        job.mkdir(parents=True)
        (job / "job.json").write_text(
            json.dumps(
                {
                    "cases": [{"index": i, "case": c} for i, c in remaining],
                    "capture": options.capture,
                    "repeats": options.repeats,
                }
            )
        )
        done = 0
        for outcome in _supervise(job, [i for i, _ in remaining], options):
            done += 1
            yield outcome
        remaining = remaining[done:]


def _supervise(job: Path, indices: list[int], options: JobOptions) -> Iterator[CaseOutcome]:
    argv = launch_argv(
        options.ranks, "harness.run.worker", [str(job)], options.backend, options.hostfile
    )
    log = open(job / "launch.log", "wb")
    process = subprocess.Popen(
        argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
    )
    launched = time.monotonic()
    ranks = range(options.ranks)
    try:
        for index in indices:
            while True:
                if all((job / f"case{index}.rank{r}.json").exists() for r in ranks):
                    yield CaseOutcome(index, "done", [_rank_result(job, index, r) for r in ranks])
                    break
                started = _started(job, index, ranks)
                exited = process.poll() is not None
                if exited:
                    time.sleep(0.2)  # let the last JSON writes land before judging
                    if all((job / f"case{index}.rank{r}.json").exists() for r in ranks):
                        continue
                    if started is None and index != indices[0]:
                        # Every rank raised in an earlier case and exited after
                        # recording it: this case never ran, so relaunch it.
                        return
                    yield _dead(job, index, ranks, started)
                    return
                clock, limit = (
                    (started, options.timeout) if started else (launched, options.startup_timeout)
                )
                if time.monotonic() - clock > limit:
                    _kill(process)
                    yield _timed_out(job, index, ranks, limit, started is not None)
                    return
                time.sleep(0.02)
    finally:
        _kill(process)
        log.close()


def _started(job: Path, index: int, ranks: range) -> float | None:
    """Monotonic time of the first rank's start of case `index`, None if none started."""
    stamps = [
        p.stat().st_mtime for r in ranks if (p := job / f"case{index}.rank{r}.start").exists()
    ]
    if not stamps:
        return None
    return time.monotonic() - (time.time() - min(stamps))


def _rank_result(job: Path, index: int, rank: int) -> RankResult:
    path = job / f"case{index}.rank{rank}.json"
    if not path.exists():
        return RankResult(rank, "missing")
    data = json.loads(path.read_text())
    npz = job / f"case{index}.rank{rank}.npz"
    return RankResult(
        rank, data["status"], data.get("error"), data.get("timings"), npz if npz.exists() else None
    )


_EXIT_LINE = re.compile(r"rank (\d+) exited with code (-?\d+)")


def _dead(job: Path, index: int, ranks: range, started: float | None) -> CaseOutcome:
    results = [_rank_result(job, index, r) for r in ranks]
    codes = {int(r): int(c) for r, c in _EXIT_LINE.findall(_tail(job / "launch.log", 4000))}
    parts = []
    for result in results:
        if result.status == "error":
            parts.append(f"rank {result.rank} raised {result.error}")
        elif codes.get(result.rank, 0) < 0 and codes[result.rank] != -signal.SIGTERM:
            parts.append(f"rank {result.rank} killed by {signal.Signals(-codes[result.rank]).name}")
        elif codes.get(result.rank, 0) > 0:
            parts.append(f"rank {result.rank} exited with code {codes[result.rank]}")
    if not parts:
        parts.append(
            "the launch ended before this case finished"
            if started
            else "the launch failed to start"
        )
    return CaseOutcome(
        index, "crash", results, "; ".join(parts) + _tails(job, ranks, started is None)
    )


def _timed_out(job: Path, index: int, ranks: range, limit: float, started: bool) -> CaseOutcome:
    results = [_rank_result(job, index, r) for r in ranks]
    waiting = [str(r.rank) for r in results if r.status == "missing"]
    what = (
        f"case did not finish within {limit:g}s"
        if started
        else f"no rank started within {limit:g}s"
    )
    detail = f"{what} (unfinished on rank {', '.join(waiting)})"
    return CaseOutcome(index, "timeout", results, detail + _tails(job, ranks, not started))


def _tails(job: Path, ranks: range, include_launch: bool) -> str:
    out = []
    for r in ranks:
        tail = _tail(job / f"rank{r}.stderr", 1500).strip()
        if tail:
            out.append(f"\n--- rank {r} stderr ---\n{tail}")
    if include_launch or not out:
        tail = _tail(job / "launch.log", 1500).strip()
        if tail:
            out.append(f"\n--- mlx.launch ---\n{tail}")
    return "".join(out)


def _tail(path: Path, chars: int) -> str:
    if not path.exists():
        return ""
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        fh.seek(max(0, fh.tell() - chars))
        return fh.read().decode(errors="replace")


def _kill(process: subprocess.Popen) -> None:
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.wait()
