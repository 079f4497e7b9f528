"""`harness bisect versions` end to end over an index served here, whose "releases" are
source trees of mlx-lm made from the installed one (the real runs of published releases
build environments from PyPI: tests/test_version_tolerance.py)."""

import shutil

import pytest

from harness.bisect import implementations
from harness.records import store

RELEASES = ["0.1.0", "0.1.1", "0.1.2", "0.1.3", "0.1.4", "0.1.5"]


def _publish(root, monkeypatch, mlx_lm_sources, package_index, bad: str):
    """The releases served here: 0.1.2 lacks qwen3_moe (skip), 0.1.4 and later have
    qwen3_moe's source changed by `bad` (the first bad release)."""
    for version in RELEASES:
        tree = root / version
        shutil.copytree(
            mlx_lm_sources.SOURCES, tree / "mlx_lm", ignore=shutil.ignore_patterns("__pycache__")
        )
        model = tree / "mlx_lm/models/qwen3_moe.py"
        if version == "0.1.2":
            model.unlink()
        elif version >= "0.1.4":
            model.write_text(bad)
    monkeypatch.setattr(
        implementations,
        "release",
        lambda version: implementations.checkout(root / version, f"mlx-lm {version}"),
    )
    with package_index.serve(RELEASES) as url:
        package_index.use(monkeypatch, url)
        yield


@pytest.fixture
def published(tmp_path_factory, monkeypatch, mlx_lm_sources, package_index):
    """0.1.4 scales qwen3_moe's layer 1."""
    source = (mlx_lm_sources.SOURCES / "models/qwen3_moe.py").read_text()
    bad = mlx_lm_sources.scale_moe_output(source, layer=1)
    root = tmp_path_factory.mktemp("releases")
    yield from _publish(root, monkeypatch, mlx_lm_sources, package_index, bad)


@pytest.fixture
def published_hanging(tmp_path_factory, monkeypatch, mlx_lm_sources, package_index):
    """0.1.4's qwen3_moe never returns from a decoder layer's forward."""
    source = (mlx_lm_sources.SOURCES / "models/qwen3_moe.py").read_text()
    bad = mlx_lm_sources.hang_in_forward(source)
    root = tmp_path_factory.mktemp("releases")
    yield from _publish(root, monkeypatch, mlx_lm_sources, package_index, bad)


def test_finds_the_release_and_layer_per_architecture_skipping_what_cannot_run(
    published, run_cli, db_path
):
    result = run_cli(
        "bisect",
        "versions",
        "--good",
        "0.1.0",
        "--bad",
        "0.1.5",
        "--baseline",
        "good",
        "--arch",
        "qwen3_moe",
        "--arch",
        "deepseek_v3",
        "--db",
        db_path,
    )
    assert result.code == 1, result.err
    assert "qwen3_moe: found: changed in mlx-lm 0.1.4" in result.out
    assert (
        "0.1.3 -> 0.1.4:" in result.out and "first divergent layer 1 (layer output)" in result.out
    )
    assert "deepseek_v3: unchanged: good from 0.1.0 to 0.1.5" in result.out
    runs = list(store.open_db(db_path).query("select kind, suite from runs order by id"))
    probed = [line.split()[1] for line in result.out.splitlines() if line.startswith("mlx-lm ")]
    assert [r["kind"] for r in runs] == ["bisect"] * len(probed)
    assert [r["suite"].rsplit(" ", 1)[-1] for r in runs] == probed
    # The middle release lacks the architecture: skipped, never counted bad.
    assert "0.1.2" in probed
    skipped = store.open_db(db_path).query(
        "select c.arch, c.verdict, c.reason from cases c join runs r on r.id = c.run_id "
        "where r.suite like '%0.1.2' order by c.arch"
    )
    rows = [(row["arch"], row["verdict"]) for row in skipped]
    assert rows == [("deepseek_v3", "good"), ("qwen3_moe", "skip")]


@pytest.mark.multirank
def test_two_ranks_run_each_release_sharded_under_its_sources(published, run_cli, db_path):
    result = run_cli(
        "bisect",
        "versions",
        "--good",
        "0.1.0",
        "--bad",
        "0.1.5",
        "--baseline",
        "good",
        "--arch",
        "qwen3_moe",
        "--ranks",
        "2",
        "--db",
        db_path,
    )
    assert result.code == 1, result.err
    assert "qwen3_moe: found: changed in mlx-lm 0.1.4" in result.out
    rows = list(
        store.open_db(db_path).query(
            "select r.suite, r.ranks, c.strategy, c.verdict, c.max_abs from cases c "
            "join runs r on r.id = c.run_id order by r.id, c.strategy"
        )
    )
    assert {row["ranks"] for row in rows} == {2}
    good = [row for row in rows if row["verdict"] == "good"]
    # Good steps hold the sharded tp and pp runs, against the reference on the same ranks.
    assert {row["strategy"] for row in good} == {"tp", "pp"}
    assert all(row["max_abs"] is not None and row["max_abs"] < 1e-4 for row in good)


def test_a_release_that_hangs_is_a_bad_step_with_its_stack(published_hanging, run_cli, db_path):
    result = run_cli(
        "bisect", "versions", "--good", "0.1.0", "--bad", "0.1.5", "--baseline", "good",
        "--arch", "qwen3_moe", "--timeout", "4", "--db", db_path,
    )  # fmt: skip
    assert result.code == 1, result.out + result.err
    assert "qwen3_moe: found: changed in mlx-lm 0.1.4" in result.out
    flipped = next(line for line in result.out.splitlines() if "good -> bad" in line)
    assert "under mlx-lm 0.1.4: timeout: the reference did not finish within 4s" in flipped
    rows = store.open_db(db_path).query(
        "select r.suite, c.verdict, c.reason from cases c join runs r on r.id = c.run_id "
        "where c.verdict = 'bad'"
    )
    reasons = [row["reason"] for row in rows]
    assert reasons and all("timeout" in reason for reason in reasons)
    assert all('qwen3_moe.py", line' in reason for reason in reasons), "the rank's stack"


def test_a_step_is_stored_through_the_run_loop_and_sigterm_keeps_what_it_stored(
    monkeypatch, db_path
):
    """A bisect step is a run like any other: SIGTERM while it is stored leaves it
    `interrupted` with the cases recorded so far, as `harness run` does."""
    import os
    import signal

    from harness.bisect import judge
    from harness.case import Case

    verdicts = [
        judge.CaseVerdict(Case("qwen3_moe", "none"), "good"),
        judge.CaseVerdict(Case("llama", "none"), "bad", "reference moved"),
    ]
    stored = judge.step_results

    def terminated_after_the_first(*args):
        results = stored(*args)
        yield next(results)
        os.kill(os.getpid(), signal.SIGTERM)
        yield from results

    database = store.open_db(db_path)
    versions = {"mlx": "0.1", "mlx-lm": "0.1.4"}
    run_id = judge.store_step(database, "qwen3_moe @ 0.1.4", versions, verdicts, ["harness"], 1)
    monkeypatch.setattr(judge, "step_results", terminated_after_the_first)
    with pytest.raises(KeyboardInterrupt):
        judge.store_step(database, "qwen3_moe @ 0.1.5", versions, verdicts, ["harness"], 1)
    runs = list(database.query("select id, kind, status, mlx_lm_version from runs order by id"))
    assert [(r["kind"], r["status"], r["mlx_lm_version"]) for r in runs] == [
        ("bisect", "failed", "0.1.4"),
        ("bisect", "interrupted", "0.1.4"),
    ]
    cases = list(database.query("select run_id, status, verdict from cases order by id"))
    assert [(c["run_id"], c["status"], c["verdict"]) for c in cases] == [
        (run_id, "pass", "good"),
        (run_id, "fail", "bad"),
        (runs[1]["id"], "pass", "good"),
    ]
