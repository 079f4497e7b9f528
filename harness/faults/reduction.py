"""Reduction bugs: an all_sum over an output that is already complete on every rank, or
no all_sum after a projection whose output is partial.

Seen in public projects as an all_sum over a shared expert or a bias that was never
sharded: the block's output (or part of it) is scaled by the world size, later saturating
or overflowing. The opposite, a row-parallel projection sliced in place with no reduction,
leaves every rank with its own partial sum.
"""

from __future__ import annotations

import mlx.core as mx
from mlx.nn.layers.distributed import shard_inplace

from harness.faults import parts
from harness.run.rank.patching import wrap_call, wrap_output

LAYER = parts.MLP_LAYER
ATTENTION_LAYER = parts.ATTENTION_LAYER


def double_reduce_mlp(model, group):
    """Correct tensor parallel, then layer 1's MLP/MoE output is all-summed once more."""
    model.shard(group)
    block = parts.feedforward(parts.layer(model, LAYER))
    wrap_output(block, lambda y: mx.distributed.all_sum(y, group=group))


def unsharded_shared_expert(model, group):
    """Layer 1's routed experts are sharded but its shared expert keeps its full weights
    on every rank, and the MoE block all-sums routed + shared: the shared expert's output
    arrives N times."""
    block = parts.feedforward(parts.layer(model, LAYER))
    shared = parts.shared_experts(block)
    if shared is None:
        raise ValueError(f"layer {LAYER}'s {type(block).__name__} has no shared expert")
    full = parts.snapshot(shared)
    model.shard(group)
    parts.restore(shared, full)


def undivided_expert_bias(model, group):
    """Layer 1's expert down_proj bias is not divided by N after sharding (mlx-lm's
    gpt_oss shard() does `down_proj.bias /= N`): the block's all_sum adds it N times."""
    model.shard(group)
    experts = parts.stacked_experts(parts.feedforward(parts.layer(model, LAYER)))
    if experts is None or "bias" not in experts.down_proj:
        raise ValueError(f"layer {LAYER} has no stacked experts with a down_proj bias")
    experts.down_proj.bias = experts.down_proj.bias * group.size()


def bias_before_reduce(model, group):
    """Layer 2's attention output projection adds its (unsharded) bias on every rank
    before the all_sum instead of once after it: the bias arrives N times. Computed as
    the correct output plus (N - 1) biases, which is what that order of operations gives."""
    model.shard(group)
    attn = parts.attention(parts.layer(model, ATTENTION_LAYER))
    biased = [m for m in parts.row_parallel(attn).values() if "bias" in m]
    if not biased:
        raise ValueError(f"layer {ATTENTION_LAYER}'s attention has no biased o_proj")
    extra = group.size() - 1
    for projection in biased:
        wrap_call(projection, lambda call, x, p=projection: call(x) + extra * p.bias)


def _reduce_nowhere(module, saved: dict, group) -> bool:
    """Leave out the all_sum of a sharded `module`: a block that reduces its own output
    (MoE, GatedDeltaNet) loses its sharding group; otherwise its row-parallel children go
    back to their original class, sliced in place with `shard_inplace` (the same weights
    as mlx-lm's ShardedToAllLinear, but no all_sum). False if there was nothing to leave out."""
    if getattr(module, "sharding_group", None) is not None:
        module.sharding_group = None
        return True
    row_parallel = parts.row_parallel(module)
    for name in row_parallel:
        original = saved[name]
        shard_inplace(original, "sharded-to-all", group=group)
        setattr(module, name, original)
    return bool(row_parallel)


def missing_reduction_attention(model, group):
    """Layer 2's attention output projection is sliced with `shard_inplace(...,
    "sharded-to-all")` instead of `shard_linear` (or a linear-attention block loses the
    all_sum it does itself): the slice is right but nothing all-sums it, so every rank
    continues with its own partial attention output."""
    attn = parts.attention(parts.layer(model, ATTENTION_LAYER))
    saved = dict(attn.children())
    model.shard(group)
    if not _reduce_nowhere(attn, saved, group):
        raise ValueError(f"layer {ATTENTION_LAYER}'s attention has no row-parallel projection")


def missing_reduction_mlp(model, group):
    """Layer 1's MLP/MoE is sharded but never reduced: an MoE block without its
    sharding group (so it skips its all_sum), a dense MLP whose down_proj is sliced in
    place. Every rank continues with its own partial sum."""
    block = parts.feedforward(parts.layer(model, LAYER))
    saved = dict(block.children())
    model.shard(group)
    if not _reduce_nowhere(block, saved, group):
        raise ValueError(f"layer {LAYER}'s {type(block).__name__} has no reduction to leave out")
