"""The architecture zoo: a tiny, shard-friendly config for every mlx-lm model type.

Every config follows one recipe so that 1, 2 and 4 ranks divide it: 4 layers, hidden
size 64, vocabulary 256, 8 query heads and 4 KV heads of 16 dims (o_proj reads 128
features), 8 routed experts with top-2, expert and shared-expert intermediate 128, dense
intermediate 256; entries note where their architecture needs otherwise. Widths that a
sharded-to-all layer reads stay multiples of 32 after dividing by 4, so 4-bit
quantization with group size 32 still applies to every shard. Each config keeps the
features that matter for sharding (dense-first layers, shared experts, MLA, linear
attention, sinks, biases, sliding windows, ...).

Every MoE model type of the installed mlx-lm is here, with or without its own `shard()` /
`pipeline()`: those without (mixtral, qwen2_moe, olmoe, ...) run external strategies, and
their built-in tp / pp cases are skipped with the reason. Left out:
- prism_hadamard_qwen35: loads only pre-quantized 2-bit Hadamard packs (frozen uint32
  weights, input widths divisible by 128), so there is nothing to initialise;
- bailing_moe_v3: reached only through bailing_hybrid's architecture remapping, with its
  own KDA / MLA layer groups; not yet configured.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from harness.errors import HarnessError
from harness.models import impl, mlx_lm_api
from harness.models.mlx_lm_api import MissingModelType


@dataclass(frozen=True)
class Arch:
    name: str
    model_type: str
    moe: bool
    features: tuple[str, ...]
    config: Mapping[str, Any]


@dataclass(frozen=True)
class Support:
    available: bool
    tp: bool
    pp: bool
    reason: str | None = None


# The feature of architectures whose mlx-lm code runs Metal-only kernels.
METAL_ONLY = "metal_kernels"

# Shared by every config; an entry overrides what its architecture names differently.
_BASE: dict[str, Any] = {
    "vocab_size": 256,
    "hidden_size": 64,
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "head_dim": 16,
    "intermediate_size": 256,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    "max_position_embeddings": 4096,
    "tie_word_embeddings": False,
}
_MOE: dict[str, Any] = {"num_experts_per_tok": 2, "moe_intermediate_size": 128}

# Multi-head latent attention: nope 32 and kv_lora 32 keep the absorbed MultiLinear
# weights quantizable at group size 32; v_head 16 gives o_proj 128 input features.
_MLA: dict[str, Any] = {
    "q_lora_rank": 32,
    "kv_lora_rank": 32,
    "qk_nope_head_dim": 32,
    "qk_rope_head_dim": 16,
    "v_head_dim": 16,
}

# Yarn with a tiny original context, so the llama-4 attention scaling of mistral
# models changes within the 12 positions a case runs.
_MISTRAL_ROPE: dict[str, Any] = {
    "type": "yarn",
    "rope_theta": 10000.0,
    "factor": 2.0,
    "original_max_position_embeddings": 8,
    "beta_fast": 32,
    "beta_slow": 1,
    "mscale": 1.0,
    "mscale_all_dim": 1.0,
    "llama_4_scaling_beta": 0.1,
}

_DEEPSEEK_V3: dict[str, Any] = {
    **_BASE,
    **_MOE,
    **_MLA,
    "model_type": "deepseek_v3",
    "n_routed_experts": 8,
    "n_shared_experts": 1,
    "routed_scaling_factor": 2.5,
    "topk_method": "noaux_tc",
    "scoring_func": "sigmoid",
    "norm_topk_prob": True,
    "n_group": 2,
    "topk_group": 1,
    "moe_layer_freq": 1,
    "first_k_dense_replace": 1,
}

_QWEN3_5: dict[str, Any] = {
    **_BASE,
    "model_type": "qwen3_5",
    # Linear layers 0 and 2, full attention 1 and 3: both kinds on every 2-rank stage.
    "full_attention_interval": 2,
    "linear_num_value_heads": 8,
    "linear_num_key_heads": 4,
    "linear_key_head_dim": 16,
    "linear_value_head_dim": 16,
    "linear_conv_kernel_dim": 4,
    "rope_parameters": {"type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5},
}

_LONGCAT: dict[str, Any] = {
    **_BASE,
    **_MLA,
    "model_type": "longcat_flash",
    "attention_method": "MLA",
    # Each layer holds two attention blocks, two dense MLPs and one MoE.
    "num_layers": 2,
    "ffn_hidden_size": 256,
    "expert_ffn_hidden_size": 128,
    "n_routed_experts": 8,
    "moe_topk": 2,
    # Two identity ("zero") experts, added after the all_sum.
    "zero_expert_num": 2,
    "zero_expert_type": "identity",
    "routed_scaling_factor": 1.0,
    "mla_scale_q_lora": True,
    "mla_scale_kv_lora": True,
    "attention_bias": False,
    "router_bias": True,
}


def _arch(model_type: str, moe: bool, features: tuple[str, ...], config: dict) -> Arch:
    # Deep-copied: entries built from one template must not share nested dicts.
    config = copy.deepcopy({**config, "model_type": model_type})
    return Arch(model_type, model_type, moe, features, MappingProxyType(config))


_ENTRIES: tuple[Arch, ...] = (
    # ---- Mixture of Experts ----
    _arch(
        "qwen3_moe",
        True,
        ("dense_first", "qk_norm"),
        {
            **_BASE,
            **_MOE,
            "num_experts": 8,
            "decoder_sparse_step": 1,
            "mlp_only_layers": [0],
            "norm_topk_prob": True,
        },
    ),
    _arch(
        "qwen3_5_moe",
        True,
        ("linear_attention", "shared_experts", "qk_norm", "attn_gate", "vocab_parallel"),
        {
            **_QWEN3_5,
            **_MOE,
            "num_experts": 8,
            "shared_expert_intermediate_size": 128,
            "norm_topk_prob": True,
        },
    ),
    _arch(
        "qwen3_next",
        True,
        ("linear_attention", "shared_experts", "dense_first", "qk_norm", "attn_gate"),
        {
            **_QWEN3_5,
            **_MOE,
            "num_experts": 8,
            "decoder_sparse_step": 1,
            "mlp_only_layers": [0],
            "shared_expert_intermediate_size": 128,
            "partial_rotary_factor": 0.5,
            "norm_topk_prob": True,
        },
    ),
    _arch(
        "deepseek_v2",
        True,
        ("mla", "shared_experts", "dense_first"),
        {
            **_DEEPSEEK_V3,
            # V2-Lite style: no query LoRA, so shard() takes the plain q_proj path.
            "q_lora_rank": None,
            "num_key_value_heads": 8,
            "routed_scaling_factor": 1.0,
            "topk_method": "greedy",
            # V2 always runs its own yarn RoPE, so it needs a yarn rope_scaling.
            "rope_scaling": {
                "type": "yarn",
                "factor": 4.0,
                "original_max_position_embeddings": 1024,
                "beta_fast": 32,
                "beta_slow": 1,
                "mscale": 0.707,
                "mscale_all_dim": 0.707,
            },
            "n_group": 1,
            "topk_group": 1,
        },
    ),
    _arch(
        "deepseek_v3",
        True,
        ("mla", "shared_experts", "dense_first", "grouped_routing"),
        {**_DEEPSEEK_V3},
    ),
    _arch(
        "deepseek_v32",
        True,
        ("mla", "shared_experts", "dense_first", "grouped_routing", "sparse_attention"),
        {
            **_DEEPSEEK_V3,
            # index_topk below the 8-token prompt, so the indexer really selects.
            "index_n_heads": 4,
            "index_head_dim": 32,
            "index_topk": 4,
        },
    ),
    _arch(
        "glm_moe_dsa",
        True,
        ("mla", "shared_experts", "dense_first", "sparse_attention"),
        {
            **_DEEPSEEK_V3,
            "n_group": 1,
            "topk_group": 1,
            "index_n_heads": 4,
            "index_head_dim": 32,
            "index_topk": 4,
            "rope_parameters": {"type": "default", "rope_theta": 10000.0},
            "attention_bias": False,
        },
    ),
    _arch(
        "deepseek_v41",
        True,
        (
            "shared_experts",
            "sinks",
            "sliding_window",
            "compressed_attention",
            "sparse_attention",
            "hyper_connections",
            "grouped_output",
        ),
        {
            **_BASE,
            **_MOE,
            "head_dim": 32,
            "q_lora_rank": 32,
            "qk_rope_head_dim": 16,
            "o_groups": 4,
            "o_lora_rank": 32,
            "n_routed_experts": 8,
            "scoring_func": "sqrtsoftplus",
            "routed_scaling_factor": 1.5,
            "swiglu_limit": 10.0,
            "sliding_window": 4,
            # Layer 0 is window-only; 1 and 3 compress and index their own KV (3 reads
            # layer 1's candidate blocks); 2 reuses layer 1's KV and top-k. Under a
            # 4-stage pipeline all of it crosses stage boundaries.
            "compress_ratios": [0, 4, 4, 4],
            "kv_source_layer_ids": [1, 3],
            "index_source_layer_ids": [1, 3],
            "candidate_source_layer_id": 1,
            "candidate_topk_blocks": 2,
            "candidate_block_size": 1,
            "index_n_heads": 4,
            "index_head_dim": 32,
            "index_topk": 2,
            "hc_mult": 4,
        },
    ),
    _arch(
        "glm4_moe",
        True,
        ("shared_experts", "dense_first", "qk_norm", "bias", "partial_rope"),
        {
            **_BASE,
            **_MOE,
            "n_routed_experts": 8,
            "n_shared_experts": 1,
            "routed_scaling_factor": 2.5,
            "norm_topk_prob": True,
            "n_group": 1,
            "topk_group": 1,
            "first_k_dense_replace": 1,
            "use_qk_norm": True,
            "attention_bias": True,
            "partial_rotary_factor": 0.5,
            "rope_scaling": None,
        },
    ),
    _arch(
        "solar_open",
        True,
        ("shared_experts", "dense_first", "partial_rope"),
        {
            **_BASE,
            **_MOE,
            "n_routed_experts": 8,
            "n_shared_experts": 1,
            "routed_scaling_factor": 1.0,
            "norm_topk_prob": True,
            "first_k_dense_replace": 1,
            "partial_rotary_factor": 0.5,
        },
    ),
    _arch(
        "glm4_moe_lite",
        True,
        ("mla", "shared_experts", "dense_first"),
        {
            **_DEEPSEEK_V3,
            "n_group": 1,
            "topk_group": 1,
            "routed_scaling_factor": 1.8,
        },
    ),
    _arch(
        "gpt_oss",
        True,
        ("sinks", "bias", "sliding_window"),
        {
            **_BASE,
            "num_local_experts": 8,
            "num_experts_per_tok": 2,
            # gpt-oss names the expert width intermediate_size.
            "intermediate_size": 128,
            "sliding_window": 4,
            "layer_types": ["sliding_attention", "full_attention"] * 2,
        },
    ),
    _arch(
        "minimax",
        True,
        ("qk_norm", "sharded_norm", "partial_rope"),
        {
            **_BASE,
            "num_local_experts": 8,
            "num_experts_per_tok": 2,
            "intermediate_size": 128,
            "shared_intermediate_size": 0,
            "rotary_dim": 8,
            "use_qk_norm": True,
        },
    ),
    _arch(
        "minimax_m3_vl",
        True,
        ("shared_experts", "dense_first", "qk_norm", "sparse_attention", "partial_rope"),
        {
            # The vision tower is optional here: a text_config alone builds the text
            # model, which is all that is sharded.
            "text_config": {
                **_BASE,
                "model_type": "minimax_m3",
                "intermediate_size": 128,
                "dense_intermediate_size": 256,
                "shared_intermediate_size": 128,
                "num_local_experts": 8,
                "num_experts_per_tok": 2,
                "partial_rotary_factor": 0.5,
                "mlp_layer_types": ["dense", "sparse", "sparse", "sparse"],
                "layer_types": ["full_attention", "sparse_attention"] * 2,
                # 2-token key blocks, 2 kept: the 8-token prompt really drops blocks.
                "index_n_heads": 4,
                "index_head_dim": 16,
                "index_block_size": 2,
                "index_topk_blocks": 2,
                "index_local_blocks": 1,
            },
        },
    ),
    _arch(
        "kimi_k25",
        True,
        ("mla", "shared_experts", "dense_first"),
        {
            "text_config": {
                **_DEEPSEEK_V3,
                "model_type": "kimi_k2",
                "n_group": 1,
                "topk_group": 1,
            },
        },
    ),
    _arch(
        "kimi_k3",
        True,
        (
            "mla",
            "linear_attention",
            "shared_experts",
            "dense_first",
            "latent_moe",
            "attn_gate",
            "attn_residuals",
        ),
        {
            **_BASE,
            **_MLA,
            "num_key_value_heads": 8,
            # Layers 0 and 2 (1-based 1 and 3) are KDA linear attention, 1 and 3 MLA.
            "linear_attn_config": {
                "num_heads": 8,
                "head_dim": 16,
                "short_conv_kernel_size": 4,
                "kda_layers": [1, 3],
            },
            "mla_use_nope": True,
            "mla_use_output_gate": True,
            "num_experts": 8,
            "num_experts_per_token": 2,
            "num_shared_experts": 1,
            "moe_intermediate_size": 128,
            "routed_scaling_factor": 2.0,
            "first_k_dense_replace": 1,
            "num_expert_group": 1,
            "topk_group": 1,
            "routed_expert_hidden_size": 32,
            "latent_moe_use_norm": True,
            "attn_res_block_size": 2,
        },
    ),
    _arch(
        "mistral4",
        True,
        ("mla", "shared_experts", "dense_first", "llama4_scaling"),
        {
            **_BASE,
            **_MOE,
            **_MLA,
            "n_routed_experts": 8,
            "n_shared_experts": 1,
            "routed_scaling_factor": 1.0,
            "norm_topk_prob": True,
            "n_group": 1,
            "topk_group": 1,
            "first_k_dense_replace": 1,
            "rope_parameters": dict(_MISTRAL_ROPE),
        },
    ),
    _arch(
        "step3p5",
        True,
        ("shared_experts", "dense_first", "qk_norm", "sliding_window", "attn_gate"),
        {
            **_BASE,
            "num_attention_groups": 4,
            "sliding_window": 4,
            "layer_types": ["full_attention", "sliding_attention"] * 2,
            # Sliding layers use twice the heads, as Step 3.5 does.
            "attention_other_setting": {"num_attention_heads": 16, "num_attention_groups": 4},
            "partial_rotary_factors": [0.5, 1.0, 0.5, 1.0],
            "use_head_wise_attn_gate": True,
            "moe_num_experts": 8,
            "moe_top_k": 2,
            "moe_intermediate_size": 128,
            "share_expert_dim": 128,
            "moe_layers_enum": "1,2,3",
            "moe_router_scaling_factor": 3.0,
            "swiglu_limits": [0.0, 7.0, 7.0, 7.0],
            "swiglu_limits_shared": [0.0, 0.0, 0.0, 16.0],
        },
    ),
    _arch(
        "exaone_moe",
        True,
        ("shared_experts", "dense_first", "qk_norm", "sliding_window"),
        {
            **_BASE,
            **_MOE,
            "num_experts": 8,
            "num_shared_experts": 1,
            "sliding_window": 4,
            "layer_types": ["sliding_attention"] * 3 + ["full_attention"],
            "is_moe_layer": [False, True, True, True],
        },
    ),
    _arch("longcat_flash", True, ("mla", "zero_experts", "bias"), dict(_LONGCAT)),
    _arch(
        "longcat_flash_ngram",
        True,
        ("mla", "zero_experts", "bias", "ngram_embeddings"),
        {
            **_LONGCAT,
            # 2 splits x 2 neighbours = 4 n-gram embedders of width 16.
            "ngram_vocab_size_ratio": 2,
            "emb_neighbor_num": 3,
            "emb_split_num": 2,
        },
    ),
    _arch(
        "bailing_hybrid",
        True,
        ("mla", "linear_attention", "shared_experts", "dense_first", "qk_norm"),
        {
            **_BASE,
            **_MOE,
            **_MLA,
            # Pipeline stages hold whole groups of 2 (linear, MLA); 8 layers make 4
            # groups so that 4 stages each get one.
            "num_hidden_layers": 8,
            "layer_group_size": 2,
            "group_norm_size": 4,
            "num_experts": 8,
            "num_shared_experts": 1,
            "n_group": 1,
            "topk_group": 1,
            "first_k_dense_replace": 1,
            "routed_scaling_factor": 2.5,
            "partial_rotary_factor": 0.5,
            "use_qk_norm": True,
        },
    ),
    _arch(
        "muse_spark",
        True,
        # Its attention, routing and norms run mlx_lm.kernels, which are Metal-only:
        # on the CPU backend the first forward fails with "No Metal back-end".
        ("latent_moe", "sliding_window", "attn_gate", "vocab_parallel", METAL_ONLY),
        {
            # Text only: muse_spark builds its vision tower only for a vision_config.
            "text_config": {
                **_BASE,
                "post_norm_eps": 1e-5,
                "rope_parameters": {"rope_theta": 10000.0},
                # Layer 2 has no RoPE, as some Muse Spark layers do.
                "layer_rope_theta": [10000.0, 10000.0, 0.0, 10000.0],
                "layer_types": ["sliding_attention", "full_attention"] * 2,
                "sliding_window": 4,
                "final_logit_softcapping": 30.0,
                "output_multiplier": 1.0,
                "num_local_experts": 8,
                "num_experts_per_tok": 2,
                "moe_hidden_size": 32,
                "moe_intermediate_size": 128,
                "mlp_layer_types": ["sparse"] * 4,
            },
        },
    ),
    # ---- Mixture of Experts without mlx-lm's shard() / pipeline() ----
    # Users shard these with their own strategies (FILE:fn); built-in tp / pp cases skip.
    # Where head_dim is hidden / heads, hidden 128 keeps 16-dim heads and an o_proj that
    # 4 ranks can split into quantizable slices, as qwen2 does.
    _arch(
        "mixtral",
        True,
        (),
        {
            **_BASE,
            "hidden_size": 128,
            "num_local_experts": 8,
            "num_experts_per_tok": 2,
            "intermediate_size": 128,
        },
    ),
    _arch(
        "qwen2_moe",
        True,
        ("shared_experts", "bias"),
        {
            **_BASE,
            **_MOE,
            "hidden_size": 128,
            "num_experts": 8,
            "shared_expert_intermediate_size": 128,
        },
    ),
    _arch(
        "olmoe", True, ("qk_norm",), {**_BASE, **_MOE, "num_experts": 8, "intermediate_size": 128}
    ),
    _arch(
        "phimoe",
        True,
        ("layer_norm", "longrope"),
        {
            **_BASE,
            "hidden_size": 128,
            "num_local_experts": 8,
            "num_experts_per_tok": 2,
            "intermediate_size": 128,
            "max_position_embeddings": 4096,
            "original_max_position_embeddings": 4096,
        },
    ),
    _arch(
        "granitemoe",
        True,
        ("multipliers",),
        {
            **_BASE,
            "hidden_size": 128,
            "num_local_experts": 8,
            "num_experts_per_tok": 2,
            "intermediate_size": 128,
            "logits_scaling": 2.0,
            "attention_multiplier": 0.25,
            "embedding_multiplier": 4.0,
            "residual_multiplier": 0.5,
            "attention_bias": False,
        },
    ),
    _arch(
        "llama4",
        True,
        ("shared_experts", "chunked_attention", "qk_norm", "no_rope_layers"),
        {
            "text_config": {
                **_BASE,
                "model_type": "llama4_text",
                "attention_bias": False,
                # Chunked local attention of 4 tokens on 3 of every 4 layers: a long
                # prompt crosses chunk boundaries.
                "attention_chunk_size": 4,
                "interleave_moe_layer_step": 1,
                "intermediate_size": 128,
                "intermediate_size_mlp": 256,
                "num_experts_per_tok": 1,
                "num_local_experts": 8,
                "rope_scaling": None,
                "use_qk_norm": True,
            },
        },
    ),
    _arch(
        "ernie4_5_moe",
        True,
        ("shared_experts", "dense_first"),
        {
            **_BASE,
            "use_bias": False,
            "moe_num_experts": 8,
            "moe_k": 2,
            "moe_intermediate_size": 128,
            "moe_num_shared_experts": 1,
            "moe_layer_start_index": 1,
        },
    ),
    _arch(
        "bailing_moe",
        True,
        ("shared_experts", "dense_first"),
        {
            **_BASE,
            "hidden_size": 128,
            **_MOE,
            "num_experts": 8,
            "num_shared_experts": 1,
            "norm_topk_prob": True,
            "first_k_dense_replace": 1,
            "topk_group": 1,
        },
    ),
    _arch(
        "deepseek",
        True,
        ("shared_experts", "dense_first"),
        {
            **_BASE,
            "hidden_size": 128,
            **_MOE,
            "n_routed_experts": 8,
            "n_shared_experts": 1,
            "first_k_dense_replace": 1,
            "num_key_value_heads": 8,
        },
    ),
    _arch(
        "dots1",
        True,
        ("shared_experts", "dense_first", "qk_norm"),
        {
            **_BASE,
            **_MOE,
            "n_routed_experts": 8,
            "n_shared_experts": 1,
            "first_k_dense_replace": 1,
            "norm_topk_prob": True,
            "routed_scaling_factor": 2.5,
            "scoring_func": "noaux_tc",
        },
    ),
    _arch(
        "hunyuan",
        True,
        ("shared_experts", "qk_norm", "cross_layer_attention"),
        {
            **_BASE,
            "hidden_size": 128,
            "attention_bias": False,
            "moe_topk": 2,
            "num_experts": 8,
            "num_shared_expert": 1,
            "moe_intermediate_size": 128,
            "use_mixed_mlp_moe": True,
            "use_qk_norm": True,
            # Layers share their KV in pairs (CLA).
            "use_cla": True,
            "cla_share_factor": 2,
            # Hunyuan always runs its dynamic-NTK RoPE, which reads an alpha.
            "rope_scaling": {"alpha": 1000.0, "factor": 1.0, "type": "dynamic"},
        },
    ),
    _arch(
        "Klear",
        True,
        ("shared_experts", "dense_first", "qk_norm"),
        {
            **_BASE,
            "hidden_size": 128,
            **_MOE,
            "attention_bias": False,
            "mlp_only_layers": [0],
            "num_experts": 8,
            "decoder_sparse_step": 1,
            "n_shared_experts": 1,
            "norm_topk_prob": True,
        },
    ),
    _arch(
        "afmoe",
        True,
        ("shared_experts", "dense_first", "sliding_window", "attn_gate"),
        {
            **_BASE,
            **_MOE,
            "num_experts": 8,
            "num_shared_experts": 1,
            "num_dense_layers": 1,
            "sliding_window": 4,
            "layer_types": ["sliding_attention", "full_attention"] * 2,
        },
    ),
    _arch(
        "lfm2_moe",
        True,
        ("short_conv", "dense_first", "expert_bias"),
        {
            **_BASE,
            "hidden_size": 128,
            **_MOE,
            "num_experts": 8,
            "norm_topk_prob": True,
            "use_expert_bias": True,
            "num_dense_layers": 1,
            "norm_eps": 1e-5,
            "conv_bias": False,
            "conv_L_cache": 3,
            "layer_types": ["conv", "full_attention"] * 2,
        },
    ),
    _arch(
        "mellum",
        True,
        ("qk_norm", "sliding_window"),
        {
            **_BASE,
            **_MOE,
            "num_experts": 8,
            "norm_topk_prob": True,
            "sliding_window": 4,
            "layer_types": ["sliding_attention", "full_attention"] * 2,
            # One RoPE per layer type.
            "rope_parameters": {
                "sliding_attention": {"rope_theta": 10000.0},
                "full_attention": {"rope_theta": 10000.0},
            },
        },
    ),
    _arch(
        "jamba",
        True,
        ("ssm", "hybrid"),
        {
            **_BASE,
            "hidden_size": 128,
            "num_experts": 8,
            "num_experts_per_tok": 2,
            "intermediate_size": 128,
            # Mamba layers 0 and 2, attention 1 and 3; experts on the odd layers.
            "attn_layer_offset": 1,
            "attn_layer_period": 2,
            "expert_layer_offset": 1,
            "expert_layer_period": 2,
            "mamba_d_conv": 4,
            "mamba_d_state": 8,
            "mamba_expand": 2,
        },
    ),
    _arch(
        "nemotron_h",
        True,
        ("ssm", "hybrid", "shared_experts"),
        {
            **_BASE,
            "attention_bias": False,
            "mamba_num_heads": 8,
            "mamba_head_dim": 16,
            "mamba_proj_bias": False,
            "ssm_state_size": 16,
            "conv_kernel": 4,
            "n_groups": 2,
            "mlp_bias": False,
            "layer_norm_epsilon": 1e-5,
            "use_bias": False,
            "use_conv_bias": True,
            "hybrid_override_pattern": ["M", "E", "*", "E"],
            "moe_intermediate_size": 128,
            "moe_shared_expert_intermediate_size": 128,
            "n_routed_experts": 8,
            "n_shared_experts": 1,
            "num_experts_per_tok": 2,
            "n_group": 1,
            "topk_group": 1,
            "norm_topk_prob": True,
            "routed_scaling_factor": 1.0,
        },
    ),
    _arch(
        "granitemoehybrid",
        True,
        ("ssm", "hybrid", "shared_experts", "multipliers"),
        {
            **_BASE,
            "hidden_size": 128,
            "attention_bias": False,
            "embedding_multiplier": 4.0,
            "attention_multiplier": 0.25,
            "logits_scaling": 2.0,
            "residual_multiplier": 0.5,
            "layer_types": ["mamba", "attention"] * 2,
            "num_local_experts": 8,
            "num_experts_per_tok": 2,
            "intermediate_size": 128,
            "shared_intermediate_size": 128,
            "mamba_n_heads": 8,
            "mamba_d_head": 16,
            "mamba_proj_bias": False,
            "mamba_d_state": 16,
            "mamba_d_conv": 4,
            "mamba_n_groups": 2,
            "mamba_conv_bias": True,
        },
    ),
    _arch(
        "kimi_linear",
        True,
        ("mla", "linear_attention", "shared_experts", "dense_first"),
        {
            **_BASE,
            **_MLA,
            "num_key_value_heads": 8,
            "model_max_length": 4096,
            "linear_attn_config": {
                "num_heads": 8,
                "head_dim": 16,
                "short_conv_kernel_size": 4,
                "kda_layers": [1, 3],
            },
            "mla_use_nope": True,
            "num_experts": 8,
            "num_experts_per_token": 2,
            "num_shared_experts": 1,
            "moe_intermediate_size": 128,
            "first_k_dense_replace": 1,
        },
    ),
    _arch(
        "bailing_moe_linear",
        True,
        ("linear_attention", "shared_experts", "dense_first"),
        {
            **_BASE,
            "hidden_size": 128,
            **_MOE,
            "num_experts": 8,
            "num_shared_experts": 1,
            "norm_topk_prob": True,
            "first_k_dense_replace": 1,
            "topk_group": 1,
            "layer_group_size": 2,
            "group_norm_size": 4,
        },
    ),
    _arch(
        "laguna",
        True,
        ("shared_experts", "dense_first", "sliding_window", "attn_gate"),
        {
            **_BASE,
            "sliding_window": 4,
            "layer_types": ["sliding_attention", "full_attention"] * 2,
            "num_experts": 8,
            "num_experts_per_tok": 2,
            "moe_intermediate_size": 128,
            "shared_expert_intermediate_size": 128,
        },
    ),
    _arch(
        "gemma4_text",
        True,
        ("sliding_window", "softcap"),
        {
            **_BASE,
            "num_hidden_layers": 4,
            "global_head_dim": 32,
            "vocab_size_per_layer_input": 256,
            "hidden_size_per_layer_input": 16,
            "num_kv_shared_layers": 0,
            "sliding_window": 4,
            "sliding_window_pattern": 2,
            "enable_moe_block": True,
            "num_experts": 8,
            "top_k_experts": 2,
            "moe_intermediate_size": 128,
        },
    ),
    _arch(
        "phixtral",
        True,
        ("layer_norm", "partial_rope"),
        {
            "num_vocab": 256,
            "model_dim": 128,
            "num_heads": 4,
            "num_layers": 4,
            "rotary_dim": 8,
            "num_experts_per_tok": 2,
            "num_local_experts": 8,
        },
    ),
    _arch(
        "mimo_v2_flash",
        True,
        ("shared_experts", "dense_first", "sliding_window", "sinks"),
        {
            **_BASE,
            "num_experts_per_tok": 2,
            "hybrid_layer_pattern": [0, 1, 0, 1],
            "moe_layer_freq": [0, 1, 1, 1],
            "add_swa_attention_sink_bias": True,
            "add_full_attention_sink_bias": False,
            "sliding_window_size": 4,
            "moe_intermediate_size": 128,
            "n_shared_experts": None,
            "n_routed_experts": 8,
            "routed_scaling_factor": 1.0,
            "topk_method": "noaux_tc",
            "scoring_func": "sigmoid",
            "norm_topk_prob": True,
            "n_group": 1,
            "topk_group": 1,
            "layernorm_epsilon": 1e-6,
            "swa_rope_theta": 10000.0,
            "swa_num_attention_heads": 8,
            "swa_num_key_value_heads": 4,
            "v_head_dim": 16,
            "swa_head_dim": 16,
            "swa_v_head_dim": 16,
            "partial_rotary_factor": 0.5,
        },
    ),
    _arch(
        "dbrx",
        True,
        ("fused_qkv", "clip_qkv"),
        {
            "vocab_size": 256,
            "d_model": 128,
            "n_layers": 4,
            "n_heads": 8,
            "attn_config": {"kv_n_heads": 4, "clip_qkv": 8.0, "rope_theta": 10000.0},
            "ffn_config": {"ffn_hidden_size": 128, "moe_num_experts": 8, "moe_top_k": 2},
        },
    ),
    _arch(
        "qwen3_vl_moe",
        True,
        ("dense_first", "qk_norm"),
        {
            # Text only: the language model is qwen3_moe's.
            "text_config": {
                **_BASE,
                **_MOE,
                "model_type": "qwen3_moe",
                "num_experts": 8,
                "decoder_sparse_step": 1,
                "mlp_only_layers": [0],
                "norm_topk_prob": True,
            },
        },
    ),
    _arch(
        "kimi_vl",
        True,
        ("mla", "shared_experts", "dense_first"),
        {
            "text_config": {
                **_DEEPSEEK_V3,
                "model_type": "deepseek_v3",
                "n_group": 1,
                "topk_group": 1,
            }
        },
    ),
    # ---- dense ----
    _arch("llama", False, (), {**_BASE}),
    # qwen2 derives head_dim = hidden / heads, so o_proj reads hidden_size features:
    # hidden 128 keeps 16-dim heads and 32 features per rank at 4 ranks (group size 32).
    _arch("qwen2", False, ("bias",), {**_BASE, "hidden_size": 128}),
    _arch("qwen3", False, ("qk_norm",), {**_BASE}),
    _arch(
        "qwen3_5",
        False,
        ("linear_attention", "qk_norm", "attn_gate", "vocab_parallel"),
        {**_QWEN3_5},
    ),
    _arch(
        "ministral3",
        False,
        ("sliding_window", "llama4_scaling"),
        {
            **_BASE,
            "rope_parameters": dict(_MISTRAL_ROPE),
            "layer_types": ["sliding_attention", "full_attention"] * 2,
            "sliding_window": 4,
        },
    ),
    _arch(
        "iquestloopcoder",
        False,
        ("loop", "sliding_window"),
        {**_BASE, "loop_num": 2, "loop_window_size": 4},
    ),
)

ARCHS: dict[str, Arch] = {arch.name: arch for arch in _ENTRIES}


def get_arch(name: str) -> Arch:
    try:
        return ARCHS[name]
    except KeyError:
        known = ", ".join(sorted(ARCHS))
        raise HarnessError(f"unknown architecture '{name}'; known: {known}") from None


def config_copy(arch: Arch) -> dict[str, Any]:
    """A deep copy: some ModelArgs mutate nested dicts (rope_parameters) in place."""
    return copy.deepcopy(dict(arch.config))


def support(name: str) -> Support:
    """What the installed mlx-lm offers for an architecture; never raises for it."""
    return _support(name, tuple(sorted(impl.installed().items())))


@functools.cache
def _support(name: str, files: tuple[tuple[str, str], ...]) -> Support:
    """Remembered per model files installed with `--impl` (`files`): an answer found with
    mlx-lm's own modules is not one for a fork's."""
    arch = get_arch(name)
    from harness.models import answers  # here: listing the zoo needs no cache

    built = answers.remembered("support", config_copy(arch), lambda: _probe(arch))
    tp, pp, reason = built["tp"], built["pp"], built["reason"]
    if reason is not None:
        return Support(available=False, tp=tp, pp=pp, reason=reason)
    import mlx.core as mx  # here: listing the zoo and reading suites need no mlx

    if METAL_ONLY in arch.features and not mx.metal.is_available():
        reason = f"'{name}' runs Metal-only kernels (mlx_lm.kernels) and this device has no Metal"
        return Support(available=False, tp=tp, pp=pp, reason=reason)
    return Support(available=True, tp=tp, pp=pp)


def _probe(arch: Arch) -> dict[str, Any]:
    """Construct the architecture with the installed mlx-lm: whether it builds (else why
    not) and whether it has shard() and pipeline()."""
    config = config_copy(arch)
    try:
        model_cls, args_cls = mlx_lm_api.model_classes(config)
        # Constructing is cheap (weights stay lazy) and is the only reliable way to
        # reach the inner model whose class carries pipeline().
        model = model_cls(args_cls.from_dict(config))
    except MissingModelType as error:  # an older (or newer) release without it
        return {"tp": False, "pp": False, "reason": str(error)}
    # A model module may even call sys.exit at import (mlx_lm.models.olmo does).
    except (Exception, SystemExit) as error:
        reason = f"mlx-lm cannot build model_type '{arch.model_type}': {error}"
        return {"tp": False, "pp": False, "reason": reason}
    tp = callable(getattr(model, "shard", None))
    pp = callable(getattr(getattr(model, "model", None), "pipeline", None))
    return {"tp": tp, "pp": pp, "reason": None}
