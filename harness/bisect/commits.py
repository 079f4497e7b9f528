"""Bisecting commits of a local mlx-lm checkout with `git bisect run`.

The bisect runs in a temporary detached worktree (git keeps bisect state per worktree),
so the user's checkout, branch and files are never touched; the worktree is reset and
removed however the bisect ends. The good commit's references are computed first and
saved; each step then runs `harness bisect step` in the worktree, which judges the
checked-out mlx-lm against them and exits as git expects: 0 good, 1 bad, 125 skip (the
commit cannot run the cases: architecture missing, API different), and 128 to abort the
bisect when the harness itself fails.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.bisect import git, implementations
from harness.bisect.judge import CaseVerdict, group_verdict, judge_case
from harness.bisect.search import BAD, GOOD, SKIP
from harness.case import Case
from harness.errors import HarnessError
from harness.records.outputs import Output

EXIT_CODES = {GOOD: 0, BAD: 1, SKIP: 125}
EXIT_ABORT = 128  # git bisect run stops on any code above 127
CASES_FILE = "cases.json"


@dataclass
class CommitsBisect:
    first_bad: str | None  # None when skipped commits hide it (see candidates)
    candidates: list[str]  # the commits the change may be in
    subject: str
    steps: list[tuple[str, str]]  # (sha, good | bad | skip) in the order git tried them


def save_baseline(refs: implementations.References, cases: list[Case], folder: Path) -> None:
    """The good commit's references and the cases, for the steps to read."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CASES_FILE).write_text(json.dumps([case.to_dict() for case in cases]))
    for key, reference in refs.cases.items():
        if reference.output is not None:
            np.savez(folder / f"{key}.npz", **reference.output.arrays())


def step(checkout: Path, baseline: Path) -> tuple[str, list[CaseVerdict]]:
    """Judge the mlx-lm checked out at `checkout` against a saved baseline."""
    try:
        data = json.loads((baseline / CASES_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise HarnessError(f"'{baseline}' holds no bisect baseline ({exc})") from None
    cases = [Case.from_dict(case) for case in data]
    refs = implementations.references(implementations.checkout(checkout), cases)
    verdicts = [judge_case(case, refs, _saved(baseline, case)) for case in cases]
    return group_verdict(verdicts), verdicts


def _saved(baseline: Path, case: Case) -> Output | None:
    file = baseline / f"{case.key()}.npz"
    if not file.exists():
        return None
    with np.load(file) as data:
        return Output.from_arrays(dict(data))


def bisect_commits(repo: Path, good: str, bad: str, cases: list[Case], work: Path):
    """Find the first commit between good and bad whose references moved."""
    repo = git.require_mlx_lm_repo(repo)
    git.require_clean(repo)
    good_sha, bad_sha = git.commit(repo, good), git.commit(repo, bad)
    if good_sha == bad_sha or not git.is_ancestor(repo, good_sha, bad_sha):
        raise HarnessError(f"the good commit {good} must be an ancestor of the bad commit {bad}")
    with git.worktree(repo, good_sha) as tree:
        refs = implementations.references(implementations.checkout(tree, good), cases)
    if not any(r.status == "ok" for r in refs.cases.values()):
        reasons = "; ".join(sorted({r.detail or r.status for r in refs.cases.values()}))
        raise HarnessError(f"the good commit {good} cannot run any of the cases: {reasons}")
    baseline = work / "baseline"
    save_baseline(refs, cases, baseline)
    with git.worktree(repo, bad_sha) as tree:
        verdict, verdicts = step(tree, baseline)
        if verdict != BAD:
            raise HarnessError(f"the bad commit {bad} is {verdict}: nothing to bisect")
        try:
            git.run(tree, "bisect", "start", bad_sha, good_sha)
            # -P: the step runs in the worktree, whose mlx_lm must not shadow the harness's.
            command = [sys.executable, "-P", "-m", "harness.cli", "bisect", "step"]
            done = git.run(
                tree, "bisect", "run", *command, "--baseline", str(baseline), ".", check=False
            )
            if done.returncode != 0:
                raise HarnessError(_failure(done.stdout + done.stderr))
            log = git.run(tree, "bisect", "log").stdout
        finally:
            git.run(tree, "bisect", "reset", check=False)
    return _result(repo, done.stdout, log)


def _failure(output: str) -> str:
    errors = [
        line.removeprefix("error: ") for line in output.splitlines() if line.startswith("error: ")
    ]
    if errors:
        return f"a bisect step failed: {errors[-1]}"
    lines = [line for line in output.strip().splitlines() if line.strip()]
    return f"git bisect run failed: {lines[-1] if lines else 'no output'}"


_FIRST_BAD = re.compile(r"^([0-9a-f]{40}) is the first bad commit", re.M)
_STEP = re.compile(r"^git bisect (good|bad|skip) ([0-9a-f]{40})", re.M)


def _result(repo: Path, output: str, log: str) -> CommitsBisect:
    steps = [(sha, verdict) for verdict, sha in _STEP.findall(log)]
    found = _FIRST_BAD.search(output)
    if found:
        sha = found.group(1)
        subject = git.run(repo, "log", "-1", "--format=%s", sha).stdout.strip()
        return CommitsBisect(sha, [sha], subject, steps)
    # "There are only 'skip'ped commits left to test. The first bad commit could be any of:"
    candidates = re.findall(r"^([0-9a-f]{40})$", output, re.M)
    return CommitsBisect(None, candidates, "", steps)
