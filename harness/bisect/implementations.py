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
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from harness.bisect import envs, git
from harness.bisect.probe import PREFIX
from harness.bisect.releases import check_release
from harness.case import Case
from harness.errors import HarnessError
from harness.paths import import_root
from harness.records.outputs import Output

RELEASE = re.compile(r"(?:mlx-lm==)?(\d+\.\d+(?:\.\d+)?\S*)")


@dataclass
class Implementation:
    label: str
    python: str = sys.executable
    pythonpath: list[str] = field(default_factory=list)  # before the harness's root
    impl: dict[str, str] = field(default_factory=dict)  # model_type -> file
    env: envs.Env | None = None

    def environ(self) -> dict[str, str]:
        """The environment its processes run with: the source trees, then the harness."""
        paths = [*self.pythonpath, str(import_root())]
        return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}

    def rank_env(self) -> dict[str, str]:
        """The extra environment of its ranks (the launcher adds the harness itself)."""
        return {"PYTHONPATH": os.pathsep.join(self.pythonpath)} if self.pythonpath else {}


@dataclass
class ImplementationReference:
    status: str  # "ok" | "skip" | "error" (see harness.bisect.probe)
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


def references(implementation: Implementation, cases: list[Case]) -> References:
    """Every case's single-rank reference under the implementation, in its own process."""
    with tempfile.TemporaryDirectory(prefix="harness-probe-") as out:
        request = {
            "cases": [case.to_dict() for case in cases],
            "impl": implementation.impl,
            "out": out,
        }
        done = subprocess.run(
            # -P: an mlx_lm folder in the current directory must not shadow the one chosen.
            [implementation.python, "-P", "-m", "harness.bisect.probe"],
            input=json.dumps(request),
            capture_output=True,
            text=True,
            env=implementation.environ(),
        )
        lines = [
            json.loads(line.removeprefix(PREFIX))
            for line in done.stdout.splitlines()
            if line.startswith(PREFIX)
        ]
        if done.returncode != 0 or not lines:
            tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise HarnessError(
                f"the harness could not run under {implementation.label} "
                f"({implementation.python}): {tail}"
            )
        versions, found = lines[0]["versions"], {}
        for line in lines[1:]:
            output = None
            if line["status"] == "ok":
                with np.load(Path(out) / f"{line['key']}.npz") as data:
                    output = Output.from_arrays(dict(data))
            strategies = tuple(s for s in ("tp", "pp") if line.get(s))
            found[line["key"]] = ImplementationReference(
                line["status"], line.get("detail"), output, strategies
            )
    return References(implementation, versions, found)
