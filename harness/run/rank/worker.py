"""The program every rank runs under `mlx.launch` (or alone, for one rank out of process).

Rank 0 reads the job spec from its standard input and shares it over the group; the job's
kind names the function that runs it on every rank (`JOBS`), which yields messages, and
`End` follows them. A streaming job's rank 0 keeps its stdin and reads the next spec after
each `End` (the ranks wait in step for it), until a spec of kind `protocol.CLOSE`. Rank 0
writes each message as a frame on its standard output (see `harness.run.protocol`); every
other byte a rank prints (Python warnings, mlx-lm's prints, a segfault's faulthandler dump,
a hung case's stacks) goes to a log file of its own on its own host, which the parent reads
(or fetches over ssh) when a case crashes or hangs.

A rank that raises writes one error frame (the case it was in, who is to blame, the
traceback's tail) and exits at once: its peers may be blocked in a collective, and
mlx.launch stops them when one rank exits.
"""

from __future__ import annotations

import faulthandler
import importlib
import json
import os
import platform
import shutil
import socket
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

from harness.errors import blame
from harness.run import protocol
from harness.run.protocol import End, Error, Hello, Start
from harness.run.rank import ring

# kind -> "module:function" yielding (message, arrays) on every rank; imported lazily so a
# job loads only what it runs.
JOBS = {
    "cases": "harness.run.rank.cases:run_on_rank",
    "props": "harness.props.rank_job:run_on_rank",
    "bench": "harness.run.rank.bench:run_on_rank",
    "references": "harness.run.rank.references:run_on_rank",
}
TRACEBACK_CHARS = 3000


def log_dir(job: str) -> Path:
    return Path(tempfile.gettempdir()) / f"harness-{job}"


def _redirect(path: Path):
    """Point this process's fd 1 and 2 at `path`; return a stream on the original stdout."""
    frames = os.fdopen(os.dup(1), "wb", buffering=0)
    target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    for fd in (1, 2):
        os.dup2(target, fd)
    os.close(target)
    log = open(path, "a", buffering=1)  # noqa: SIM115 - lives as long as the process
    sys.stdout = sys.stderr = log
    # The thread that died, with the fatal error above it, in the tail the parent reads;
    # a hung case dumps every thread (dump_traceback_later).
    faulthandler.enable(file=log, all_threads=False)
    return frames, log


def write_all(stream, data: bytes) -> None:
    """Write all of `data` to an unbuffered stream: a raw write to a pipe may take only
    part of a large frame when a signal interrupts it (a profiler's, a debugger's), and
    the rest would be lost, the frame damaged."""
    view = memoryview(data)
    while view:
        view = view[stream.write(view) :]


def _share_spec(group) -> dict:
    """Rank 0 reads the spec; every rank gets it over the group."""
    payload = b""
    if group.rank() == 0:
        payload = json.dumps(protocol.read_spec(sys.__stdin__)).encode()
    return json.loads(protocol.gather_bytes(payload, group)[0])


def release_stdin() -> None:
    """Let go of the launcher's stdin pipe (/dev/null takes fd 0), the spec read: the
    parent can then quiet the launcher's spinning per-rank threads (job.Job)."""
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)


def describe_rank(group, log: Path) -> dict:
    from harness.records.provenance import package_version, source_digest

    return {
        "rank": group.rank(),
        "host": socket.gethostname(),
        "python": sys.executable,
        "python_version": platform.python_version(),
        "mlx": package_version("mlx"),
        "mlx_lm": package_version("mlx-lm"),
        "harness": source_digest(),
        "log": str(log),
        "pid": os.getpid(),
    }


def resolve_job(kind: str):
    if kind not in JOBS:
        raise ValueError(f"unknown job kind '{kind}'; known: {', '.join(JOBS)}")
    module, name = JOBS[kind].split(":")
    return getattr(importlib.import_module(module), name)


def end_with_parent(poll: float = 0.5) -> None:
    """End this rank when the process that started it is gone (the harness killed, or
    mlx.launch): a rank waiting in a collective for a peer that will never come would
    otherwise spin on, orphaned, for good."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll)
        os._exit(3)

    threading.Thread(target=watch, name="end-with-parent", daemon=True).start()


def keep_to_cpus() -> None:
    """Keep this rank (and the threads mlx starts after this) to the cores the parent gave
    it (job.cpu_shares), where it gave any and the system can."""
    cpus = os.environ.get(protocol.CPUS_ENV)
    setaffinity = getattr(os, "sched_setaffinity", None)
    if not cpus or setaffinity is None:
        return
    try:
        setaffinity(0, {int(cpu) for cpu in cpus.split(",")})
    except (OSError, ValueError):
        pass  # a container that forbids it runs unpinned, as before


def step(message, arrays: dict, dump_after: float | None, group, emit, log) -> None:
    """One message of a job on this rank: the hung-case stack dump armed at a `Start`
    (cancelled at anything else), rank 0's frame, and at a `Start` the ranks in step."""
    import mlx.core as mx

    starting = isinstance(message, Start)
    if starting and dump_after:
        # A hung case leaves every rank's Python stack in its log.
        faulthandler.dump_traceback_later(dump_after * message.scale, exit=False, file=log)
    elif dump_after:
        faulthandler.cancel_dump_traceback_later()
    if group.rank() == 0:
        emit(message, arrays)
    if starting and group.size() > 1:
        # No rank begins a case before rank 0 has said so (and sent everything before
        # it): a rank that dies at once is then blamed on the right case.
        mx.eval(mx.distributed.all_sum(mx.array(0), group=group))


def main() -> None:
    end_with_parent()
    keep_to_cpus()  # before mlx starts its threads
    import mlx.core as mx

    ring.wait_for_rank0()
    group = mx.distributed.init()
    rank = group.rank()
    job_id = os.environ.get(protocol.JOB_ENV, str(os.getpid()))
    folder = log_dir(job_id)
    folder.mkdir(parents=True, exist_ok=True)
    frames, log = _redirect(folder / f"rank{rank}.log")
    emit = lambda message, arrays=None: write_all(frames, protocol.encode_frame(message, arrays))  # noqa: E731
    current = Start("")
    try:
        spec = _share_spec(group)
        streaming = bool(spec.get("stream"))
        if not streaming or rank != 0:
            release_stdin()
        ranks = [
            json.loads(part)
            for part in protocol.gather_bytes(
                json.dumps(describe_rank(group, log.name)).encode(), group
            )
        ]
        if rank == 0:
            emit(Hello(ranks))
        while spec["kind"] != protocol.CLOSE:
            current = Start("")
            for message, arrays in resolve_job(spec["kind"])(spec, group):
                if isinstance(message, Start):
                    current = message
                step(message, arrays, spec.get("dump_after"), group, emit, log)
            if rank == 0:
                emit(End())
            if not streaming:
                break
            # A streaming job's ranks wait here for rank 0's next spec (or its close).
            spec = _share_spec(group)
    except BaseException as exc:  # reported for the parent, then this rank ends
        status, reason = blame(exc)
        detail = "".join(traceback.format_exception(exc))
        print(detail, file=log, flush=True)
        emit(
            Error(
                rank,
                status,
                reason,
                current.indices,
                current.phase or None,
                detail[-TRACEBACK_CHARS:],
            )
        )
        os._exit(1)
    log.flush()
    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
