"""Real 2-rank launches: each strategy, a wrong external strategy, and ranks that crash or
hang. All cases of a test go through ONE runner call (a launch costs seconds)."""

import pytest

from harness.case import Case
from harness.run.runner import RunOptions, run

pytestmark = pytest.mark.multirank


def _results(cases, **options):
    return {r.index: r for r in run(cases, RunOptions(ranks=2, repeats=1, **options))}


def test_strategies_wrong_strategy_and_rank_failures_in_one_job():
    cases = [
        Case("qwen3_moe", "tp", decode_steps=2),
        Case("qwen3_moe", "harness.faults.crash:raise_on_last_rank", decode_steps=2),
        Case("deepseek_v3", "pp", decode_steps=2),
        Case("qwen3_moe", "harness.faults.crash:segfault_on_last_rank", decode_steps=2),
        Case("qwen3_moe", "harness.faults.crash:abort_on_last_rank", decode_steps=2),
        Case("qwen3_moe", "harness.faults.reduction:double_reduce_mlp", decode_steps=2),
        Case("qwen3_moe", "harness.faults.crash:hang_on_last_rank", decode_steps=2),
        Case("llama", "none", decode_steps=2),
        Case("qwen3_moe", "tp", quant=4, decode_steps=2),
    ]
    results = _results(cases, timeout=15)
    assert sorted(results) == list(range(len(cases)))

    for ok in (0, 2, 7, 8):
        assert results[ok].status == "pass", (ok, results[ok].reason)
        assert set(results[ok].comparisons) == {0, 1}, "every rank's output is compared"

    raised = results[1]
    assert raised.status == "crash"
    assert "rank 1 raised RuntimeError: injected failure while sharding" in raised.reason

    segv = results[3]
    assert segv.status == "crash"
    assert "rank 1 killed by SIGSEGV" in segv.reason
    assert "Fatal Python error: Segmentation fault" in segv.reason  # the rank's stderr tail

    abort = results[4]
    assert abort.status == "crash" and "rank 1 killed by SIGABRT" in abort.reason

    wrong = results[5]
    assert wrong.status == "fail"
    assert "scaled x2" in wrong.diagnoses
    assert "first divergent layer 1 (mlp/moe)" in wrong.diagnoses

    hang = results[6]
    assert hang.status == "timeout"
    assert "did not finish within 15s" in hang.reason
    # The hung case's own duration (from the previous case's result to its own) is the
    # watchdog's 15 s plus a relaunch; the whole job's wall time depends on machine load.
    assert hang.duration < 60, "a hung rank is bounded by the case timeout"


def test_tensor_parallel_held_against_pipeline_on_the_same_ranks():
    """For a model no single host holds: no single-rank reference runs, tp is held against pp."""
    cases = [
        Case("qwen3_moe", "tp", decode_steps=2),
        Case("qwen3_moe", "harness.faults.reduction:double_reduce_mlp", decode_steps=2),
        Case("qwen3_moe", "pp", decode_steps=2),
    ]
    results = _results(cases, reference="pp", goldens=None)
    assert results[0].status == "pass", results[0].reason
    assert results[0].reference == "pp on 2 ranks"
    assert results[1].status == "fail" and "scaled x2" in results[1].diagnoses
    assert results[2].status == "skip"
    assert "reference strategy is the case's own" in results[2].reason
