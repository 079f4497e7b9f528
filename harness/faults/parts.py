"""Finding the parts of a model that a fault acts on, by name pattern rather than by one
architecture's attribute names, so one fault applies across the zoo.

Layer indices are chosen for the zoo's 4-layer configs: layer 1 is the first MoE layer of
every dense-first architecture (and a MoE layer of the others), layer 2 is a linear
attention layer of qwen3_5 / qwen3_5_moe and the first layer of the later ranks' stage
under a 2-, 3- or 4-rank pipeline.
"""

from __future__ import annotations

import re

import mlx.core as mx
import mlx.nn as nn
from mlx.nn.layers.distributed import QuantizedShardedToAllLinear, ShardedToAllLinear
from mlx.utils import tree_flatten, tree_unflatten

from harness.run.rank.forward import ATTENTION, FEEDFORWARD, decoder_layers

MLP_LAYER = 1
ATTENTION_LAYER = 2

# Preferred over the pattern: kimi_k3's `self_attention_res_proj` also matches ATTENTION.
ATTENTION_NAMES = ("self_attn", "attention", "attn", "linear_attn", "mixer")
SHARED_EXPERTS = re.compile(r"^shared?_experts?$")
KV_HEAD_COUNTS = ("n_kv_heads", "num_key_value_heads", "num_kv_heads")
ROW_PARALLEL = (ShardedToAllLinear, QuantizedShardedToAllLinear)


def layer(model: nn.Module, index: int) -> nn.Module:
    layers = decoder_layers(model)
    if index >= len(layers) or not isinstance(layers[index], nn.Module):
        raise ValueError(f"{type(model).__name__} has no decoder layer {index} on this rank")
    return layers[index]


def _child(parent: nn.Module, names: tuple[str, ...], pattern: re.Pattern, what: str) -> nn.Module:
    children = {k: v for k, v in parent.children().items() if isinstance(v, nn.Module)}
    for name in names:
        if name in children:
            return children[name]
    for name, child in children.items():
        if pattern.search(name) and child.children():
            return child
    names = ", ".join(children)
    raise ValueError(f"no {what} module in {type(parent).__name__} (children: {names})")


def attention(decoder_layer: nn.Module) -> nn.Module:
    return _child(decoder_layer, ATTENTION_NAMES, ATTENTION, "attention")


def feedforward(decoder_layer: nn.Module) -> nn.Module:
    names = ("mlp", "block_sparse_moe", "feed_forward")
    return _child(decoder_layer, names, FEEDFORWARD, "MLP/MoE")


def _is_stacked(module: nn.Module) -> bool:
    down = module.get("down_proj") if isinstance(module, nn.Module) else None
    return isinstance(down, nn.Module) and getattr(down.get("weight"), "ndim", 0) == 3


def stacked_experts(block: nn.Module) -> nn.Module | None:
    """The SwitchGLU-like module of an MoE block: gate/up/down with `[E, out, in]` weights."""
    for _, module in block.named_modules():
        if _is_stacked(module):
            return module
    return None


def shared_experts(block: nn.Module) -> nn.Module | None:
    for name, child in block.children().items():
        if SHARED_EXPERTS.match(name) and isinstance(child, nn.Module):
            return child
    return None


def row_parallel(module: nn.Module) -> dict[str, nn.Module]:
    """The direct children that mlx-lm's shard() made sharded-to-all (they all_sum)."""
    return {k: v for k, v in module.children().items() if isinstance(v, ROW_PARALLEL)}


def snapshot(module: nn.Module) -> dict[str, mx.array]:
    """The module's parameters by dotted path, before a strategy replaces them."""
    return dict(tree_flatten(module.parameters()))


def restore(module: nn.Module, flat: dict[str, mx.array]) -> None:
    """Set parameters from a (possibly changed) snapshot."""
    module.update(tree_unflatten(list(flat.items())))
