"""The architecture zoo and the model builder: every tiny config builds and runs."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import mlx.core as mx
import numpy as np
import pytest

from harness import zoo
from harness.case import DEFAULT_PROMPTS, Case
from harness.errors import HarnessError
from harness.models import mlx_lm_api
from harness.models.build import build_model, tiny_config
from harness.zoo import ARCHS, Arch, get_arch, support

RANKS = (1, 2, 4)
QUANT_GROUP = 32


def _prefill(model) -> np.ndarray:
    logits = model(mx.array(DEFAULT_PROMPTS))
    return np.array(logits.astype(mx.float32))


def _max_probs(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(-1, keepdims=True))
    return (shifted / shifted.sum(-1, keepdims=True)).max(-1)


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_every_arch_builds_and_runs_an_unsaturated_prefill(name: str) -> None:
    status = support(name)
    if not status.available:
        pytest.skip(status.reason)
    model, config = build_model(Case(arch=name))
    logits = _prefill(model)
    assert logits.shape == (*np.array(DEFAULT_PROMPTS).shape, 256)
    assert np.isfinite(logits).all()
    max_probs = _max_probs(logits)
    assert np.median(max_probs) < 0.5, "softmax saturated: weights scaled too large"
    assert max_probs.max() < 0.99
    assert "quantization" not in config


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_registry_key_is_the_model_type(name: str) -> None:
    arch = get_arch(name)
    assert arch.name == arch.model_type == arch.config["model_type"] == name


def test_support_reports_an_arch_missing_from_mlx_lm(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = Arch(
        "zoo_test_fake", "no_such_model_type", False, (), {"model_type": "no_such_model_type"}
    )
    monkeypatch.setitem(zoo.ARCHS, fake.name, fake)
    status = support(fake.name)
    assert not status.available and not status.tp and not status.pp
    assert "no_such_model_type" in status.reason


def test_support_reports_what_the_installed_mlx_lm_offers() -> None:
    # Measured facts of mlx-lm 0.32.2: pipeline-only, tensor-only, and both.
    assert (support("qwen3_next").tp, support("qwen3_next").pp) == (False, True)
    assert (support("gpt_oss").tp, support("gpt_oss").pp) == (True, False)
    assert (support("deepseek_v3").tp, support("deepseek_v3").pp) == (True, True)


def test_unknown_arch_names_the_known_ones() -> None:
    with pytest.raises(HarnessError, match=r"unknown architecture 'nope'; known: .*qwen3_moe"):
        get_arch("nope")


def test_build_refuses_an_unavailable_arch(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = Arch("zoo_test_missing", "no_such_model_type", False, (), {"model_type": "x"})
    monkeypatch.setitem(zoo.ARCHS, fake.name, fake)
    with pytest.raises(HarnessError, match="'zoo_test_missing' is unavailable"):
        build_model(Case(arch=fake.name))


def _fields(config: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    for key, value in config.items():
        if isinstance(value, dict):
            yield from _fields(value)
        else:
            yield key, value


_HEAD_FIELDS = (
    "num_attention_heads",
    "num_key_value_heads",
    "num_attention_groups",
    "linear_num_key_heads",
    "linear_num_value_heads",
    "index_n_heads",
    "num_heads",
    "o_groups",
)
# Widths that tensor parallelism splits and a sharded-to-all layer then reads.
_SPLIT_WIDTHS = (
    "intermediate_size",
    "moe_intermediate_size",
    "shared_expert_intermediate_size",
    "shared_intermediate_size",
    "dense_intermediate_size",
    "ffn_hidden_size",
    "expert_ffn_hidden_size",
    "share_expert_dim",
)


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_configs_divide_at_every_rank_count(name: str) -> None:
    fields = list(_fields(dict(get_arch(name).config)))
    assert fields, name
    for key, value in fields:
        if key in _HEAD_FIELDS:
            assert all(value % n == 0 and value >= n for n in RANKS), (key, value)
        if key in _SPLIT_WIDTHS and value:
            assert all((value // n) % QUANT_GROUP == 0 for n in RANKS), (key, value)
            assert value % max(RANKS) == 0, (key, value)
        if key == "vocab_size":
            assert value % max(RANKS) == 0


_EXPERT_COUNTS = ("num_experts", "n_routed_experts", "num_local_experts", "moe_num_experts")
_TOP_K = (
    "num_experts_per_tok",
    "num_experts_per_token",
    "moe_topk",
    "moe_top_k",
    "moe_k",
    "top_k_experts",
)
# mlx-lm's llama4 asserts one expert per token, as Llama 4 routes.
_TOP_1 = ("llama4",)


# The layers that tensor parallelism splits on their input axis (sharded-to-all).
_SHARDED_TO_ALL = ("o_proj", "down_proj", "out_proj", "o_b_proj", "dense")


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_sharded_to_all_inputs_stay_quantizable_at_every_rank_count(name: str) -> None:
    config = zoo.config_copy(get_arch(name))
    model_cls, args_cls = mlx_lm_api.model_classes(config)
    model = model_cls(args_cls.from_dict(config))
    widths = {
        path: module.weight.shape[-1]
        for path, module in model.named_modules()
        if path.rpartition(".")[2] in _SHARDED_TO_ALL and "weight" in module
    }
    assert widths
    for path, width in widths.items():
        assert all((width // n) % QUANT_GROUP == 0 for n in RANKS), (path, width)


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_moe_archs_route_top2_of_at_least_8(name: str) -> None:
    arch = get_arch(name)
    fields = dict(_fields(dict(arch.config)))
    experts = [fields[k] for k in _EXPERT_COUNTS if fields.get(k)]
    assert bool(experts) == arch.moe
    if arch.moe:
        assert experts[0] >= 8
        top_k = 1 if name in _TOP_1 else 2
        assert [fields[k] for k in _TOP_K if k in fields] == [top_k]


def test_tiny_config_merges_nested_overrides_without_touching_the_registry() -> None:
    case = Case(arch="kimi_k25", overrides={"text_config": {"num_hidden_layers": 2}})
    config = tiny_config(case)
    assert config["text_config"]["num_hidden_layers"] == 2
    assert config["text_config"]["hidden_size"] == 64
    assert get_arch("kimi_k25").config["text_config"]["num_hidden_layers"] == 4


def test_build_quantizes_through_mlx_lm_and_casts(capsys: pytest.CaptureFixture) -> None:
    model, config = build_model(Case(arch="deepseek_v3", dtype="bfloat16", quant=4))
    assert config["quantization"]["bits"] == 4
    assert config["quantization"]["group_size"] == QUANT_GROUP
    assert capsys.readouterr().out == "", "quantize_model's [INFO] line must not leak"
    attn = model.model.layers[1].self_attn
    assert attn.embed_q.bits == 4, "MLA MultiLinear is quantized (bare nn.quantize cannot)"
    assert attn.o_proj.scales.dtype == mx.bfloat16
    # deepseek_v3's cast_predicate keeps the routing bias in float32.
    assert model.model.layers[1].mlp.gate.e_score_correction_bias.dtype == mx.float32
    assert np.isfinite(_prefill(model)).all()


def test_build_returns_a_fresh_model_every_call() -> None:
    case = Case(arch="qwen3_moe")
    first, _ = build_model(case)
    second, _ = build_model(case)
    assert first is not second
    assert first.model.layers[0] is not second.model.layers[0]


def test_build_turns_a_broken_override_into_one_sentence() -> None:
    case = Case(arch="qwen3_5_moe", overrides={"linear_num_key_heads": 3})
    with pytest.raises(HarnessError, match="cannot build 'qwen3_5_moe' with overrides"):
        build_model(case)


@pytest.mark.parametrize(("dtype", "quant"), [("float64", None), ("float32", 3)])
def test_build_rejects_an_unknown_precision(dtype: str, quant: int | None) -> None:
    with pytest.raises(HarnessError, match="is not one of"):
        build_model(Case(arch="llama", dtype=dtype, quant=quant))
