"""The one relaunch driver: indexed units of work (a run's cases, bench cases) through as
many launches as crashes and hangs need, each launch watched (`watch.Watch`).

A kind of work says what its job spec is for the units still to do, what each message
means, and what a launch that ended early (a crash, a hang, ranks that never started)
costs; the driver owns the launches: the spec's `dump_after`, which units the ranks were
in when a launch ended, relaunching for the rest, stopping when two launches in a row
finish nothing. Kept open (`keep_open`), the driver's job outlives one call: its ranks
wait for the next spec on rank 0's stdin (`CaseStream`), and a job that died is replaced
on the next call.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from harness.run import protocol
from harness.run.parent.job import Job
from harness.run.parent.target import Target
from harness.run.parent.watch import Watch, watched
from harness.run.protocol import Message

# Seconds a closing job's ranks get to exit on their own before they are killed.
CLOSE_GRACE = 10.0


def dump_after(timeout: float) -> float:
    """When a unit's ranks dump their Python stacks into their logs: before the watchdog
    fires (`timeout`), late enough that a slow unit rarely dumps for nothing."""
    return max(timeout * 0.8, timeout - 2)


class Work(Protocol):
    """Indexed units of work the driver runs until none remains."""

    remaining: list[int]  # the units not done yet, in order

    def spec(self) -> dict:
        """The job spec for the remaining units (the driver adds `dump_after`)."""

    def received(self, message: Message, arrays: dict, watch: Watch) -> Iterator[Any]:
        """What one message of the ranks yields (results), removing finished units."""

    def cut_short(self, watch: Watch, unfinished: list[int]) -> Iterator[Any]:
        """What a launch that timed out or died yields; `unfinished` are the remaining
        units of the unit of work the ranks were in."""

    def stalled(self, watch: Watch) -> Iterator[Any]:
        """Two launches in a row finished nothing: give up on at least one unit."""


class Relauncher:
    """Launches on one target for work of any kind; `launches` counts them."""

    def __init__(
        self,
        target: Target,
        startup_timeout: float,
        timeout: float,
        like_mlx_launch: bool = False,
        keep_open: bool = False,
    ):
        self.target = target
        self.startup_timeout, self.timeout = startup_timeout, timeout
        self.like_mlx_launch = like_mlx_launch
        self.keep_open = keep_open
        self.job: Job | None = None
        self.launches = 0

    def drive(self, work: Work) -> Iterator[Any]:
        stalled = 0
        while work.remaining:
            before = len(work.remaining)
            with self._watched({**work.spec(), "dump_after": dump_after(self.timeout)}) as watch:
                for message, arrays in watch.messages():
                    yield from work.received(message, arrays, watch)
                if watch.timed_out is not None or watch.died:
                    current = watch.current
                    unfinished = [
                        i for i in (current.indices if current else []) if i in work.remaining
                    ]
                    yield from work.cut_short(watch, unfinished)
            stalled = stalled + 1 if len(work.remaining) == before else 0
            if stalled == 2 and work.remaining:
                yield from work.stalled(watch)
                stalled = 0

    @contextmanager
    def _watched(self, spec: dict) -> Iterator[Watch]:
        """One spec on the ranks, watched: in this process for one local rank (no launch),
        else on the open job or a new launch.
        The job is killed on the way out unless it is kept open and finished the spec."""
        limits = self.startup_timeout, self.timeout
        if self.target.in_process:
            with watched(self.target, spec, *limits) as watch:
                yield watch
            return
        if self.job is not None and self.job.alive():
            self.job.send(spec)
        else:
            self.close()
            self.job = Job(
                self.target,
                {**spec, "stream": self.keep_open},
                like_mlx_launch=self.like_mlx_launch,
            )
            self.launches += 1
        watch = Watch(self.target, self.job.messages(), self.job, *limits)
        finished = False
        try:
            yield watch
            finished = watch.ended
        finally:
            if not (self.keep_open and finished):
                self.job.kill()
                self.job = None

    def close(self, graceful: bool = True) -> None:
        """End the open job: its ranks are told so and exit on their own (killed after
        `CLOSE_GRACE` seconds), or killed at once."""
        if self.job is None:
            return
        job, self.job = self.job, None
        if graceful and job.alive():
            job.send({"kind": protocol.CLOSE})
            job.settle(CLOSE_GRACE)
        job.kill()
