"""Scenarios on 2 real ranks: mlx-lm's own tp and pp pass wide batches, a decode across
the cache's growth step and BatchGenerator programs, at fp32 and q4-bf16 on two MoE
architectures; each serving fault fails at its catalog scenario with its location and
passes the fixed shapes. One job per test (a launch costs seconds)."""

import pytest

from harness.case import Case
from harness.faults.catalog import CATALOG
from harness.run.parent.plan import RunOptions
from harness.run.parent.session import run

pytestmark = pytest.mark.multirank

WIDE = {
    "kind": "batch",
    "prompts": [1, 7, 3, 12, 5, 9, 2, 16, 4, 8, 6, 11, 10, 13, 14, 15],
    "prefill_step": 4,
    "decode": 3,
}
GROWTH = {"kind": "batch", "prompts": [252, 5], "prefill_step": 128, "decode": 6}
SERVE = CATALOG["tp_serve"].scenario


def _results(cases):
    return {r.index: r for r in run(cases, RunOptions(ranks=2, repeats=0, timeout=120))}


FP32, Q4_BF16 = {}, {"dtype": "bfloat16", "quant": 4}
# deepseek_v3 at q4-bf16 routes by groups of experts: its 16-row batch under tp flips
# a group at near-tied positions, which the envelope explains (records/envelope.py).


@pytest.mark.parametrize("arch", ["qwen3_moe", "deepseek_v3"])
@pytest.mark.parametrize("precision", [FP32, Q4_BF16], ids=["fp32", "q4-bf16"])
def test_mlx_lm_tp_and_pp_pass_scenarios(arch, precision):
    cases = [
        Case(arch, strategy, scenario=spec, **precision)
        for strategy in ("tp", "pp")
        for spec in (WIDE, GROWTH, SERVE)
    ]
    results = _results(cases)
    assert len(results) == len(cases)
    assert all(set(r.comparisons) == {0, 1} for r in results.values())
    failing = [
        (cases[i].label(), r.reason)
        for i, r in sorted(results.items())
        if r.status != "pass" or r.location is not None
    ]
    assert not failing


def test_serving_faults_fail_at_their_scenario_and_pass_the_fixed_shapes():
    names = ("wide_batch", "cache_growth", "request_left", "reused_prefix")
    cases = [Case("qwen3_moe", CATALOG[n].strategy, scenario=CATALOG[n].scenario) for n in names]
    cases += [Case("qwen3_moe", CATALOG[n].strategy) for n in names]
    results = _results(cases)
    for index, name in enumerate(names):
        result, fault = results[index], CATALOG[name]
        assert result.status == "fail", (name, result.reason)
        for words in fault.diagnoses:
            assert any(words in d for d in result.diagnoses), (name, words, result.diagnoses)
        assert {"position", "decode_step", "op_index", "op", "sentence"} <= set(result.location)
        assert results[index + len(names)].status == "pass", (name, results[index + 4].reason)
    assert results[1].location["position"] == 256
    assert results[2].location["after"] == [0] and results[3].location["reused"] == 1
