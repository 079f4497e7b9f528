"""What a run captures besides layer outputs, on the zoo's real models in this process: a
router's input, and the keys an attention's own top-k selection lets each query see (an
indexer's top-k, a block-sparse mask), by which a flip of rounding's is told from a bug."""

import numpy as np
import pytest

from harness.case import Case
from harness.models.build import build_model
from harness.run.rank.forward import run

LONG = (tuple((7 * i + 3) % 200 + 1 for i in range(24)),)


@pytest.mark.parametrize("arch", ["deepseek_v32", "deepseek_v41", "minimax_m3_vl"])
def test_an_attention_that_selects_its_keys_records_what_it_selected(arch):
    model, _ = build_model(Case(arch=arch))
    out, _ = run(model, LONG, decode_steps=1, repeats=0)
    selected = {k: v for k, v in out.layers.items() if k.endswith(".select")}
    assert selected, sorted(out.layers)
    for key, signature in selected.items():
        assert signature.shape[:2] == (1, len(LONG[0])), key
    # Past the budget the selections differ from one query to the next.
    assert any(len({tuple(row) for row in s[0]}) > 2 for s in selected.values())


def test_the_same_selection_gives_the_same_signature_and_another_one_another():
    model, _ = build_model(Case(arch="deepseek_v32"))
    first, _ = run(model, LONG, decode_steps=1, repeats=0)
    again, _ = run(model, LONG, decode_steps=1, repeats=0)
    other, _ = run(model, (LONG[0][::-1],), decode_steps=1, repeats=0)
    keys = [k for k in first.layers if k.endswith(".select")]
    assert all(np.array_equal(first.layers[k], again.layers[k]) for k in keys)
    assert any(not np.array_equal(first.layers[k], other.layers[k]) for k in keys)


# Routers where they sit: in the MoE block (qwen3_moe), a router returning (indices,
# weights) with its linear layer as a child (longcat_flash's `classifier`), an MoE block
# after a shared MLP (granitemoehybrid), an MoE block that is the layer's `mixer`
# (nemotron_h), a top-k named `k` (ernie4_5_moe), the layer's own `router` (gemma4_text).
@pytest.mark.parametrize(
    "arch",
    ["qwen3_moe", "longcat_flash", "granitemoehybrid", "nemotron_h", "ernie4_5_moe", "gemma4_text"],
)
def test_a_router_records_its_scores_and_what_it_was_fed(arch):
    model, _ = build_model(Case(arch=arch))
    out, _ = run(model, LONG, decode_steps=1, repeats=0)
    routers = [k for k in out.layers if ".router.k" in k]
    assert routers
    for key in routers:
        fed = out.layers[key.split(".router.")[0] + ".router_in"]
        assert fed.shape[:2] == out.layers[key].shape[:2] == (1, len(LONG[0]))
        assert np.abs(fed).max() > 0


def test_a_capture_that_fails_is_the_harness_bug_not_the_model_crash(monkeypatch):
    from harness.errors import INTERNAL, blame, model_code
    from harness.run.rank import forward

    def broken(*args, **kwargs):
        raise ValueError("a signature the harness got wrong")

    monkeypatch.setattr(forward, "_signature", broken)
    model, _ = build_model(Case(arch="deepseek_v32"))
    with pytest.raises(Exception) as raised, model_code():
        run(model, LONG, decode_steps=1, repeats=0)
    status, reason = blame(raised.value)
    assert status == "error" and reason.startswith(INTERNAL), reason
    assert "a signature the harness got wrong" in reason
