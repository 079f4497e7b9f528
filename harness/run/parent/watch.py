"""Watching one launch (or the one rank in this process): the messages as they arrive, the
clock (the start-up limit until the ranks say hello or start, then a limit per unit of work
from its `Start`), the ranks' error frames and a grace period for the others' to arrive,
and, once it ended early, why: which rank died how, on which host, what each rank said,
and the end of every rank's log. `harness run`, `harness bench` and `harness props` all
watch their ranks through this one class.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from harness.errors import INTERNAL
from harness.run.parent.job import Job
from harness.run.parent.target import Target
from harness.run.protocol import End, Error, Hello, Message, Start
from harness.status import CaseStatus

GRACE = 5.0  # seconds to let the other ranks' error frames and exits arrive
STACK_DUMPS = 0.5  # the ranks' stack dumps land just before a limit: let them be written


def who(target: Target, rank: int) -> str:
    """A rank as a report names it: with its host when the ranks run on a cluster."""
    if target.hostfile is None:
        return f"rank {rank}"
    hosts = target.hosts()
    return f"rank {rank} (host {hosts[rank]})" if rank < len(hosts) else f"rank {rank}"


@dataclass
class Watch:
    """One stream of messages watched to its end. `messages()` yields every message but
    `End` and `Error`; afterwards `timed_out` (the limit that passed, or None) and
    `errors` say how it ended, and `failure()` words an early end."""

    target: Target
    stream: Iterable[tuple[Message, dict] | None]  # None: nothing arrived for a while
    job: Job | None  # None: the rank is this process
    startup_timeout: float
    timeout: float  # per unit of work, from its Start
    current: Start | None = None  # the unit of work the ranks are in
    errors: list[Error] = field(default_factory=list)
    timed_out: float | None = None
    ended: bool = False  # the ranks said End

    def messages(self) -> Iterator[tuple[Message, dict]]:
        clock, limit, grace = time.monotonic(), self.startup_timeout, None
        for item in self.stream:
            now = time.monotonic()
            if item is None:
                if grace is not None and now > grace:
                    break
                if grace is None and now - clock > limit:
                    self.timed_out = limit
                    if self.job is not None:
                        time.sleep(STACK_DUMPS)
                        self.job.kill()
                    return
                continue
            message, arrays = item
            if isinstance(message, Error):
                self.errors.append(message)
                grace = grace or now + GRACE
                continue
            if isinstance(message, End):
                self.ended = True
                break
            if isinstance(message, Start):
                # Long prompts get their multiple of the limit (Case.watchdog_scale).
                self.current, limit = message, self.timeout * message.scale
            clock = now
            if not isinstance(message, Hello):
                yield message, arrays

    @property
    def died(self) -> bool:
        """The launch ended before the ranks finished (an error frame, or no End)."""
        return self.timed_out is None and (bool(self.errors) or not self.ended)

    def who(self, rank: int) -> str:
        return who(self.target, rank)

    def failure(self, started: bool, what: str = "case") -> tuple[str, str]:
        """(status, reason) of a launch that ended early: ranks that died without a word
        (a signal, a lost host) first, then what the ranks' error frames said, then every
        rank's log tail."""
        if self.job is not None:
            self.job.settle()
        reported = {e.rank for e in self.errors}
        deaths = self._exits(reported)
        # Ranks the launch ended because a peer failed first (both the direct start and
        # mlx.launch terminate the rest): named, but no crash of their own.
        stopped = [f"{self.who(r)} was killed" for r in sorted(self._killed() - reported)]
        # A peer's death surfaces on the survivors as a lost connection: list it last.
        errors = sorted(self.errors, key=lambda e: "connection to a peer" in e.reason)
        parts = deaths + [f"{self.who(e.rank)} {e.reason}" for e in errors] + stopped
        if not parts:
            parts = [
                f"the launch ended before this {what} finished"
                if started
                else "the launch failed to start"
            ]
        internal = [e for e in errors if e.status == CaseStatus.ERROR]
        crashed = deaths or any(e.status == CaseStatus.CRASH for e in errors)
        status = CaseStatus.CRASH if crashed or not internal else CaseStatus.ERROR
        reason = "; ".join(dict.fromkeys(parts))
        if internal and internal[0].reason.startswith(INTERNAL):
            reason += f"\n--- traceback ---\n{internal[0].traceback}"
        return status, reason + self.tails()

    def failing_ranks(self) -> set[int]:
        """The ranks that raised, exited non-zero or were killed."""
        failing = {e.rank for e in self.errors}
        if self.job is not None:
            failing |= {r for r, code in self.job.exit_codes().items() if code != 0}
            failing |= self.job.killed_ranks()
        return failing

    def _exits(self, reported: set[int]) -> list[str]:
        """What the launch saw of ranks that ended without an error frame of their own."""
        if self.job is None:
            return []
        parts = []
        for rank, code in sorted(self.job.exit_codes().items()):
            if rank in reported:
                continue
            # The other ranks are ended with SIGTERM once one rank exits.
            if code < 0 and code != -signal.SIGTERM:
                parts.append(f"{self.who(rank)} killed by {signal.Signals(-code).name}")
            elif code == 255 and self.target.hostfile is not None:
                parts.append(f"{self.who(rank)} lost its ssh connection (exit 255)")
            elif code > 0:
                parts.append(f"{self.who(rank)} exited with code {code}")
        return parts

    def _killed(self) -> set[int]:
        return self.job.killed_ranks() if self.job is not None else set()

    def tails(self) -> str:
        """Every rank's log tail, and the launcher's own words when no rank said hello."""
        if self.job is None:
            return ""
        out = []
        for rank, tail in self.job.log_tails().items():
            if tail.strip():
                out.append(f"\n--- {self.who(rank)} log ---\n{tail.strip()}")
        if not self.job.hello:
            launch_text = "\n".join([*self.job.output, *self.job.stderr][-20:]).strip()
            if launch_text:
                source = "the ranks' stderr" if self.job.ranks else "mlx.launch"
                out.append(f"\n--- {source} ---\n{launch_text[-1500:]}")
        return "".join(out)

    def in_step(self, failures: list[dict]) -> tuple[str, str]:
        """(status, reason) of a case the ranks failed in step (`Result.failures`): every
        rank that raised, with the first one's traceback."""
        status = (
            CaseStatus.CRASH
            if any(f["status"] == CaseStatus.CRASH for f in failures)
            else CaseStatus.ERROR
        )
        reason = "; ".join(f"{self.who(f['rank'])} {f['reason']}" for f in failures)
        first = failures[0]
        return (
            status,
            f"{reason}\n--- {self.who(first['rank'])} traceback ---\n{first['traceback']}",
        )


@contextmanager
def watched(
    target: Target,
    spec: dict,
    startup_timeout: float,
    timeout: float,
    like_mlx_launch: bool = False,
) -> Iterator[Watch]:
    """One job on the target's ranks, watched: in this process for one local rank (the only
    door from the parent into the rank side), else one launch, killed on the way out."""
    if target.in_process:
        from harness.run.rank import in_process

        yield Watch(target, in_process.messages(spec), None, startup_timeout, timeout)
        return
    job = Job(target, spec, like_mlx_launch=like_mlx_launch)
    try:
        yield Watch(target, job.messages(), job, startup_timeout, timeout)
    finally:
        job.kill()
