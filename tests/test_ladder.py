"""The comparison ladder on constructed outputs: metrics, verdicts and diagnoses."""

import numpy as np
import pytest

from harness.records.ladder import (
    TOLERANCES,
    compare,
    compare_requests,
    explain_routing_flip,
    tolerance_for,
)
from harness.records.outputs import Output

TOL = TOLERANCES["fp32"]
rng = np.random.default_rng(0)


def make(B=2, L=6, V=32, S=3, D=8, layers=3) -> Output:
    prefill = rng.normal(size=(B, L, V)).astype(np.float32)
    decode = rng.normal(size=(S, B, V)).astype(np.float32)
    tokens = np.concatenate([prefill[:, -1:].argmax(-1), decode.argmax(-1).T], axis=1)
    states = {}
    for i in range(layers):
        for part in ("attn", "mlp", "out"):
            states[f"layer.{i}.{part}"] = rng.normal(size=(B, L, D)).astype(np.float32)
    return Output(prefill, decode, tokens, states)


def copy(out: Output) -> Output:
    return Output(
        out.prefill.copy(),
        out.decode.copy(),
        out.tokens.copy(),
        {k: v.copy() for k, v in out.layers.items()},
    )


def test_identical_passes_with_exact_metrics():
    ref = make()
    cmp = compare(ref, copy(ref), TOL, world=2)
    assert cmp.passed and cmp.diagnoses == []
    m = cmp.metrics
    assert (
        m.max_abs == 0
        and m.kl_max == pytest.approx(0, abs=1e-12)
        and m.top1 == 1
        and m.tokens_match
    )
    assert m.cosine == pytest.approx(1)


def test_noise_below_tolerance_passes_and_above_fails():
    ref = make()
    test = copy(ref)
    test.prefill += 1e-6
    assert compare(ref, test, TOL, world=2).passed
    test.prefill += 1e-3
    cmp = compare(ref, test, TOL, world=2)
    assert not cmp.passed and cmp.metrics.max_abs == pytest.approx(1e-3 + 1e-6, rel=1e-2)


def test_first_divergent_layer_and_scaled():
    ref = make()
    test = copy(ref)
    test.prefill *= 1.1
    test.layers["layer.1.mlp"] = ref.layers["layer.1.mlp"] * 4
    test.layers["layer.1.out"] = ref.layers["layer.1.out"] + 1
    test.layers["layer.2.attn"] = ref.layers["layer.2.attn"] + 1
    cmp = compare(ref, test, TOL, world=4)
    assert "scaled x4" in cmp.diagnoses
    assert "first divergent layer 1 (mlp/moe)" in cmp.diagnoses
    assert (cmp.first_divergent_layer, cmp.first_divergent_part) == (1, "mlp/moe")


def test_not_scaled_when_ratio_is_not_world_size():
    ref = make()
    test = copy(ref)
    test.prefill *= 1.1
    test.layers["layer.0.attn"] = ref.layers["layer.0.attn"] * 1.5
    cmp = compare(ref, test, TOL, world=2)
    assert not any(d.startswith("scaled") for d in cmp.diagnoses)
    assert "first divergent layer 0 (attention)" in cmp.diagnoses


def test_non_finite_names_first_layer():
    ref = make()
    test = copy(ref)
    test.prefill[0, 3, 0] = np.nan
    test.layers["layer.2.mlp"][0, 0, 0] = np.inf
    test.layers["layer.1.attn"][1, 2, 3] = np.nan
    cmp = compare(ref, test, TOL, world=2)
    assert not cmp.passed
    assert "non-finite from layer 1 (attention)" in cmp.diagnoses


def test_saturated():
    ref = make()
    test = copy(ref)
    test.prefill *= 100
    test.decode *= 100
    assert "saturated" in compare(ref, test, TOL, world=2).diagnoses


def test_decode_only():
    ref = make()
    test = copy(ref)
    test.decode[0] += 0.5
    cmp = compare(ref, test, TOL, world=2)
    assert not cmp.passed and cmp.diagnoses[0] == "decode-only"


def test_decode_after_greedy_divergence_is_not_compared():
    ref = make()
    test = copy(ref)
    # Step 1 picks another token on both rows as a near-tie: the logits stay within
    # tolerance but the argmax flips.
    for row in range(2):
        top2 = np.argsort(-ref.decode[0, row])[:2]
        ref.decode[0, row, top2[1]] = ref.decode[0, row, top2[0]] - 1e-7
        test.decode[0, row] = ref.decode[0, row]
        test.decode[0, row, top2[1]] = ref.decode[0, row, top2[0]] + 1e-7
    test.tokens[:, 1] = test.decode[0].argmax(-1)
    test.decode[1:] += 5.0  # the continuation after divergence is different, by design
    cmp = compare(ref, test, tolerance_for("fp32", {"atol": 1e-3}), world=2)
    assert cmp.metrics.first_token_divergence == 1 and cmp.metrics.topk_contained
    assert cmp.passed and any("near-tie" in w for w in cmp.warnings)


def test_shape_mismatch_fails_clearly():
    ref = make()
    test = make(V=16)
    cmp = compare(ref, test, TOL, world=2)
    assert not cmp.passed and "shape" in cmp.diagnoses[0]


def test_tolerance_overrides_and_bf16_label():
    assert tolerance_for("q4-bf16") == TOLERANCES["bf16"]
    assert tolerance_for("fp32", {"atol": 1.0}).atol == 1.0


# Routing flips ----------------------------------------------------------------------


def with_router(out: Output, E=8, k=2, layer=1) -> Output:
    scores = rng.normal(size=out.prefill.shape[:2] + (E,)).astype(np.float32)
    out.layers[f"layer.{layer}.router.k{k}"] = scores
    return out


def flip_at(ref: Output, test: Output, row: int, position: int, margin: float, layer=1, k=2):
    key = f"layer.{layer}.router.k{k}"
    scores = ref.layers[key][row, position]
    order = np.argsort(-scores)
    scores[order[k]] = scores[order[k - 1]] - margin  # reference: a near-tie of `margin`
    t = scores.copy()
    t[order[k]] = scores[order[k - 1]] + margin  # the sharded side picks the other expert
    test.layers[key][row, position] = t
    test.prefill[row, position:] += 3.0  # its output and everything after differs
    test.decode[:, row] += 3.0


def test_routing_flip_at_near_tie_is_a_warning_not_a_failure():
    ref = with_router(make())
    test = copy(ref)
    flip_at(ref, test, row=0, position=3, margin=1e-7)
    assert explain_routing_flip(ref, test, TOL) is not None
    cmp = compare(ref, test, TOL, world=2)
    assert cmp.passed, cmp.diagnoses
    assert any("routing flip" in w and "prompt 0 position 3 layer 1" in w for w in cmp.warnings)


def test_routing_flip_with_wide_margin_fails():
    ref = with_router(make())
    test = copy(ref)
    flip_at(ref, test, row=0, position=3, margin=0.2)
    assert explain_routing_flip(ref, test, TOL) is None
    assert not compare(ref, test, TOL, world=2).passed


def test_real_bug_cannot_hide_behind_a_flip():
    ref = with_router(make())
    test = copy(ref)
    flip_at(ref, test, row=0, position=3, margin=1e-7)
    test.prefill[1, 0] += 0.01  # the other prompt, which no flip reaches, is wrong too
    assert not compare(ref, test, TOL, world=2).passed
    test = copy(ref)
    flip_at(ref, test, row=0, position=3, margin=1e-7)
    test.prefill[0, 1] += 0.01  # a position before the flip is wrong
    assert not compare(ref, test, TOL, world=2).passed


def test_a_later_request_matches_or_says_state_was_carried():
    first = make()
    assert compare_requests(first, copy(first), 2, TOL)["diagnosis"] is None
    later = copy(first)
    later.prefill[:, 3:] += 1e-2
    found = compare_requests(first, later, 2, TOL)
    assert found["diagnosis"] == (
        "request 2 differs from request 1 (state carried between requests), from prompt token 3"
    )
    later = copy(first)
    later.decode[1] += 1e-2
    assert compare_requests(first, later, 3, TOL)["diagnosis"].endswith("from decode step 2 of 3")
    first.prefill[0, 2] = np.nan  # the same non-finite value in both requests: no difference
    later = copy(first)
    assert compare_requests(first, later, 2, TOL)["diagnosis"] is None
