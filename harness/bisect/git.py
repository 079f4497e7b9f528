"""The few git operations bisecting an mlx-lm checkout needs, each leaving the repository
as it was: a temporary detached worktree is removed (and pruned) however the block ends."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from harness.errors import HarnessError


def run(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
    if check and done.returncode != 0:
        detail = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        raise HarnessError(f"git {args[0]} failed in {repo}: {detail}")
    return done


def require_mlx_lm_repo(repo: Path) -> Path:
    """The repository's top folder, after checking it is an mlx-lm checkout."""
    if not repo.is_dir():
        raise HarnessError(f"'{repo}' is not a folder")
    top = run(repo, "rev-parse", "--show-toplevel", check=False)
    if top.returncode != 0:
        raise HarnessError(f"'{repo}' is not a git repository")
    root = Path(top.stdout.strip())
    if run(root, "cat-file", "-e", "HEAD:mlx_lm/__init__.py", check=False).returncode != 0:
        raise HarnessError(f"'{root}' is not an mlx-lm repository (no mlx_lm/__init__.py at HEAD)")
    return root


def require_clean(repo: Path) -> None:
    status = run(repo, "status", "--porcelain", "--untracked-files=no").stdout.strip()
    if status:
        first = status.splitlines()[0].strip()
        raise HarnessError(
            f"'{repo}' has uncommitted changes ({first}, ...); commit or stash them first"
        )


def is_commit(repo: Path, rev: str) -> bool:
    done = run(repo, "rev-parse", "-q", "--verify", f"{rev}^{{commit}}", check=False)
    return done.returncode == 0


def commit(repo: Path, rev: str) -> str:
    if not is_commit(repo, rev):
        raise HarnessError(f"'{rev}' is not a commit of {repo}")
    return run(repo, "rev-parse", f"{rev}^{{commit}}").stdout.strip()


def is_ancestor(repo: Path, old: str, new: str) -> bool:
    return run(repo, "merge-base", "--is-ancestor", old, new, check=False).returncode == 0


@contextlib.contextmanager
def worktree(repo: Path, rev: str) -> Iterator[Path]:
    """A detached worktree of `rev` in a temporary folder, removed afterwards."""
    sha = commit(repo, rev)
    parent = Path(tempfile.mkdtemp(prefix="harness-worktree-"))
    tree = parent / "mlx-lm"
    run(repo, "worktree", "add", "--detach", "--quiet", str(tree), sha)
    try:
        yield tree
    finally:
        run(repo, "worktree", "remove", "--force", str(tree), check=False)
        run(repo, "worktree", "prune", check=False)
        shutil.rmtree(parent, ignore_errors=True)
