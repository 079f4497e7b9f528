"""Checkpoint layouts: how the same weights are named and shaped on disk.

mlx-lm's parameters are the `mlx` layout (stacked `switch_mlp` experts, what
`mlx_lm.convert` writes). Hugging Face checkpoints name and shape them differently, and
each model's `sanitize()` maps them back. A family's table below is the inverse of its
sanitize: it turns the zoo model's parameters into the Hugging Face layout, so loading the
written files through the real sanitize must give back exactly the same weights.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import mlx.core as mx

from harness.errors import HarnessError
from harness.zoo import get_arch


@dataclass(frozen=True)
class Layout:
    name: str
    description: str
    hf: bool = False  # named as Hugging Face writes it: the family's inverse sanitize
    bits: int | None = None  # the quantization the layout implies
    mode: str = "affine"


LAYOUTS: dict[str, Layout] = {
    layout.name: layout
    for layout in (
        Layout("mlx", "stacked switch_mlp experts as mlx_lm.convert writes them"),
        Layout("mlx-q4", "mlx layout, 4-bit affine as mlx_lm.convert -q writes it", bits=4),
        Layout("mlx-q8", "mlx layout, 8-bit affine", bits=8),
        Layout("mlx-mxfp4", "mlx layout, mxfp4 (convert --q-mode mxfp4)", bits=4, mode="mxfp4"),
        Layout("hf", "a dense model as Hugging Face writes it", hf=True),
        Layout("hf-per-expert", "one tensor per expert: mlp.experts.{n}.gate_proj.weight", hf=True),
        Layout("hf-fused", "3-D fused experts: experts.gate_up_proj, experts.down_proj", hf=True),
    )
}

_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")
# Norms Qwen3-Next / Qwen3.5 checkpoints store as w - 1 (their sanitize adds 1 back).
_OFFSET_NORMS = (
    ".input_layernorm.weight",
    ".post_attention_layernorm.weight",
    "model.norm.weight",
    ".q_norm.weight",
    ".k_norm.weight",
)


@dataclass(frozen=True)
class Family:
    """How a family's Hugging Face checkpoints differ from mlx-lm's parameters."""

    layouts: tuple[str, ...]
    block: str = "mlp"  # the MoE block that holds the stacked experts
    names: tuple[tuple[str, str], ...] = ()  # mlx expert projection -> Hugging Face name
    # "halves": experts.gate_up_proj = [gate; up] on the output axis (Qwen3.5, Mistral 4);
    # "mxfp4": OpenAI's gpt-oss release, gate/up interleaved, mxfp4 *_blocks / *_scales.
    fused: str | None = None
    mla: str | None = None  # regex of attention modules whose embed_q/unembed_out are kv_b_proj
    norm_offset: bool = False
    renames: tuple[tuple[str, str], ...] = field(default=())  # (mlx regex, Hugging Face)


# Qwen3.5 checkpoints are vision-language: the text model lives under model.language_model.
_QWEN3_5_KEYS = (
    (r"^language_model\.model\.", "model.language_model."),
    (r"^language_model\.lm_head\.", "lm_head."),
)

FAMILIES: dict[str, Family] = {
    "dense": Family(("hf",)),
    "qwen3_moe": Family(("hf-per-expert",)),
    "qwen3_next": Family(("hf-per-expert",), norm_offset=True),
    "qwen3_5": Family(("hf",), norm_offset=True, renames=_QWEN3_5_KEYS),
    "qwen3_5_moe": Family(("hf-fused",), fused="halves", norm_offset=True, renames=_QWEN3_5_KEYS),
    "deepseek": Family(("hf-per-expert",), mla=r"self_attn"),
    "mistral4": Family(("hf-per-expert", "hf-fused"), fused="halves", mla=r"self_attn"),
    "longcat": Family(("hf-per-expert",), mla=r"self_attn\.\d+"),
    "bailing": Family(
        ("hf-per-expert",), mla=r"attention", renames=((r"\.mlp\.gate\.gate_proj\.", ".mlp.gate."),)
    ),
    "exaone_moe": Family(
        ("hf-per-expert",),
        renames=((r"\.mlp\.gate\.e_score_correction_bias$", ".mlp.e_score_correction_bias"),),
    ),
    "minimax": Family(
        ("hf-per-expert",),
        block="block_sparse_moe",
        names=(("gate_proj", "w1"), ("down_proj", "w2"), ("up_proj", "w3")),
    ),
    "gpt_oss": Family(("hf-fused",), fused="mxfp4"),
}

ARCH_FAMILY: dict[str, str] = {
    "llama": "dense",
    "qwen2": "dense",
    "qwen3": "dense",
    "qwen3_5": "qwen3_5",
    "qwen3_moe": "qwen3_moe",
    "glm4_moe": "qwen3_moe",
    "solar_open": "qwen3_moe",
    "deepseek_v2": "qwen3_moe",
    "qwen3_next": "qwen3_next",
    "qwen3_5_moe": "qwen3_5_moe",
    "deepseek_v3": "deepseek",
    "deepseek_v32": "deepseek",
    "glm_moe_dsa": "deepseek",
    "glm4_moe_lite": "deepseek",
    "kimi_k25": "deepseek",
    "mistral4": "mistral4",
    "longcat_flash": "longcat",
    "bailing_hybrid": "bailing",
    "exaone_moe": "exaone_moe",
    "minimax": "minimax",
    "gpt_oss": "gpt_oss",
}


def get_layout(name: str) -> Layout:
    try:
        return LAYOUTS[name]
    except KeyError:
        raise HarnessError(f"unknown layout '{name}'; known: {', '.join(LAYOUTS)}") from None


def family_of(arch: str) -> Family | None:
    get_arch(arch)
    name = ARCH_FAMILY.get(arch)
    return None if name is None else FAMILIES[name]


def layouts_for(arch: str) -> list[str]:
    """Every layout the harness can write for `arch`: the mlx ones, then its family's."""
    family = family_of(arch)
    return [n for n, layout in LAYOUTS.items() if not layout.hf] + list(
        family.layouts if family else ()
    )


def to_layout(arch: str, layout: str, weights: dict[str, mx.array]) -> dict[str, mx.array]:
    """The zoo model's parameters (mlx layout, flat) as `layout` names and shapes them."""
    if not get_layout(layout).hf:
        return dict(weights)
    family = family_of(arch)
    if family is None or layout not in family.layouts:
        known = ", ".join(layouts_for(arch))
        raise HarnessError(f"'{arch}' has no '{layout}' layout; its layouts: {known}")
    weights = dict(weights)
    if layout == "hf-per-expert":
        weights = _per_expert(weights, family)
    elif layout == "hf-fused":
        weights = _fused_mxfp4(weights) if family.fused == "mxfp4" else _fused(weights, family)
    if family.mla:
        weights = _kv_b_proj(weights, family.mla)
    if family.norm_offset:
        weights = _offset_norms(weights)
    for pattern, replacement in family.renames:
        weights = {re.sub(pattern, replacement, k): v for k, v in weights.items()}
    return weights


def _experts(weights: dict, family: Family, stacked: str = "switch_mlp"):
    """(key, prefix up to the block, projection) of every stacked expert weight."""
    pattern = re.compile(rf"(.*\.{family.block})\.{stacked}\.({'|'.join(_PROJECTIONS)})\.weight")
    for key in list(weights):
        if match := pattern.fullmatch(key):
            yield key, match[1], match[2]


def _per_expert(weights: dict, family: Family) -> dict:
    names = dict(family.names)
    for key, block, proj in _experts(weights, family):
        stacked = weights.pop(key)
        for e in range(stacked.shape[0]):
            weights[f"{block}.experts.{e}.{names.get(proj, proj)}.weight"] = stacked[e]
    return weights


def _fused(weights: dict, family: Family) -> dict:
    blocks = {block for _, block, _ in _experts(weights, family)}
    for block in blocks:
        gate = weights.pop(f"{block}.switch_mlp.gate_proj.weight")
        up = weights.pop(f"{block}.switch_mlp.up_proj.weight")
        weights[f"{block}.experts.gate_up_proj"] = mx.concatenate([gate, up], axis=-2)
        weights[f"{block}.experts.down_proj"] = weights.pop(f"{block}.switch_mlp.down_proj.weight")
    return weights


def _interleave(gate: mx.array, up: mx.array, axis: int) -> mx.array:
    # gpt-oss stores gate and up rows alternately; its sanitize takes [::2] and [1::2].
    stacked = mx.stack([gate, up], axis=axis + 1 if axis >= 0 else axis)
    shape = list(gate.shape)
    shape[axis] *= 2
    return stacked.reshape(shape)


def _blocks(packed: mx.array) -> mx.array:
    # mlx packs 8 fp4 values per uint32; the release stores bytes in blocks of 32 values.
    as_bytes = packed.view(mx.uint8)
    return as_bytes.reshape(*as_bytes.shape[:-1], -1, 16)


def _fused_mxfp4(weights: dict) -> dict:
    pattern = re.compile(r"(.*\.mlp\.experts)\.gate_proj\.weight")
    for key in [k for k in weights if pattern.fullmatch(k)]:
        prefix = pattern.fullmatch(key)[1]
        part = {
            (p, leaf): weights.pop(f"{prefix}.{p}.{leaf}")
            for p in _PROJECTIONS
            for leaf in ("weight", "scales", "bias")
        }
        gate_up = {
            leaf: _interleave(part["gate_proj", leaf], part["up_proj", leaf], -2)
            for leaf in ("weight", "scales")
        }
        weights[f"{prefix}.gate_up_proj_blocks"] = _blocks(gate_up["weight"])
        weights[f"{prefix}.gate_up_proj_scales"] = gate_up["scales"]
        weights[f"{prefix}.gate_up_proj_bias"] = _interleave(
            part["gate_proj", "bias"], part["up_proj", "bias"], -1
        )
        weights[f"{prefix}.down_proj_blocks"] = _blocks(part["down_proj", "weight"])
        weights[f"{prefix}.down_proj_scales"] = part["down_proj", "scales"]
        weights[f"{prefix}.down_proj_bias"] = part["down_proj", "bias"]
    return weights


def _kv_b_proj(weights: dict, attention: str) -> dict:
    # sanitize splits kv_b_proj [H * (nope + v), kv_lora] into embed_q [H, kv_lora, nope]
    # and unembed_out [H, v, kv_lora]; this joins them back.
    pattern = re.compile(rf"(.*\.{attention})\.embed_q\.weight")
    for key in [k for k in weights if pattern.fullmatch(k)]:
        prefix = pattern.fullmatch(key)[1]
        embed_q = weights.pop(key)
        unembed_out = weights.pop(f"{prefix}.unembed_out.weight")
        kv_b = mx.concatenate([embed_q.swapaxes(-1, -2), unembed_out], axis=1)
        weights[f"{prefix}.kv_b_proj.weight"] = kv_b.reshape(-1, kv_b.shape[-1])
    return weights


def _offset_norms(weights: dict) -> dict:
    # Exact: the zoo's norm gains lie in [0.5, 2], where w - 1 and (w - 1) + 1 round to
    # nothing (Sterbenz). Conv weights go back to PyTorch's [C, 1, K].
    for key, value in list(weights.items()):
        if key.endswith(_OFFSET_NORMS) and value.ndim == 1:
            weights[key] = value - 1.0
        elif "conv1d.weight" in key and value.shape[-1] == 1:
            weights[key] = value.moveaxis(1, 2)
    return weights
