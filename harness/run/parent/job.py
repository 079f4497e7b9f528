"""A running job on the target's ranks: its processes (the one place that starts them), the
job spec on rank 0's stdin (and a streaming job's next ones), frames and other lines read
from its stdout, stderr kept, exits reaped, and each rank's log, read here or fetched from
its host over ssh."""

from __future__ import annotations

import fcntl
import json
import os
import queue
import re
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from harness.run import protocol
from harness.run.parent.target import (
    LOCAL,
    SSH,
    Target,
    free_port_block,
    launch_argv,
    starts_directly,
)

_EXITED = re.compile(r"rank (\d+) exited with code (-?\d+)")
_KILLED = re.compile(r"rank (\d+) was killed")


def cpu_shares(ranks: int) -> list[set[int]] | None:
    """Each local rank's own share of this process's cores (Linux), or None where they
    are too few to share or cannot be told. Ranks the scheduler may move between cores
    (and put on one) run in regimes: measured here with 2 ranks on 2 cores, the same case's
    decode tok/s varied 5x between unchanged runs (case by case, prefill and decode
    together); kept to a core each, under 1.5x. The parent keeps every core."""
    getaffinity = getattr(os, "sched_getaffinity", None)
    if getaffinity is None:
        return None
    cores = sorted(getaffinity(0))
    size = len(cores) // ranks
    if size < 1:
        return None
    return [set(cores[r * size : (r + 1) * size]) for r in range(ranks)]


def _widen(pipe) -> None:
    """Let rank 0's frame pipe hold a whole case's frame (Linux; a no-op elsewhere): with
    the default 64 KiB, rank 0 waits inside every large write until the parent has read
    it, and its peers wait for rank 0 at the next collective."""
    setsize = getattr(fcntl, "F_SETPIPE_SZ", None)
    if setsize is None:
        return
    for size in (4 << 20, 1 << 20):  # the system's limit for unprivileged users is 1 MiB
        try:
            fcntl.fcntl(pipe.fileno(), setsize, size)
            return
        except OSError:
            continue


class Job:
    """A running job on the target's ranks: the spec written to rank 0's stdin, frames and
    other lines read from its stdout by a thread, the ranks' (or the launcher's) stderr
    kept for the record.

    Local ring ranks start directly, each with MLX_RANK and an MLX_HOSTFILE as mlx.launch's
    ring backend writes them (one ["ip:port"] list per rank): no launcher process to start
    and keep (its per-rank threads spin on a 2-core machine), and each rank's exit code
    read first-hand. As mlx.launch does, once one rank exits non-zero the others are
    ended (SIGTERM) and counted as killed. Ranks on a cluster or another backend start
    through mlx.launch, quieted once the ranks have their spec (`_quiet_launcher`).

    `like_mlx_launch`: start through a plain mlx.launch, spinning threads and all, for a
    job that times what a user's own mlx.launch run costs them (`harness bench`, held
    against `mlx_lm.benchmark` run by hand)."""

    def __init__(
        self,
        target: Target,
        spec: dict,
        module: str = "harness.run.rank.worker",
        like_mlx_launch: bool = False,
    ):
        self.target = target
        self.quiet_launcher = not like_mlx_launch
        self.id = uuid.uuid4().hex[:12]
        self.hello: list[dict] = []
        self.output: list[str] = []  # lines that were not frames
        self.stderr: list[str] = []
        self.items: queue.Queue = queue.Queue()
        env = {**os.environ, **target.environment(), protocol.JOB_ENV: self.id}
        self.ranks: list[subprocess.Popen] = []  # started directly, in rank order
        self._codes: dict[int, int] = {}
        self._killed: set[int] = set()
        self._ending = False  # the harness ends the job: no rank is 'killed' by a peer
        self._lock = threading.Lock()
        self._hostfile: str | None = None
        if starts_directly(target, like_mlx_launch):
            self._start_ranks([target.interpreter, "-m", module], env)
        else:
            self.process = subprocess.Popen(
                launch_argv(target, ["-m", module], self.id),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                env=env,
                cwd=target.cwd,
            )
            self._errors = self.process.stderr
            self._outputs = [self.process.stdout]
        self.started = time.monotonic()
        self._open_outputs = len(self._outputs)
        self._threads = [
            threading.Thread(target=self._read_frames, args=(out,), daemon=True)
            for out in self._outputs
        ]
        self._threads.append(threading.Thread(target=self._read_stderr, daemon=True))
        self._threads += [
            threading.Thread(target=self._reap, args=(rank,), daemon=True)
            for rank in range(len(self.ranks))
        ]
        for thread in self._threads:
            thread.start()
        # stdin stays open while the job runs: mlx.launch spins on a closed stdin.
        self.send(spec)

    def send(self, spec: dict) -> None:
        """A spec to rank 0's stdin: the job's first, or the next of a streaming job. A job
        that is gone by now is found out by its watcher (its streams end)."""
        try:
            self.process.stdin.write(protocol.encode_spec(spec))
            self.process.stdin.flush()
        except (BrokenPipeError, ValueError):
            pass

    def alive(self) -> bool:
        """Every process of the job still runs."""
        return all(p.poll() is None for p in self.ranks or [self.process])

    def _start_ranks(self, argv: list[str], env: dict[str, str]) -> None:
        """Every rank as a child of this process, in one process group (rank 0's)."""
        port = free_port_block(self.target.ranks)
        fd, self._hostfile = tempfile.mkstemp(prefix=f"harness-{self.id}-", suffix=".json")
        with os.fdopen(fd, "w") as fh:
            json.dump([[f"127.0.0.1:{port + r}"] for r in range(self.target.ranks)], fh)
        # Rank 0's stdout carries the frames; the others write one only to say why they
        # failed, on a pipe of their own (a frame is longer than a pipe's atomic write).
        read, write = os.pipe()  # every rank's stderr
        others_read, others_write = os.pipe()
        shares = cpu_shares(self.target.ranks)
        try:
            for rank in range(self.target.ranks):
                own = {"MLX_RANK": str(rank), "MLX_HOSTFILE": self._hostfile}
                if shares:
                    own[protocol.CPUS_ENV] = ",".join(map(str, sorted(shares[rank])))
                self.ranks.append(
                    subprocess.Popen(
                        argv,
                        stdin=subprocess.PIPE if rank == 0 else subprocess.DEVNULL,
                        stdout=subprocess.PIPE if rank == 0 else others_write,
                        stderr=write,
                        env={**env, **own},
                        cwd=self.target.cwd,
                        # A group of their own: Ctrl-C reaches the harness, which ends them.
                        process_group=self.ranks[0].pid if rank else 0,
                    )
                )
        finally:
            os.close(write)
            os.close(others_write)
        self.process = self.ranks[0]
        _widen(self.process.stdout)
        self._errors = os.fdopen(read, "rb")
        self._outputs = [self.process.stdout, os.fdopen(others_read, "rb")]

    def _reap(self, rank: int) -> None:
        """A rank's exit code; the first rank that fails ends its peers, which may be
        blocked in a collective with it."""
        code = self.ranks[rank].wait()
        with self._lock:
            self._codes[rank] = code
            if code == 0 or self._ending:
                return
            self._ending = True
            for other, process in enumerate(self.ranks):
                if process.poll() is None:
                    self._killed.add(other)
                    process.terminate()

    def _read_frames(self, stream) -> None:
        for item in protocol.frames(stream):
            if isinstance(item, str):
                if item.strip():
                    self.output.append(item)
                continue
            if isinstance(item[0], protocol.Hello):
                self.hello = item[0].ranks
                if self.quiet_launcher and not self.ranks:
                    self._quiet_launcher()
            self.items.put(item)
        with self._lock:
            self._open_outputs -= 1
            if self._open_outputs == 0:
                self.items.put(None)  # every stream ended

    def _quiet_launcher(self) -> None:
        """mlx.launch keeps a thread per rank in select() on the rank's stdin pipe, which is
        always writable: each spins until a write to its rank fails, taking most of a core
        from the ranks on the launching machine for the whole job (on 2 cores the moe suite
        ran 2.6x slower). Every rank has closed its stdin by the time it says hello
        (worker.release_stdin); one byte more makes each write fail with EPIPE, and the
        threads sleep in select(). A rank behind ssh keeps ssh reading: no change there."""
        try:
            self.process.stdin.write(b"\n")
            self.process.stdin.flush()
        except (OSError, ValueError):
            pass  # the launch is already gone; its end is reported elsewhere

    def _read_stderr(self) -> None:
        for raw in self._errors:
            self.stderr.append(raw.decode(errors="replace").rstrip())

    def messages(self, poll: float = 0.05) -> Iterator[tuple[dict, dict] | None]:
        """Each message as it arrives; None every `poll` seconds while nothing does (so the
        caller can watch the clock); ends when the stream ends."""
        while True:
            try:
                item = self.items.get(timeout=poll)
            except queue.Empty:
                yield None
                continue
            if item is None:
                return
            yield item

    def exit_codes(self) -> dict[int, int]:
        """The ranks that exited non-zero, but for those a peer's failure ended: first-hand
        for ranks started here, else what mlx.launch said ('Node with rank 1 exited with
        code -11'); a lone out-of-process rank's own code."""
        if self.ranks:
            with self._lock:
                return {r: c for r, c in self._codes.items() if c != 0 and r not in self._killed}
        if self.target.ranks == 1 and self.target.hostfile is None:
            code = self.process.poll()
            return {0: code} if code not in (None, 0) else {}
        text = "\n".join(self.stderr)
        return {int(r): int(c) for r, c in _EXITED.findall(text)}

    def killed_ranks(self) -> set[int]:
        if self.ranks:
            with self._lock:
                return set(self._killed)
        return {int(r) for r in _KILLED.findall("\n".join(self.stderr))}

    def log_tails(self, chars: int = 1500) -> dict[int, str]:
        """The end of every rank's log, read here for local ranks and over ssh from a host."""
        hosts = self.target.hosts()
        tails = {}
        for rank, host in enumerate(hosts):
            info = next((h for h in self.hello if h["rank"] == rank), None)
            path = info["log"] if info else f"/tmp/harness-{self.id}/rank{rank}.log"
            tails[rank] = read_tail(host, path, chars)
        return tails

    def settle(self, seconds: float = 10.0) -> None:
        """Give the launch a moment to end on its own and its streams to be read to the
        end, so what it said of each rank's exit is all there."""
        deadline = time.monotonic() + seconds
        try:
            for process in self.ranks or [self.process]:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            return
        for thread in self._threads:
            thread.join(timeout=2)

    def kill(self) -> None:
        with self._lock:
            self._ending = True
        processes = self.ranks or [self.process]
        if any(p.poll() is None for p in processes):
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for process in processes:
            process.wait()
        for thread in self._threads:
            thread.join(timeout=2)
        if self.process.stdin:
            try:
                self.process.stdin.close()
            except OSError:
                pass
        if self._hostfile is not None:
            Path(self._hostfile).unlink(missing_ok=True)


def read_tail(host: str, path: str, chars: int) -> str:
    """The last `chars` characters of a file on a host ('' if absent); why not, if the host
    cannot be reached."""
    if host in LOCAL:
        try:
            with open(path, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                fh.seek(max(0, fh.tell() - chars))
                return fh.read().decode(errors="replace")
        except OSError:
            return ""
    try:
        out = subprocess.run(
            [*SSH, host, f"tail -c {chars} {path} 2>/dev/null"],
            capture_output=True,
            timeout=15,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        return f"(host {host} did not answer ssh to hand over its log)"
    if out.returncode == 255:
        return f"(host {host} does not answer ssh: its log could not be read)"
    return out.stdout.decode(errors="replace")
