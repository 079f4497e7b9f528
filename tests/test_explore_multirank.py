"""`harness explore` on 2 real ranks: mlx-lm's tensor parallel is quiet; a serving fault is
found, shrunk, explained, and its printed command fails the same way under `harness run`;
SIGTERM keeps every stored example and marks the run interrupted; `selftest --explore`
finds and shrinks a serving fault with mlx-lm's tp and pp quiet."""

import json
import re
import shlex

import pytest

from harness.records import store

pytestmark = pytest.mark.multirank


def test_mlx_lms_tensor_parallel_is_quiet_within_a_small_budget(run_cli, tmp_path):
    db = tmp_path / "e.db"
    result = run_cli(
        "explore", "--arch", "qwen3_moe", "--strategy", "tp", "--ranks", "2",
        "--budget", "20", "--seed", "7", "--db", str(db),
    )  # fmt: skip
    assert result.code == 0, result.out + result.err
    assert "qwen3_moe/tp/fp32" in result.out and "nothing found" in result.out
    assert "seed 7" in result.out and "examples/min" in result.out
    run, cases = store.get_run(store.open_db(db), None, "explore")
    assert run["status"] == "passed" and run["examples"] == len(cases) >= 5
    assert run["operations"] >= run["examples"] and all(c["status"] == "pass" for c in cases)


def test_a_serving_fault_is_found_shrunk_and_its_command_fails_the_same_way(run_cli, tmp_path):
    db = tmp_path / "e.db"
    result = run_cli(
        "explore", "--arch", "qwen3_moe", "--strategy", "harness.faults.serving:request_left",
        "--ranks", "2", "--budget", "60", "--seed", "1", "--db", str(db),
    )  # fmt: skip
    assert result.code == 1, result.out + result.err
    assert "learned: after a request left the batch" in result.out
    where = re.search(r"FAILED: fail: .*?(uid \d+, .*left the batch)", result.out).group(1)
    command = re.search(r"reproduce: (harness run .*)", result.out).group(1)
    argv = shlex.split(command)
    scenario = argv[argv.index("--scenario") + 1]
    assert len(json.loads(scenario)["ops"]) <= 3  # shrunk to the smallest
    again = run_cli(*argv[1:], "--db", str(tmp_path / "run.db"))
    assert again.code == 1, again.out + again.err
    assert where in again.out
    (failure,) = store.explore_failures(store.open_db(db))
    assert failure["command"] == command and failure["status"] == "fail"


def test_sigterm_keeps_every_stored_example_and_marks_the_run_interrupted(
    tmp_path, sigterm_once_stored
):
    db = tmp_path / "e.db"
    argv = ["explore", "--arch", "qwen3_moe", "--strategy", "tp", "--ranks", "2"]
    code, err, rows = sigterm_once_stored(
        [*argv, "--budget", "300", "--db", str(db)], db, "cases", 3
    )
    assert code == 130, err
    assert "Traceback" not in err
    run, cases = store.get_run(store.open_db(db), None, "explore")
    assert run["status"] == "interrupted" and len(cases) >= rows
    assert run["examples"] == len(cases)


def test_the_explore_selftest_finds_shrinks_a_fault_and_keeps_the_controls_quiet(
    run_cli, tmp_path
):
    result = run_cli(
        "selftest", "--explore", "--fault", "cache_growth", "--ranks", "2",
        "--budget", "15", "--seed", "1", "--db", str(tmp_path / "s.db"),
    )  # fmt: skip
    assert result.code == 0, result.out + result.err
    assert "caught: cache_growth on qwen3_moe: batch 1x[256]" in result.out
    assert "passed: tp on qwen3_moe: nothing found" in result.out
    assert "passed: pp on qwen3_moe: nothing found" in result.out
    assert "3 of 3 as expected" in result.out
