"""Implementations of mlx-lm to run cases under, and running their references.

- a release from the package index (`0.31.3` or `mlx-lm==0.31.3`): a cached environment
  (`harness.bisect.envs`) whose Python runs the cases;
- a checkout (an mlx-lm source tree, or a commit of a local repository through a
  temporary `git worktree`): mlx-lm is pure Python, so the harness's own Python runs it
  with the tree first on PYTHONPATH, without an install;
- a model file (`file.py`, with the model type it implements): the installed mlx-lm with
  that one module replaced (`harness.models.impl`);
- the installed mlx-lm.

The harness's rank-side code reaches another environment's Python through PYTHONPATH,
never an install, so every implementation runs the harness's code of this checkout.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from harness.bisect import envs, git
from harness.bisect.releases import check_release
from harness.case import Case
from harness.errors import HarnessError
from harness.records.outputs import Output
from harness.run import protocol
from harness.run.parent.relaunch import Relauncher
from harness.run.parent.target import Target
from harness.run.parent.watch import Watch
from harness.status import ReferenceStatus

RELEASE = re.compile(r"(?:mlx-lm==)?(\d+\.\d+(?:\.\d+)?\S*)")
DEFAULT_TIMEOUT = 60.0  # seconds one case's reference may take (--timeout)
STARTUP_TIMEOUT = 120.0  # seconds the rank may take to start: import mlx and mlx-lm


@dataclass
class Implementation:
    label: str
    python: str = sys.executable
    pythonpath: list[str] = field(default_factory=list)  # before the harness's root
    impl: dict[str, str] = field(default_factory=dict)  # model_type -> file
    env: envs.Env | None = None

    def rank_env(self) -> dict[str, str]:
        """The extra environment of its ranks (the launcher adds the harness itself)."""
        return {"PYTHONPATH": os.pathsep.join(self.pythonpath)} if self.pythonpath else {}


@dataclass
class ImplementationReference:
    # OK, SKIP or CRASH from the rank (see harness.run.rank.references), or what the
    # watcher saw: a TIMEOUT, a CRASH, an ERROR of the setup or the harness.
    status: ReferenceStatus
    detail: str | None = None
    output: Output | None = None
    strategies: tuple[str, ...] = ()  # what the architecture has here: "tp", "pp"


@dataclass
class References:
    implementation: Implementation
    versions: dict[str, str]
    cases: dict[str, ImplementationReference]  # by case key


def release(version: str) -> Implementation:
    env = envs.ensure(envs.release_requirements(version))
    return Implementation(f"mlx-lm {version}", str(env.python), env=env)


def checkout(path: Path, label: str | None = None) -> Implementation:
    if not (path / "mlx_lm" / "__init__.py").is_file():
        raise HarnessError(f"'{path}' is not an mlx-lm source tree (no mlx_lm/ package in it)")
    return Implementation(label or str(path), pythonpath=[str(path.resolve())])


def model_file(model_type: str, path: Path) -> Implementation:
    from harness.models.impl import parse

    return Implementation(str(path), impl=parse([f"{model_type}={path}"]))


@contextlib.contextmanager
def resolve(spec: str, model_type: str, repo: Path | None = None) -> Iterator[Implementation]:
    """An implementation named on the command line; a commit's worktree is removed after."""
    path = Path(spec).expanduser()
    if spec.endswith(".py"):
        yield model_file(model_type, path)
    elif path.is_dir():
        yield checkout(path)
    elif repo is not None and git.is_commit(repo, spec):
        with git.worktree(repo, spec) as tree:
            yield checkout(tree, f"{spec} of {repo}")
    elif RELEASE.fullmatch(spec):
        version = RELEASE.fullmatch(spec).group(1)
        check_release(version)
        yield release(version)
    else:
        where = f"a commit of {repo}, " if repo is not None else ""
        raise HarnessError(
            f"'{spec}' is not an mlx-lm release, {where}an mlx-lm source tree or a .py model "
            "file (a commit needs --repo)"
        )


def check_timeout(timeout: float) -> None:
    if timeout <= 0:
        raise HarnessError(f"--timeout must be positive, got {timeout:g}")


def references(
    implementation: Implementation, cases: list[Case], timeout: float = DEFAULT_TIMEOUT
) -> References:
    """Every case's single-rank reference under the implementation: the `references` job
    (`harness.run.rank.references`) on one rank launched under its Python, watched as a
    run's ranks are. A case that hangs past `timeout` seconds is its `timeout` (with the
    rank's Python stack), one that kills the rank its `crash`; the rest run in a fresh
    launch. Ranks that cannot start at all are the setup's fault: one sentence."""
    work = _ReferenceWork(implementation, cases)
    driver = Relauncher(work.target, STARTUP_TIMEOUT, timeout)
    found = {cases[index].key(): reference for index, reference in driver.drive(work)}
    return References(implementation, work.versions, found)


class _ReferenceWork:
    """The references of one implementation: the relaunch driver's work."""

    def __init__(self, implementation: Implementation, cases: list[Case]):
        self.implementation, self.cases = implementation, cases
        self.remaining = list(range(len(cases)))
        self.versions: dict[str, str] = {}
        # PYTHONSAFEPATH: an mlx_lm folder in the working directory must not shadow the
        # one chosen (the rank runs as `python -m`, which puts the working directory first).
        env = {**implementation.rank_env(), "PYTHONSAFEPATH": "1"}
        self.target = Target(1, python=implementation.python, env=env)

    def spec(self) -> dict:
        cases = [{"index": i, "case": self.cases[i].to_dict()} for i in self.remaining]
        return {"kind": "references", "cases": cases, "impl": self.implementation.impl}

    def received(
        self, message, arrays: dict, watch: Watch
    ) -> Iterator[tuple[int, ImplementationReference]]:
        if not isinstance(message, protocol.Reference):
            return
        self.remaining.remove(message.index)
        self.versions = self.versions or dict(message.versions or {})
        output = Output.from_arrays(arrays) if message.status == ReferenceStatus.OK else None
        sharding = tuple(message.sharding or ())
        status = ReferenceStatus(message.status)
        reference = ImplementationReference(status, message.reason, output, sharding)
        yield message.index, reference

    def cut_short(
        self, watch: Watch, unfinished: list[int]
    ) -> Iterator[tuple[int, ImplementationReference]]:
        if watch.current is None:
            self._not_started(watch)
        limit = watch.timed_out
        for index in unfinished:
            self.remaining.remove(index)
            if limit is not None:
                detail = (
                    f"the reference did not finish within {limit:g}s (--timeout); its Python "
                    f"stack is below{watch.tails()}"
                )
                yield index, ImplementationReference(ReferenceStatus.TIMEOUT, detail)
            else:
                status, detail = watch.failure(started=True, what="reference")
                yield index, ImplementationReference(ReferenceStatus(status), detail)

    def stalled(self, watch: Watch) -> Iterator[tuple[int, ImplementationReference]]:
        self._not_started(watch)

    def _not_started(self, watch: Watch) -> None:
        """Ranks that never reached a case: the harness cannot run there (no mlx, an
        interpreter that cannot import it): the setup's fault, in one sentence."""
        if watch.timed_out is not None:
            why = f"it did not start within {watch.timed_out:g}s"
        else:
            why = watch.failure(started=False)[1].splitlines()[0]
        said = [line for line in (watch.job.stderr if watch.job else []) if line.strip()]
        if said:
            why += f": {said[-1].strip()}"
        raise HarnessError(
            f"the harness could not run under {self.implementation.label} "
            f"({self.implementation.python}): {why}"
        )
