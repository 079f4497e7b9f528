"""Slicing bugs: every rank holds a slice of the right shape, but not the slice that
belongs with the rest of its computation. Shapes stay valid, so nothing crashes: the
output is garbage that only a comparison with the unsharded model shows.

Each fault starts from mlx-lm's correct tensor parallel and re-slices one module of one
layer from its full (pre-shard) weights.
"""

from __future__ import annotations

import mlx.core as mx

from harness.faults import parts


def _experts(model, index: int):
    experts = parts.stacked_experts(parts.feedforward(parts.layer(model, index)))
    if experts is None:
        raise ValueError(f"layer {index} has no stacked (SwitchGLU) experts")
    return experts


def expert_axis_gate_up(model, group):
    """Layer 1's stacked gate/up expert weights `[E, I, D]` are split on the expert axis
    and reshaped to the `[E, I / N, D]` every rank expects, as code that flattens the
    experts into one 2-D matrix and shards its rows does. Each rank now multiplies with
    halves of other experts' rows; down_proj is sliced correctly."""
    experts = _experts(model, parts.MLP_LAYER)
    full = {name: parts.snapshot(experts[name]) for name in ("gate_proj", "up_proj")}
    model.shard(group)
    N, r = group.size(), group.rank()
    for name, params in full.items():
        wrong = {}
        for key, value in params.items():
            E, rows = value.shape[0], value.shape[1]
            block = mx.split(value, N, axis=0)[r]
            wrong[key] = mx.contiguous(block.reshape(E, rows // N, *value.shape[2:]))
        parts.restore(experts[name], wrong)


def rank_order_swap(model, group):
    """Rank r loads rank N-1-r's shard of layer 1's expert down projection (a shard file
    list read in reverse for one tensor), while its gate/up shards are its own: each rank
    multiplies its intermediate slice with another slice's down weights."""
    experts = _experts(model, parts.MLP_LAYER)
    full = parts.snapshot(experts.down_proj)
    model.shard(group)
    N, r = group.size(), group.rank()
    swapped = {
        key: mx.contiguous(mx.split(value, N, axis=-1)[N - 1 - r])
        for key, value in full.items()
        if not key.endswith("bias")  # a sharded-to-all bias is not sliced
    }
    parts.restore(experts.down_proj, swapped)


def contiguous_fused_qkv(model, group):
    """Layer 2's GatedDeltaNet `in_proj_qkv` (rows `[q, k, v]`, v twice as wide) and its
    depthwise conv1d are split into N contiguous blocks instead of per segment (mlx-lm
    passes `segments=[key_dim, 2 * key_dim]`): rank 0 gets all of q and k, rank 1 only v,
    and both reshape them as if each held a slice of each."""
    layer = parts.ATTENTION_LAYER
    mixer = parts.attention(parts.layer(model, layer))
    if "in_proj_qkv" not in mixer:
        raise ValueError(f"layer {layer} is not a GatedDeltaNet (linear attention) layer")
    full = {name: parts.snapshot(mixer[name]) for name in ("in_proj_qkv", "conv1d")}
    model.shard(group)
    N, r = group.size(), group.rank()
    for name, params in full.items():
        contiguous = {k: mx.contiguous(mx.split(v, N, axis=0)[r]) for k, v in params.items()}
        parts.restore(mixer[name], contiguous)
