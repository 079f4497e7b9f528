"""`harness bisect commits` over a real git repository of mlx-lm sources: one commit
changes qwen3_moe's numerics among unrelated ones, a later one restores them, and commits
without the architecture are skipped; the repository is left exactly as it was."""

import re
from pathlib import Path

import pytest
import sqlite_utils

MODEL = Path("mlx_lm/models/qwen3_moe.py")


@pytest.fixture(scope="module")
def history(tmp_path_factory, mlx_lm_sources):
    """good, unrelated, architecture removed, unrelated, restored, numerics changed (the
    first bad commit), unrelated, unrelated (bad), numerics restored (the fix), unrelated."""
    repo = mlx_lm_sources.init_repo(tmp_path_factory.mktemp("bisect") / "mlx-lm")
    shas = {"good": mlx_lm_sources.git(repo, "rev-parse", "HEAD")}
    original = (repo / MODEL).read_text()

    def touch(name: str) -> str:
        with open(repo / "README.md", "a") as fh:
            fh.write(f"{name}\n")
        return mlx_lm_sources.commit(repo, f"docs: {name}")

    touch("unrelated 1")
    (repo / MODEL).unlink()
    shas["removed"] = mlx_lm_sources.commit(repo, "remove qwen3_moe for a rewrite")
    shas["still_missing"] = touch("unrelated 2")
    (repo / MODEL).write_text(original)
    shas["restored"] = mlx_lm_sources.commit(repo, "restore qwen3_moe")
    (repo / MODEL).write_text(mlx_lm_sources.scale_moe_output(original, layer=1))
    shas["first_bad"] = mlx_lm_sources.commit(repo, "qwen3_moe: scale the MoE output of layer 1")
    touch("unrelated 3")
    shas["bad"] = touch("unrelated 4")
    (repo / MODEL).write_text(original)
    shas["fix"] = mlx_lm_sources.commit(repo, "qwen3_moe: undo the scaled MoE output")
    shas["fixed"] = touch("unrelated 5")
    return repo, shas


def _state(git, repo: Path) -> tuple[str, str, str, str]:
    return (
        git(repo, "status", "--porcelain", "--untracked-files=all"),
        git(repo, "symbolic-ref", "HEAD"),
        git(repo, "rev-parse", "HEAD"),
        git(repo, "worktree", "list", "--porcelain"),
    )


def _bisect(run_cli, repo, good, bad, db, *more):
    return run_cli(
        "bisect", "commits", "--repo", str(repo), "--good", good, "--bad", bad,
        "--arch", "qwen3_moe", "--db", db, *more,
    )  # fmt: skip


def _steps(out: str) -> dict[str, str]:
    """The commits git tried, by short sha: good, bad or skip."""
    return dict(re.findall(r"^  ([0-9a-f]{12}) (good|bad|skip)$", out, re.M))


def _runs(db) -> list[dict]:
    return list(sqlite_utils.Database(db)["runs"].rows_where("kind = 'bisect'", order_by="id"))


def test_finds_the_commit_and_skips_where_the_arch_is_missing(
    history, run_cli, db_path, mlx_lm_sources
):
    repo, shas = history
    before = _state(mlx_lm_sources.git, repo)
    result = _bisect(run_cli, repo, shas["good"], shas["bad"], db_path)
    assert result.code == 1, result.err
    assert f"first bad commit: {shas['first_bad']} qwen3_moe: scale" in result.out
    skipped = [line.split()[0] for line in result.out.splitlines() if line.endswith(" skip")]
    missing = (shas["removed"], shas["still_missing"])
    assert skipped and all(any(sha.startswith(s) for sha in missing) for s in skipped), result.out
    assert _state(mlx_lm_sources.git, repo) == before
    assert not (repo / ".git" / "BISECT_LOG").exists()
    assert mlx_lm_sources.git(repo, "for-each-ref", "refs/bisect") == ""
    # The change against its parent: its size, the case, its ladder and the layer.
    bad, parent = shas["first_bad"][:12], shas["restored"][:12]
    assert "1 file changed, +3 -0 lines (against its parent)" in result.out, result.out
    ladder = next(line for line in result.out.splitlines() if f"{parent} -> {bad}" in line)
    assert ladder.strip().startswith("qwen3_moe/"), ladder
    assert "max|Δ|" in ladder and "first divergent layer 1 (" in ladder, ladder
    # Every commit judged is a stored run: the bad endpoint, then each step git took.
    runs = _runs(db_path)
    assert len(runs) == 1 + len(_steps(result.out)), (runs, result.out)
    assert runs[0]["suite"] == f"qwen3_moe @ {shas['bad'][:12]}" and runs[0]["status"] == "failed"
    assert runs[0]["mlx_lm_version"].endswith(f"+g{shas['bad'][:12]}")
    assert f"stored as runs {runs[0]['id']}-{runs[-1]['id']} (kind bisect)" in result.out
    first_bad = [r for r in runs if r["suite"] == f"qwen3_moe @ {bad}"]
    assert [r["status"] for r in first_bad] == ["failed"], runs


def test_inverse_finds_the_fix(history, run_cli, db_path):
    repo, shas = history
    result = _bisect(run_cli, repo, shas["fixed"], shas["first_bad"], db_path, "--inverse")
    assert result.code == 1, result.err
    assert f"first fixed commit: {shas['fix']} qwen3_moe: undo" in result.out, result.out
    fix, parent = shas["fix"][:12], shas["bad"][:12]
    assert "1 file changed, +0 -3 lines (against its parent)" in result.out, result.out
    ladder = next(line for line in result.out.splitlines() if f"{parent} -> {fix}" in line)
    assert "first divergent layer 1 (" in ladder, ladder
    steps = _steps(result.out)
    assert steps and steps.get(fix, "good") == "good" and "bad" in steps.values(), result.out
    statuses = {r["suite"].split(" @ ")[1]: r["status"] for r in _runs(db_path)}
    assert statuses[shas["first_bad"][:12]] == "failed"
    assert statuses.get(fix, "failed") == "passed", statuses


def test_refuses_a_dirty_tree(history, run_cli, assert_one_line_error, mlx_lm_sources):
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
        mlx_lm_sources.git(repo, "checkout", "--", "README.md")
    assert_one_line_error(result, "uncommitted changes", "README.md")


def test_refuses_a_repository_that_is_not_mlx_lm(
    tmp_path, run_cli, assert_one_line_error, mlx_lm_sources
):
    other = tmp_path / "other"
    other.mkdir()
    (other / "file.txt").write_text("x\n")
    mlx_lm_sources.git(tmp_path, "init", "-q", str(other))
    mlx_lm_sources.git(other, "add", "-A")
    mlx_lm_sources.git(
        other, "-c", "user.email=t@e.invalid", "-c", "user.name=t", "commit", "-q", "-m", "x"
    )
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


def test_refuses_a_folder_that_is_not_a_repository(tmp_path, run_cli, assert_one_line_error):
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


def test_swapped_endpoints_get_a_hint(history, run_cli, db_path, assert_one_line_error):
    repo, shas = history
    result = _bisect(run_cli, repo, shas["bad"], shas["good"], db_path)
    assert_one_line_error(
        result, f"the good commit {shas['bad']} is newer than the bad commit", "add --inverse"
    )
    result = _bisect(run_cli, repo, shas["good"], shas["bad"], db_path, "--inverse")
    assert_one_line_error(
        result, f"the bad commit {shas['bad']} is newer than the good commit", "drop --inverse"
    )
    assert _runs(db_path) == []


def test_good_must_be_an_ancestor_of_bad(
    history, run_cli, db_path, tmp_path, assert_one_line_error, mlx_lm_sources
):
    repo, shas = history
    mlx_lm_sources.git(repo, "checkout", "-q", "-b", "side", shas["good"])
    try:
        (repo / "README.md").write_text("a side branch\n")
        side = mlx_lm_sources.commit(repo, "docs: side")
    finally:
        mlx_lm_sources.git(repo, "checkout", "-q", "main")
    result = _bisect(run_cli, repo, side, shas["bad"], db_path)
    assert_one_line_error(result, f"the good commit {side} must be an ancestor of the bad commit")


@pytest.fixture(scope="module")
def hanging_history(tmp_path_factory, mlx_lm_sources):
    """good, unrelated, qwen3_moe's forward made to hang (the first bad commit), unrelated."""
    repo = mlx_lm_sources.init_repo(tmp_path_factory.mktemp("hang") / "mlx-lm")
    shas = {"good": mlx_lm_sources.git(repo, "rev-parse", "HEAD")}
    with open(repo / "README.md", "a") as fh:
        fh.write("unrelated\n")
    mlx_lm_sources.commit(repo, "docs: unrelated")
    (repo / MODEL).write_text(mlx_lm_sources.hang_in_forward((repo / MODEL).read_text()))
    shas["hang"] = mlx_lm_sources.commit(repo, "qwen3_moe: wait in every decoder layer")
    with open(repo / "README.md", "a") as fh:
        fh.write("unrelated\n")
    shas["bad"] = mlx_lm_sources.commit(repo, "docs: unrelated again")
    return repo, shas


def test_a_commit_that_hangs_is_bad_and_named_with_its_stack(hanging_history, run_cli, db_path):
    repo, shas = hanging_history
    result = _bisect(run_cli, repo, shas["good"], shas["bad"], db_path, "--timeout", "4")
    assert result.code == 1, result.out + result.err
    assert f"first bad commit: {shas['hang']} qwen3_moe: wait" in result.out, result.out
    flipped = next(line for line in result.out.splitlines() if "ok -> timeout" in line)
    assert "the reference did not finish within 4s (--timeout)" in flipped
    assert 'qwen3_moe.py", line' in result.out, "the hung rank's Python stack"
    bad = _runs(db_path)[0]
    assert bad["suite"] == f"qwen3_moe @ {shas['bad'][:12]}" and bad["status"] == "failed"
