"""Bisecting commits of a local mlx-lm checkout with `git bisect run`.

The bisect runs in a temporary detached worktree (git keeps bisect state per worktree),
so the user's checkout, branch and files are never touched; the worktree is reset and
removed however the bisect ends. The good commit's references are computed first and
saved with the plan (the cases, the direction, where steps store their runs); each step
then runs `harness bisect step` in the worktree, which judges the checked-out mlx-lm
against them and exits as git expects: 0 for git's old term, 1 for its new one, 125 skip
(the commit cannot run the cases: architecture missing, API different), and 128 to abort
the bisect when the harness itself fails. Searching for a fix (`inverse`) runs git with the
terms `broken` (old) and `fixed` (new), since git lets no one call the old side bad.

Once found, the first bad commit (the fix, with `inverse`) is held against its parent:
its size (files and lines) and each case's ladder of metrics between the two.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from harness.bisect import git, implementations
from harness.bisect.judge import CaseVerdict, group_verdict, judge_case
from harness.case import Case
from harness.errors import HarnessError
from harness.records.ladder import Comparison, compare, tolerance_for
from harness.records.outputs import Output
from harness.status import ReferenceStatus, StepVerdict

EXIT_ABORT = 128  # git bisect run stops on any code above 127
PLAN_FILE = "bisect.json"
STORED = "stored as run"  # how a step names the run it stored, in git bisect run's output
# git's (old, new) terms and which of our verdicts each one is.
TERMS = {False: ("good", "bad"), True: ("broken", "fixed")}
STATES = {False: (StepVerdict.GOOD, StepVerdict.BAD), True: (StepVerdict.BAD, StepVerdict.GOOD)}


@dataclass
class Plan:
    """What every step reads beside the baseline's references."""

    cases: list[Case]
    inverse: bool = False
    record: dict = field(default_factory=dict)  # where and as what steps store their runs
    timeout: float = implementations.DEFAULT_TIMEOUT  # seconds per case's reference

    def save(self, folder: Path) -> None:
        data = {
            "cases": [case.to_dict() for case in self.cases],
            "inverse": self.inverse,
            "record": self.record,
            "timeout": self.timeout,
        }
        (folder / PLAN_FILE).write_text(json.dumps(data))

    @classmethod
    def load(cls, folder: Path) -> Plan:
        try:
            data = json.loads((folder / PLAN_FILE).read_text())
        except (OSError, ValueError) as exc:
            raise HarnessError(f"'{folder}' holds no bisect baseline ({exc})") from None
        cases = [Case.from_dict(case) for case in data["cases"]]
        timeout = data.get("timeout", implementations.DEFAULT_TIMEOUT)
        return cls(cases, data.get("inverse", False), data.get("record") or {}, timeout)


@dataclass
class CommitStep:
    sha: str
    refs: implementations.References
    verdict: StepVerdict
    verdicts: list[CaseVerdict]


@dataclass
class Change:
    """The first bad commit (the fix, inverse) against its parent."""

    parent: str
    files: int
    added: int
    deleted: int
    changed: list[tuple[Case, Comparison]]  # cases whose references moved
    flipped: list[str]  # cases that run on one side only, with the reason


@dataclass
class CommitsBisect:
    first_new: str | None  # the first bad commit (fixed, inverse); None: skips hide it
    candidates: list[str]  # the commits the change may be in
    subject: str
    steps: list[tuple[str, StepVerdict]]  # (sha, verdict) in the order git tried them
    inverse: bool = False
    change: Change | None = None
    runs: list[int] = field(default_factory=list)  # the runs the steps stored


def exit_code(verdict: StepVerdict, inverse: bool) -> int:
    """The exit code of a step for `git bisect run`: 0 old term, 1 new term, 125 skip."""
    if verdict == StepVerdict.SKIP:
        return 125
    return STATES[inverse].index(verdict)


def save_baseline(refs: implementations.References, plan: Plan, folder: Path) -> None:
    """The good commit's references and the plan, for the steps to read."""
    folder.mkdir(parents=True, exist_ok=True)
    plan.save(folder)
    for key, reference in refs.cases.items():
        if reference.output is not None:
            np.savez(folder / f"{key}.npz", **reference.output.arrays())


def step(checkout: Path, baseline: Path) -> tuple[Plan, CommitStep]:
    """Judge the mlx-lm checked out at `checkout` against a saved baseline."""
    plan = Plan.load(baseline)
    refs = implementations.references(implementations.checkout(checkout), plan.cases, plan.timeout)
    verdicts = [judge_case(case, refs, _saved(baseline, case)) for case in plan.cases]
    sha = git.run(checkout, "rev-parse", "HEAD").stdout.strip()
    return plan, CommitStep(sha, refs, group_verdict(verdicts), verdicts)


def _saved(baseline: Path, case: Case) -> Output | None:
    file = baseline / f"{case.key()}.npz"
    if not file.exists():
        return None
    with np.load(file) as data:
        return Output.from_arrays(dict(data))


def bisect_commits(
    repo: Path,
    good: str,
    bad: str,
    cases: list[Case],
    work: Path,
    inverse: bool = False,
    record: dict | None = None,
    on_step: Callable[[Plan, CommitStep], None] | None = None,
    timeout: float = implementations.DEFAULT_TIMEOUT,
) -> CommitsBisect:
    """Find the first commit between good and bad whose references moved (with `inverse`,
    bad is the older one: the first commit whose references came back to good's)."""
    implementations.check_timeout(timeout)
    repo = git.require_mlx_lm_repo(repo)
    git.require_clean(repo)
    good_sha, bad_sha = git.commit(repo, good), git.commit(repo, bad)
    _require_order(repo, good, bad, good_sha, bad_sha, inverse)
    old_sha, new_sha = (bad_sha, good_sha) if inverse else (good_sha, bad_sha)
    with git.worktree(repo, good_sha) as tree:
        refs = implementations.references(implementations.checkout(tree, good), cases, timeout)
    if not any(r.status == ReferenceStatus.OK for r in refs.cases.values()):
        reasons = "; ".join(sorted({r.detail or r.status for r in refs.cases.values()}))
        raise HarnessError(f"the good commit {good} cannot run any of the cases: {reasons}")
    baseline = work / "baseline"
    plan = Plan(cases, inverse, record or {}, timeout)
    save_baseline(refs, plan, baseline)
    old_term, new_term = TERMS[inverse]
    with git.worktree(repo, bad_sha) as tree:
        _, endpoint = step(tree, baseline)
        if on_step is not None:
            on_step(plan, endpoint)
        if endpoint.verdict != StepVerdict.BAD:
            raise HarnessError(f"the bad commit {bad} is {endpoint.verdict}: nothing to bisect")
        try:
            terms = [f"--term-old={old_term}", f"--term-new={new_term}"]
            git.run(tree, "bisect", "start", *terms, new_sha, old_sha)
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
    result = _result(repo, done.stdout, log, inverse)
    result.runs = [int(n) for n in re.findall(rf"^{STORED} (\d+)$", done.stdout, re.M)]
    if result.first_new is not None:
        result.change = change(repo, result.first_new, cases, timeout)
    return result


def _require_order(repo: Path, good: str, bad: str, good_sha: str, bad_sha: str, inverse: bool):
    """The old endpoint must be an ancestor of the new one; endpoints that look swapped
    get a hint, in one sentence."""
    old, new = (bad, good) if inverse else (good, bad)
    old_sha, new_sha = (bad_sha, good_sha) if inverse else (good_sha, bad_sha)
    if old_sha != new_sha and git.is_ancestor(repo, old_sha, new_sha):
        return
    role = ("bad", "good") if inverse else ("good", "bad")
    if old_sha != new_sha and git.is_ancestor(repo, new_sha, old_sha):
        other = (
            "drop --inverse to find the commit that broke it"
            if inverse
            else "add --inverse to find the commit that fixed it"
        )
        raise HarnessError(
            f"the {role[0]} commit {old} is newer than the {role[1]} commit {new}: "
            f"swap --good and --bad, or {other}"
        )
    raise HarnessError(
        f"the {role[0]} commit {old} must be an ancestor of the {role[1]} commit {new}"
    )


def change(
    repo: Path, sha: str, cases: list[Case], timeout: float = implementations.DEFAULT_TIMEOUT
) -> Change:
    """A commit against its first parent: its size, and every case's references held
    against the parent's (each computed in a worktree of its own)."""
    parent = git.commit(repo, f"{sha}^")
    files = added = deleted = 0
    for line in git.run(repo, "diff", "--numstat", parent, sha).stdout.splitlines():
        plus, minus, _ = line.split("\t", 2)
        files += 1
        # Binary files count as a file without lines ("-").
        added += int(plus) if plus.isdigit() else 0
        deleted += int(minus) if minus.isdigit() else 0
    sides = []
    for rev in (parent, sha):
        with git.worktree(repo, rev) as tree:
            checkout = implementations.checkout(tree, rev)
            sides.append(implementations.references(checkout, cases, timeout))
    before, after = sides
    changed, flipped = [], []
    for case in cases:
        a, b = before.cases.get(case.key()), after.cases.get(case.key())
        if a is None or b is None:
            continue
        if a.output is not None and b.output is not None:
            tol = tolerance_for(case.precision, case.tolerance)
            comparison = compare(a.output, b.output, tol, world=1)
            if not comparison.passed:
                changed.append((case, comparison))
        elif a.status != b.status:
            why = b.detail or a.detail or ""
            flipped.append(f"{case.label()}: {a.status} -> {b.status}: {why}".rstrip(": "))
    return Change(parent, files, added, deleted, changed, flipped)


def _failure(output: str) -> str:
    errors = [
        line.removeprefix("error: ") for line in output.splitlines() if line.startswith("error: ")
    ]
    if errors:
        return f"a bisect step failed: {errors[-1]}"
    lines = [line for line in output.strip().splitlines() if line.strip()]
    return f"git bisect run failed: {lines[-1] if lines else 'no output'}"


def _result(repo: Path, output: str, log: str, inverse: bool) -> CommitsBisect:
    old_term, new_term = TERMS[inverse]
    verdicts = dict(zip((old_term, new_term), STATES[inverse], strict=True)) | {
        StepVerdict.SKIP: StepVerdict.SKIP
    }
    pattern = re.compile(rf"^git bisect ({old_term}|{new_term}|skip) ([0-9a-f]{{40}})", re.M)
    steps = [(sha, verdicts[term]) for term, sha in pattern.findall(log)]
    found = re.search(rf"^([0-9a-f]{{40}}) is the first {new_term} commit", output, re.M)
    if found:
        sha = found.group(1)
        subject = git.run(repo, "log", "-1", "--format=%s", sha).stdout.strip()
        return CommitsBisect(sha, [sha], subject, steps, inverse)
    # "There are only 'skip'ped commits left to test. The first bad commit could be any of:"
    candidates = re.findall(r"^([0-9a-f]{40})$", output, re.M)
    return CommitsBisect(None, candidates, "", steps, inverse)
