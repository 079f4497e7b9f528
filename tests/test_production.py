"""Production conditions (README, "Low precision"): bf16 activations judged against an
fp32 truth on real ranks, unquantized bf16 skipped where the backend cannot run it, a
prompt past the model's context refused, and faults that need bf16 or a second request
caught with their words."""

import json

import pytest

from harness.case import Case
from harness.faults.selftest import run_selftest
from harness.models.build import gather_mm_problem, precision_problem
from harness.records import store
from harness.status import SelftestVerdict


def test_unquantized_bf16_moe_is_a_skip_that_names_the_op_where_the_backend_lacks_it(
    run_cli, db_path
):
    result = run_cli("run", "--arch", "qwen3_moe", "--precision", "bf16", "--db", db_path)
    _, cases = store.get_run(store.open_db(db_path), None)
    if gather_mm_problem("bfloat16") is None:  # Metal, CUDA: it runs
        assert cases[0]["status"] == "pass", result.out
        return
    assert result.code == 0 and cases[0]["status"] == "skip"
    assert "GatherMM" in cases[0]["reason"] and "bf16 MoE cannot run" in cases[0]["reason"]
    assert precision_problem(Case("qwen3_moe", dtype="bfloat16", quant=4)) is None
    assert precision_problem(Case("llama", dtype="bfloat16")) is None


def test_a_prompt_past_the_context_is_one_sentence(run_cli, db_path, tmp_path):
    suite = tmp_path / "too_long.toml"
    suite.write_text(
        '[[case]]\narch = "qwen3_moe"\nshape = "long-prompt"\n'
        "overrides = { max_position_embeddings = 128 }\n"
    )
    result = run_cli("run", "--suite", str(suite), "--db", db_path)
    assert result.code == 2
    assert result.err.strip().splitlines() == [
        "error: qwen3_moe/max_position_embeddings=128;shape=long-prompt/fp32/tp: a prompt of "
        "300 tokens plus 3 decode steps is 303 tokens, more than the model's context of 128 "
        "(max_position_embeddings)"
    ]


@pytest.mark.multirank
def test_mlx_lm_tensor_parallel_at_q4_bf16_passes_against_the_fp32_truth(run_cli, db_path):
    args = ["run", "--arch", "qwen3_moe", "--arch", "deepseek_v3", "--arch", "gpt_oss"]
    result = run_cli(*args, "--precision", "q4-bf16", "--strategy", "tp", "--ranks", "2",
                     "--repeats", "1", "--db", db_path)  # fmt: skip
    assert result.code == 0, result.out[-3000:]
    _, cases = store.get_run(store.open_db(db_path), None)
    assert [c["status"] for c in cases] == ["pass"] * 3
    for case in cases:
        envelope = json.loads(case["metrics"])["0"]["envelope"]
        assert envelope["passed"] and envelope["logits"], case["arch"]
        assert all(s["ratio"] <= envelope["ratio_limit"] for s in envelope["logits"])


@pytest.mark.multirank
def test_faults_of_bf16_and_of_a_second_request_are_caught_with_their_diagnosis(db_path):
    names = ["bf16_double_reduce", "state_between_requests", "stale_decode_state", "tp_q4_bf16"]
    report = run_selftest(2, names=names, database=store.open_db(db_path))
    verdicts = {v.fault: v for v in report.verdicts}
    assert verdicts["bf16_double_reduce"].verdict == SelftestVerdict.CAUGHT, verdicts[
        "bf16_double_reduce"
    ]
    assert verdicts["state_between_requests"].verdict == SelftestVerdict.CAUGHT
    # A leak the later request's prefill does not show: its decode steps are compared too.
    assert verdicts["stale_decode_state"].verdict == SelftestVerdict.CAUGHT, verdicts[
        "stale_decode_state"
    ]
    assert report.false_alarm_rate == 0.0
