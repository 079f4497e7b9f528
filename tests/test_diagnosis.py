"""Injected causes, one 2-rank launch: each diagnosis and the layer it names; and correct
tensor and pipeline parallel across seeds and precisions with no false failure."""

import pytest

from harness.case import Case
from harness.run.parent.plan import RunOptions
from harness.run.parent.session import run

pytestmark = pytest.mark.multirank

FAULTS = {
    "harness.faults.reduction:double_reduce_mlp": (
        ["scaled x2", "first divergent layer 1 (mlp/moe)"],
        1,
        "mlp/moe",
    ),
    "harness.faults.corruption:perturb_layer_mlp": (
        ["first divergent layer 2 (mlp/moe)"],
        2,
        "mlp/moe",
    ),
    "harness.faults.corruption:perturb_layer_attention": (
        ["first divergent layer 2 (attention)"],
        2,
        "attention",
    ),
    "harness.faults.corruption:nan_in_attention": (
        ["non-finite from layer 2 (attention)"],
        None,
        None,
    ),
    "harness.faults.corruption:saturating_head": (
        [
            "layers match: divergence after the last decoder layer (final norm / lm_head)",
            "saturated",
        ],
        None,
        None,
    ),
    "harness.faults.corruption:decode_only": (["decode-only"], None, None),
}

CONTROLS = [
    Case(arch, strategy, seed=seed, quant=quant, decode_steps=3)
    for arch, strategy in (
        ("qwen3_moe", "tp"),
        ("deepseek_v3", "pp"),
        ("gpt_oss", "tp"),
        ("qwen3_next", "pp"),
    )
    for seed in (1, 2)
    for quant in (None, 4)
]


@pytest.fixture(scope="module")
def results():
    cases = [Case("qwen3_moe", name, decode_steps=3) for name in FAULTS] + CONTROLS
    options = RunOptions(ranks=2, repeats=1, timeout=60, goldens=None)
    return {r.case.label(): r for r in run(cases, options)}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_fault_is_caught_with_its_diagnosis(results, fault):
    expected, layer, part = FAULTS[fault]
    result = results[Case("qwen3_moe", fault).label()]
    assert result.status == "fail", result.reason
    for diagnosis in expected:
        assert diagnosis in result.diagnoses, result.diagnoses
    worst = result.comparisons[0]
    if layer is not None:
        assert (worst.first_divergent_layer, worst.first_divergent_part) == (layer, part)


@pytest.mark.parametrize("case", CONTROLS, ids=lambda c: c.label())
def test_correct_sharding_passes(results, case):
    result = results[case.label()]
    assert result.status == "pass", result.reason
    assert set(result.comparisons) == {0, 1}
