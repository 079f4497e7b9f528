"""`harness bench` on 2 real ranks: mlx-lm's tp and pp and an external strategy compared in
one launch, every rank's trials stored; a strategy that kills its rank costs only itself."""

import subprocess

import pytest

from harness.records import store
from harness.run.parent.target import Target, launch_argv

pytestmark = pytest.mark.multirank


def test_strategies_side_by_side_in_one_launch_and_a_crash_costs_only_itself(run_cli, db_path):
    result = run_cli(
        "bench", "--arch", "qwen3_moe", "--layout", "mlx", "--ranks", "2",
        "--strategy", "tp", "--strategy", "pp",
        "--strategy", "harness.faults.crash:segfault_on_last_rank",
        "--strategy", "harness.faults.controls:manual_tp",
        "-p", "32", "-g", "6", "--num-trials", "2", "--timeout", "120", "--db", db_path,
    )  # fmt: skip
    assert result.code == 1, result.out + result.err  # the segfaulting strategy failed
    db = store.open_db(db_path)
    run, rows = store.get_run(db, None, "bench")
    stored = [(row, row["trials"]) for row in rows]
    assert run["ranks"] == 2 and run["kind"] == "bench"
    by_strategy = {row["strategy"]: (row, trials) for row, trials in stored}
    for ok in ("tp", "pp", "harness.faults.controls:manual_tp"):
        row, trials = by_strategy[ok]
        assert row["status"] == "ok", row["reason"]
        assert {(t["rank"], t["trial"]) for t in trials} == {(0, 0), (0, 1), (1, 0), (1, 1)}
        assert all(t["prompt_tps"] > 0 and t["generation_tps"] > 0 for t in trials)
        assert all(t["peak_memory_gb"] > 0 for t in trials)
    crashed, trials = by_strategy["harness.faults.crash:segfault_on_last_rank"]
    assert crashed["status"] == "crash" and not trials
    assert crashed["reason"].startswith("rank 1 killed by SIGSEGV")
    # Side by side: every strategy against tp, the first one given.
    assert "baseline" in result.out and "manual_tp" in result.out
    # The runs launched once before the crash and once after it: the case after the crash
    # still ran, in a fresh launch.
    assert [row["idx"] for row, _ in stored] == [0, 1, 2, 3]


def test_batched_generation_on_two_ranks(run_cli, db_path):
    result = run_cli(
        "bench", "--arch", "deepseek_v3", "--ranks", "2", "--strategy", "pp",
        "-p", "16", "-g", "4", "-b", "3", "--num-trials", "2", "--db", db_path,
    )  # fmt: skip
    assert result.code == 0, result.out + result.err
    samples = list(store.open_db(db_path).query("select * from bench_samples"))
    assert len(samples) == 4 and all(s["batch_size"] == 3 for s in samples)


def test_a_hung_rank_is_a_timeout_with_every_rank_stack(run_cli, db_path):
    result = run_cli(
        "bench", "--arch", "qwen3_moe", "--ranks", "2",
        "--strategy", "harness.faults.crash:hang_on_last_rank",
        "-p", "16", "-g", "4", "--num-trials", "1", "--timeout", "10", "--db", db_path,
    )  # fmt: skip
    assert result.code == 1, result.out + result.err
    (row,) = store.get_run(store.open_db(db_path), None, "bench")[1]
    trials = row["trials"]
    assert row["status"] == "timeout" and not trials
    assert "did not finish within 10s" in row["reason"]
    assert "hang_on_last_rank" in row["reason"]  # the hung rank's Python stack


def test_sigterm_keeps_the_finished_bench_cases_and_marks_the_run_interrupted(
    tmp_path, sigterm_once_stored
):
    db_path = tmp_path / "bench.db"
    argv = [
        "bench",
        "--arch",
        "qwen3_moe",
        "--ranks",
        "2",
        "--strategy",
        "pp",
        "--strategy",
        "harness.faults.crash:hang_on_last_rank",
        "-p",
        "16",
        "-g",
        "4",
        "--num-trials",
        "1",
        "--timeout",
        "300",
        "--db",
        str(db_path),
    ]  # fmt: skip
    code, err, rows = sigterm_once_stored(argv, db_path, "bench_cases", 1)
    assert rows == 1, "the first bench case was not stored"
    assert code == 130, err
    assert "Traceback" not in err
    run, rows = store.get_run(store.open_db(db_path), None, "bench")
    stored = [(row, row["trials"]) for row in rows]
    assert run["status"] == "interrupted"
    assert [row["strategy"] for row, _ in stored] == ["pp"]


PROMPTS_SCRIPT = """
import sys
import mlx.core as mx
from mlx_lm.utils import sharded_load
from harness.case import BenchCase, Case
from harness.run.rank.bench import _prompts

path, strategy = sys.argv[1], sys.argv[2]
group = mx.distributed.init()
# mlx_lm.benchmark's own order: seed, sharded_load, draw.
mx.random.seed(0)
groups = (group, None) if strategy == "pp" else (None, group)
_, _, config = sharded_load(path, *groups, return_config=True)
theirs = mx.random.randint(0, config["vocab_size"], (2, 16)).tolist()
bench = BenchCase(Case("qwen3_moe", strategy, checkpoint=path), prompt_tokens=16, batch_size=2)
ours = _prompts(bench, group)
print(f"rank {group.rank()} {strategy}: {'identical' if ours == theirs else 'different'}")
"""


def test_prompts_are_mlx_lm_benchmarks_own_ids_on_two_ranks(tmp_path, run_cli):
    """At 2 ranks mlx_lm.benchmark draws its prompts after sharded_load, whose lazy models
    and sharded layers consume random draws: the harness repeats them, so a by-hand run
    times the very same tokens."""
    model = tmp_path / "q3"
    assert run_cli("checkpoint", "write", "--arch", "qwen3_moe", "--layout", "mlx",
                   "--out", str(model)).code == 0  # fmt: skip
    script = tmp_path / "prompts.py"
    script.write_text(PROMPTS_SCRIPT)
    for strategy in ("tp", "pp"):
        argv = launch_argv(Target(ranks=2), [str(script), str(model), strategy], "prompts")
        done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        for rank in (0, 1):
            assert f"rank {rank} {strategy}: identical" in done.stdout, done.stdout
