"""The harness's rank-side code under an older mlx-lm release (0.30.0, a real environment
from the package index): what the release lacks is a skip with the reason, what it has
runs, checkpoints included (its load_model has no trust_remote_code)."""

import pytest

from harness.bisect import implementations
from harness.case import Case
from harness.run.rank.golden_lifecycle import reference_output

pytestmark = pytest.mark.envs


@pytest.fixture(scope="module")
def old_release():
    return implementations.release("0.30.0")


def test_missing_architecture_skips_and_the_rest_runs(old_release):
    cases = [
        Case("qwen3_moe", "none", decode_steps=1),
        Case("qwen3_5_moe", "none", decode_steps=1),
        Case("qwen3_moe", "none", decode_steps=1, layout="mlx"),
        Case("qwen3_moe", "none", decode_steps=1, layout="mlx-q4", quant=4),
    ]
    refs = implementations.references(old_release, cases)
    assert refs.versions["mlx-lm"] == "0.30.0"
    plain, missing, fused, quantized = (refs.cases[c.key()] for c in cases)
    assert missing.status == "skip" and "has no model_type 'qwen3_5_moe'" in missing.detail
    for reference in (plain, fused, quantized):
        assert reference.status == "ok", reference.detail
    # The same tiny weights through both releases' qwen3_moe agree here.
    current = reference_output(cases[0])
    assert abs(plain.output.prefill - current.prefill).max() < 1e-4
