"""`harness bisect commits` over a real git repository of mlx-lm sources: one commit
changes qwen3_moe's numerics among unrelated ones, and commits without the architecture
are skipped; the repository is left exactly as it was."""

from pathlib import Path

import pytest
from mlx_lm_sources import commit, git, init_repo, scale_moe_output
from test_cli_errors import assert_one_line_error

MODEL = Path("mlx_lm/models/qwen3_moe.py")


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    """good, unrelated, architecture removed, unrelated, restored, numerics changed (the
    first bad commit), unrelated, unrelated (bad)."""
    repo = init_repo(tmp_path_factory.mktemp("bisect") / "mlx-lm")
    shas = {"good": git(repo, "rev-parse", "HEAD")}
    original = (repo / MODEL).read_text()

    def touch(name: str) -> str:
        with open(repo / "README.md", "a") as fh:
            fh.write(f"{name}\n")
        return commit(repo, f"docs: {name}")

    touch("unrelated 1")
    (repo / MODEL).unlink()
    shas["removed"] = commit(repo, "remove qwen3_moe for a rewrite")
    shas["still_missing"] = touch("unrelated 2")
    (repo / MODEL).write_text(original)
    shas["restored"] = commit(repo, "restore qwen3_moe")
    (repo / MODEL).write_text(scale_moe_output(original, layer=1))
    shas["first_bad"] = commit(repo, "qwen3_moe: scale the MoE output of layer 1")
    touch("unrelated 3")
    shas["bad"] = touch("unrelated 4")
    return repo, shas


def _state(repo: Path) -> tuple[str, str, str, str]:
    return (
        git(repo, "status", "--porcelain", "--untracked-files=all"),
        git(repo, "symbolic-ref", "HEAD"),
        git(repo, "rev-parse", "HEAD"),
        git(repo, "worktree", "list", "--porcelain"),
    )


def test_finds_the_commit_and_skips_where_the_arch_is_missing(history, run_cli):
    repo, shas = history
    before = _state(repo)
    result = run_cli(
        "bisect",
        "commits",
        "--repo",
        str(repo),
        "--good",
        shas["good"],
        "--bad",
        shas["bad"],
        "--arch",
        "qwen3_moe",
    )
    assert result.code == 1, result.err
    assert f"first bad commit: {shas['first_bad']} qwen3_moe: scale" in result.out
    skipped = [line.split()[0] for line in result.out.splitlines() if line.endswith(" skip")]
    missing = (shas["removed"], shas["still_missing"])
    assert skipped and all(any(sha.startswith(s) for sha in missing) for s in skipped), result.out
    assert _state(repo) == before
    assert not (repo / ".git" / "BISECT_LOG").exists()
    assert git(repo, "for-each-ref", "refs/bisect") == ""


def test_refuses_a_dirty_tree(history, run_cli):
    repo, shas = history
    (repo / "README.md").write_text("local edit\n")
    try:
        result = run_cli(
            "bisect",
            "commits",
            "--repo",
            str(repo),
            "--good",
            shas["good"],
            "--bad",
            "HEAD",
            "--arch",
            "qwen3_moe",
        )
    finally:
        git(repo, "checkout", "--", "README.md")
    assert_one_line_error(result, "uncommitted changes", "README.md")


def test_refuses_a_repository_that_is_not_mlx_lm(tmp_path, run_cli):
    other = tmp_path / "other"
    other.mkdir()
    (other / "file.txt").write_text("x\n")
    git(tmp_path, "init", "-q", str(other))
    git(other, "add", "-A")
    git(other, "-c", "user.email=t@e.invalid", "-c", "user.name=t", "commit", "-q", "-m", "x")
    result = run_cli(
        "bisect",
        "commits",
        "--repo",
        str(other),
        "--good",
        "HEAD",
        "--bad",
        "HEAD",
        "--arch",
        "qwen3_moe",
    )
    assert_one_line_error(result, "is not an mlx-lm repository")


def test_refuses_a_folder_that_is_not_a_repository(tmp_path, run_cli):
    result = run_cli(
        "bisect",
        "commits",
        "--repo",
        str(tmp_path),
        "--good",
        "a",
        "--bad",
        "b",
        "--arch",
        "qwen3_moe",
    )
    assert_one_line_error(result, "is not a git repository")


def test_good_must_be_an_ancestor_of_bad(history, run_cli):
    repo, shas = history
    result = run_cli(
        "bisect",
        "commits",
        "--repo",
        str(repo),
        "--good",
        shas["bad"],
        "--bad",
        shas["good"],
        "--arch",
        "qwen3_moe",
    )
    assert_one_line_error(result, "must be an ancestor of the bad commit")
