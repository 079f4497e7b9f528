"""Deterministic weights: a pure function of (seed, parameter name), scaled by role."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

from harness.case import Case
from harness.models.build import build_model, tiny_config
from harness.models.mlx_lm_api import model_classes
from harness.models.weights import init_weights, param_rng

REPO = Path(__file__).resolve().parent.parent
# Archs whose constructors draw from mx.random (GatedDeltaNet A_log, MLA MultiLinear,
# KDA A_log): every such value must be overwritten.
RANDOM_INIT_ARCHS = ("qwen3_5_moe", "deepseek_v3", "kimi_k3")


def weights_digest(arch: str, seed: int = 0) -> str:
    """SHA-256 over every parameter's name and fp32 bytes, in name order."""
    model, _ = build_model(Case(arch=arch, seed=seed))
    digest = hashlib.sha256()
    for name, value in sorted(tree_flatten(model.parameters()), key=lambda item: item[0]):
        digest.update(name.encode())
        digest.update(np.array(value.astype(mx.float32)).tobytes())
    return digest.hexdigest()


def _params(arch: str, seed: int) -> dict[str, np.ndarray]:
    model, _ = build_model(Case(arch=arch, seed=seed))
    return {name: np.array(value) for name, value in tree_flatten(model.parameters())}


def test_same_seed_and_name_give_identical_values() -> None:
    first = param_rng(7, "model.layers.0.mlp.gate.weight").standard_normal(16)
    second = param_rng(7, "model.layers.0.mlp.gate.weight").standard_normal(16)
    np.testing.assert_array_equal(first, second)
    other_name = param_rng(7, "model.layers.1.mlp.gate.weight").standard_normal(16)
    assert not np.array_equal(first, other_name)


@pytest.mark.parametrize("arch", ["qwen3_moe", "deepseek_v3"])
def test_two_fresh_models_get_identical_weights(arch: str) -> None:
    first, second = _params(arch, seed=3), _params(arch, seed=3)
    assert first.keys() == second.keys()
    for name in first:
        np.testing.assert_array_equal(first[name], second[name], err_msg=name)


def test_a_different_seed_changes_every_parameter() -> None:
    first, second = _params("qwen3_moe", seed=0), _params("qwen3_moe", seed=1)
    for name in first:
        assert not np.array_equal(first[name], second[name]), name


@pytest.mark.parametrize("arch", RANDOM_INIT_ARCHS)
def test_weights_ignore_the_mx_random_state(arch: str) -> None:
    mx.random.seed(1)
    first = weights_digest(arch)
    mx.random.seed(2)
    assert weights_digest(arch) == first


def test_weights_are_identical_in_another_process() -> None:
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); "
        "import test_weights as t; "
        "print(' '.join(t.weights_digest(a) for a in t.RANDOM_INIT_ARCHS))"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-c", code, str(REPO / "tests")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=True,
    )
    here = [weights_digest(arch) for arch in RANDOM_INIT_ARCHS]
    assert result.stdout.split() == here


def test_weights_are_scaled_by_role() -> None:
    params = _params("deepseek_v3", seed=0)
    layer = "model.layers.1"
    norm = params[f"{layer}.input_layernorm.weight"]
    assert abs(norm.mean() - 1.0) < 0.1 and 0.02 < norm.std() < 0.3
    fan_in = 64
    q_a = params[f"{layer}.self_attn.q_a_proj.weight"]
    router = params[f"{layer}.mlp.gate.weight"]
    assert q_a.std() * np.sqrt(fan_in) == pytest.approx(1.0, rel=0.15)
    assert router.std() * np.sqrt(fan_in) == pytest.approx(2.0, rel=0.15)
    assert np.abs(params[f"{layer}.mlp.gate.e_score_correction_bias"]).max() < 0.1


def test_zero_centred_norm_gains_stay_near_zero() -> None:
    # minimax_m3_vl's GemmaRMSNorm multiplies by (1 + weight): its default is zeros.
    params = _params("minimax_m3_vl", seed=0)
    gain = params["language_model.model.layers.0.input_layernorm.weight"]
    assert abs(gain.mean()) < 0.1


def test_gated_delta_net_parameters_keep_their_meaning() -> None:
    params = _params("qwen3_5_moe", seed=0)
    attn = "language_model.model.layers.0.linear_attn"
    a = np.exp(params[f"{attn}.A_log"])
    assert ((a >= 1.0) & (a <= 16.0)).all()
    dt = np.log1p(np.exp(params[f"{attn}.dt_bias"]))
    assert ((dt > 5e-4) & (dt < 0.2)).all()


def test_init_weights_overwrites_in_place() -> None:
    config = tiny_config(Case(arch="llama"))
    model_cls, args_cls = model_classes(config)
    model = model_cls(args_cls.from_dict(config))
    init_weights(model, seed=0)
    embed = np.array(model.model.embed_tokens.weight)
    init_weights(model, seed=0)
    np.testing.assert_array_equal(np.array(model.model.embed_tokens.weight), embed)
