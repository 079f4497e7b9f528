"""`harness bench`: mlx-lm's generation timed per strategy, stored per trial and rank, shown
side by side; every bad input is one sentence and exit 2."""

import pytest
import sqlite_utils

from harness import suites
from harness.case import BenchCase, Case
from harness.errors import HarnessError
from harness.records import store
from harness.records.bench import BenchResult, Spread, result_line, side_by_side
from harness.run import protocol
from harness.run.protocol import Result, Start
from harness.run.rank.bench import FIELDS, run_on_rank
from harness.status import BenchStatus

SMALL = ("-p", "32", "-g", "8", "--num-trials", "2")


def _trials(ranks: int, prompt: list[float], generation: list[float]) -> list[dict]:
    return [
        {
            "rank": rank,
            "trial": t,
            "prompt_tps": p,
            "generation_tps": g,
            "ttft_s": 32 / p,
            "peak_memory_gb": 0.01 * (rank + 1),
            "wall_s": 0.1,
        }
        for rank in range(ranks)
        for t, (p, g) in enumerate(zip(prompt, generation, strict=True))
    ]


def test_noise_rule_is_overlap_of_trial_ranges():
    assert Spread.of([10, 12, 11]).overlaps(Spread.of([11.5, 13, 14]))
    assert not Spread.of([10, 12, 11]).overlaps(Spread.of([12.5, 13, 14]))
    spread = Spread.of([3.0, 1.0, 2.0, 10.0])
    assert (spread.median, spread.low, spread.high) == (2.5, 1.0, 10.0)


def test_side_by_side_ratios_are_to_the_first_strategy_of_the_same_model_and_shapes():
    base = BenchCase(Case("qwen3_moe", "tp"), prompt_tokens=32)
    results = [
        BenchResult(0, base, 2, BenchStatus.OK, trials=_trials(2, [100, 110, 90], [50, 52, 48])),
        BenchResult(
            1,
            BenchCase(Case("qwen3_moe", "pp"), prompt_tokens=32),
            2,
            BenchStatus.OK,
            trials=_trials(2, [200, 220, 180], [49, 53, 51]),
        ),
        # Other shapes: a baseline of its own, not compared with the 32-token prompts.
        BenchResult(
            2,
            BenchCase(Case("qwen3_moe", "pp"), prompt_tokens=64),
            2,
            BenchStatus.OK,
            trials=_trials(2, [300], [40]),
        ),
    ]
    first, second, other = side_by_side([result_line(r) for r in results])
    assert first.baseline is None and not first.ratios
    assert second.baseline == "tp"
    assert second.ratios["prompt_tps"] == pytest.approx(2.0)
    assert second.noise == {"prompt_tps": False, "generation_tps": True, "ttft_s": False}
    assert second.peak_memory_gb == {0: 0.01, 1: 0.02}
    assert other.baseline is None


def test_store_keeps_every_rank_trial_with_its_shapes(tmp_path):
    db = store.open_db(tmp_path / "b.db")
    run_id = store.start_run(db, "bench", "x", 2, None, None, ["harness", "bench"])
    bench = BenchCase(Case("qwen3_moe", "tp"), prompt_tokens=32, generation_tokens=8)
    store.record(
        db, run_id, BenchResult(0, bench, 2, BenchStatus.OK, trials=_trials(2, [1, 2], [3, 4]))
    )
    store.record(db, run_id, BenchResult(1, bench, 2, "crash", "rank 1 killed by SIGSEGV"))
    counts = store.finish_run(db, run_id, "failed")
    assert (counts["cases"], counts["passed"], counts["failed"]) == (2, 1, 1)
    samples = list(db.query("select * from bench_samples where run_id = ?", [run_id]))
    assert len(samples) == 4
    assert {(s["rank"], s["trial"]) for s in samples} == {(0, 0), (0, 1), (1, 0), (1, 1)}
    assert all(s["prompt_tokens"] == 32 and s["generation_tokens"] == 8 for s in samples)
    assert all(s["bench_key"] == bench.key() for s in samples)
    run, stored = store.get_run(db, None, "bench")
    assert run["id"] == run_id and [len(row["trials"]) for row in stored] == [4, 0]
    assert stored[1]["reason"] == "rank 1 killed by SIGSEGV"


def test_run_timings_are_labelled_model_call_throughput_in_the_database(tmp_path):
    db = sqlite_utils.Database(store.open_db(tmp_path / "b.db").conn)
    columns = {c.name for c in db["model_call_throughput"].columns}
    assert {"model_call_prefill_tok_s", "model_call_decode_tok_s"} <= columns


def test_suite_bench_entries_expand_strategies_and_shape_lists(tmp_path):
    path = tmp_path / "b.toml"
    path.write_text(
        '[[bench]]\narch = "qwen3_moe"\nlayout = "mlx"\nstrategies = ["tp", "pp"]\n'
        "prompt_tokens = [16, 32]\ngeneration_tokens = 4\nnum_trials = 2\n"
        '[[bench]]\narch = "llama"\nprecision = "q4"\n'
    )
    benches = suites.load_bench(str(path), ranks=2)
    assert [(b.case.strategy, b.prompt_tokens) for b in benches[:4]] == [
        ("tp", 16),
        ("pp", 16),
        ("tp", 32),
        ("pp", 32),
    ]
    assert all(b.case.layout == "mlx" and b.num_trials == 2 for b in benches[:4])
    last = benches[4]
    assert (last.case.strategy, last.case.quant, last.generation_tokens) == ("tp", 4, 1024)
    assert suites.load_bench(str(path), ranks=1)[4].case.strategy == "none"


def test_suite_bench_entry_mistakes_name_the_entry(tmp_path):
    path = tmp_path / "b.toml"
    path.write_text('[[bench]]\narch = "qwen3_moe"\nprompt_tokens = [16, 0]\n')
    with pytest.raises(HarnessError, match=r"bench 1: --prompt-tokens must be .* got 0"):
        suites.load_bench(str(path), ranks=1)
    path.write_text('[[case]]\narch = "qwen3_moe"\n')
    with pytest.raises(HarnessError, match="no \\[\\[bench\\]\\] entries"):
        suites.load_bench(str(path), ranks=1)


@pytest.mark.parametrize(
    "args, fragments",
    [
        (("-p", "0"), ["--prompt-tokens must be an integer of at least 1, got 0"]),
        (("-g", "-3"), ["--generation-tokens must be an integer of at least 1, got -3"]),
        (("--num-trials", "0"), ["--num-trials must be an integer of at least 1, got 0"]),
        # -n is --ranks, as in every command (mlx_lm.benchmark's -n is --num-trials).
        (("-n", "0"), ["--ranks must be at least 1, got 0"]),
        (("--prefill-step-size", "0"), ["--prefill-step-size must be"]),
        (("-b", "33"), ["--batch-size 33 is more than the 32 sequences", "batch_generate"]),
        (("-p", "4000", "-g", "200"), ["4200 tokens", "context of 4096"]),
        (("--strategy", "zigzag"), ["unknown strategy 'zigzag'"]),
        (("--strategy", "missing_file.py:shard"), ["strategy file", "does not exist"]),
        (("--ranks", "3", "--strategy", "tp"), ["cannot run at 3 rank(s)", "divisible by 3"]),
        (("--ranks", "0"), ["--ranks must be at least 1"]),
        (("--layout", "mlx", "--checkpoint", "x"), ["not both"]),
    ],
)
def test_bad_input_is_one_sentence_and_exit_2(
    run_cli, db_path, args, fragments, assert_one_line_error
):
    result = run_cli("bench", "--arch", "qwen3_moe", *args, "--db", db_path)
    assert_one_line_error(result, *fragments)


def test_a_strategy_the_model_lacks_is_one_sentence(run_cli, db_path, assert_one_line_error):
    result = run_cli("bench", "--arch", "qwen3_next", "--strategy", "tp", "--db", db_path)
    assert_one_line_error(result, "strategy 'tp' cannot run", "no tensor-parallel shard()")


def test_without_a_model_is_one_sentence(run_cli, db_path, assert_one_line_error):
    assert_one_line_error(run_cli("bench", "--db", db_path), "give --arch NAME")


def test_bench_in_process_stores_and_reports_side_by_side(run_cli, db_path):
    result = run_cli(
        "bench", "--arch", "qwen3_moe", "--strategy", "none", "--strategy", "tp", *SMALL,
        "--db", db_path,
    )  # fmt: skip
    assert result.code == 0, result.err
    assert "baseline" in result.out and "rank 0's median" in result.out
    db = store.open_db(db_path)
    cases = list(db.query("select * from bench_cases order by idx"))
    assert [(c["strategy"], c["status"], c["ranks"]) for c in cases] == [
        ("none", "ok", 1),
        ("tp", "ok", 1),
    ]
    trials = list(db.query("select * from bench_trials"))
    assert len(trials) == 4
    assert all(t["prompt_tps"] > 0 and t["generation_tps"] > 0 for t in trials)
    assert all(t["ttft_s"] > 0 and t["peak_memory_gb"] > 0 for t in trials)
    report = run_cli("report", "--db", db_path)
    assert report.code == 0 and "bench run 1" in report.out and "baseline" in report.out


def test_batched_bench_of_a_checkpoint_layout_uses_batch_generate():
    bench = BenchCase(
        Case("qwen3_moe", "none", layout="mlx"),
        prompt_tokens=16,
        generation_tokens=4,
        batch_size=3,
        num_trials=2,
        warmup=0,
    )
    import mlx.core as mx

    spec = {"cases": [{"index": 7, "case": bench.to_dict()}]}
    (start, _), (out, arrays) = run_on_rank(spec, mx.distributed.init())
    assert start == Start("bench", [7])
    assert isinstance(out, Result) and out.index == 7 and not arrays and not out.failures
    assert len(out.trials) == 2
    assert all(set(FIELDS) <= set(t) and t["generation_tps"] > 0 for t in out.trials)
    assert protocol.decode_frame(protocol.encode_frame(out).decode())[0] == out  # as sent


def test_the_shipped_bench_suite_loads_and_applies_at_2_ranks():
    from harness.run.parent.bench import BenchOptions, validate

    benches, _ = validate(suites.load_bench("bench", ranks=2), BenchOptions(ranks=2))
    assert {b.case.strategy for b in benches} == {"tp", "pp"}


def test_a_strategy_that_raises_is_a_stored_crash_and_exit_1(run_cli, db_path):
    result = run_cli(
        "bench", "--arch", "qwen3_moe", "--strategy", "none",
        "--strategy", "harness.faults.crash:raise_on_last_rank", *SMALL, "--db", db_path,
    )  # fmt: skip
    assert result.code == 1, result.err
    db = store.open_db(db_path)
    rows = list(db.query("select strategy, status, reason from bench_cases order by idx"))
    assert rows[0]["status"] == "ok"
    assert rows[1]["status"] == "crash"  # the code under test raised: the model's crash
    assert "rank 0 raised RuntimeError: injected failure" in rows[1]["reason"]
    assert db["runs"].get(1)["status"] == "failed"


def test_run_timings_are_labelled_model_call_throughput_in_the_verdict_table():
    from harness import render

    table = render.verdict_table([], "run 1")
    headers = [str(column.header) for column in table.columns]
    assert "model-call prefill tok/s" in headers and "model-call decode tok/s" in headers
    assert "model-call throughput on the comparison shapes" in str(table.caption)


def test_an_interpreter_without_mlx_is_one_sentence_before_any_launch(
    run_cli, db_path, tmp_path, assert_one_line_error
):
    import subprocess
    import sys

    subprocess.run([sys.executable, "-m", "venv", "--without-pip", tmp_path / "bare"], check=True)
    result = run_cli(
        "bench", "--arch", "qwen3_moe", "--python", str(tmp_path / "bare/bin/python"),
        "-p", "16", "-g", "4", "--num-trials", "1", "--db", db_path,
    )  # fmt: skip
    assert_one_line_error(result, "bare/bin/python has no mlx or mlx-lm installed")


def test_prompts_are_mlx_lm_benchmarks_own_ids_at_one_rank(tmp_path, run_cli):
    """mlx_lm.benchmark seeds 0, loads (constructing the model draws initial values), then
    draws its prompts: the harness gives the same ids, so a by-hand run times the same
    tokens (2 ranks: test_bench_multirank)."""
    import mlx.core as mx
    from mlx_lm import load

    from harness.run.rank.bench import _prompts

    model = tmp_path / "q3"
    assert run_cli("checkpoint", "write", "--arch", "qwen3_moe", "--layout", "mlx",
                   "--out", str(model)).code == 0  # fmt: skip
    mx.random.seed(0)
    _, _, config = load(str(model), return_config=True)
    theirs = mx.random.randint(0, config["vocab_size"], (2, 16)).tolist()
    bench = BenchCase(Case("qwen3_moe", "none", checkpoint=str(model)), 16, batch_size=2)
    assert _prompts(bench, None) == theirs
