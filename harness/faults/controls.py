"""Correct strategies that differ from mlx-lm's own: the selftest's controls. A harness
that flags any of them raises false alarms; every one must pass.

- `manual_tp`: tensor parallel written by hand with mlx's `shard_linear` / `shard_inplace`,
  the way a user's own sharding code looks, for GQA attention (qwen3_moe-like) and
  multi-head latent attention with shared experts (deepseek-like).
- `uneven_pipeline`: mlx-lm's pipeline with an uneven split of the layers.
- `gathered_stage_end`: mlx-lm's pipeline split, exchanging inside its stage-end layers
  as exo does, each returning the gathered final state.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
from mlx.nn.layers.distributed import shard_inplace, shard_linear

from harness.faults import parts
from harness.run.rank.forward import decoder_layers
from harness.run.rank.patching import wrap_call

HEAD_COUNTS = ("n_heads", "num_attention_heads", "num_heads", *parts.KV_HEAD_COUNTS)


def manual_tp(model, group):
    """Heads split across ranks in attention, the intermediate dimension in MLPs and in
    every expert (routed and shared), one all_sum per block: what mlx-lm's shard() does
    for these architectures, written without it."""
    for layer in decoder_layers(model):
        _attention(parts.attention(layer), group)
        _feedforward(parts.feedforward(layer), group)


def _attention(attn: nn.Module, group) -> None:
    N = group.size()
    if "embed_q" in attn:
        # MLA: queries carry the heads; keys and values come from a shared latent
        # through the absorbed per-head weights, which are split by head.
        name = "q_b_proj" if "q_b_proj" in attn else "q_proj"
        attn[name] = shard_linear(attn[name], "all-to-sharded", group=group)
        attn.num_heads //= N
        start, stop = group.rank() * attn.num_heads, (group.rank() + 1) * attn.num_heads
        for name in ("embed_q", "unembed_out"):
            attn[name].apply(lambda w: w[start:stop])
    else:
        for name in ("q_proj", "k_proj", "v_proj"):
            attn[name] = shard_linear(attn[name], "all-to-sharded", group=group)
        for name in HEAD_COUNTS:
            if isinstance(getattr(attn, name, None), int):
                setattr(attn, name, getattr(attn, name) // N)
    attn.o_proj = shard_linear(attn.o_proj, "sharded-to-all", group=group)


def _feedforward(block: nn.Module, group) -> None:
    experts = parts.stacked_experts(block)
    if experts is None:
        # Dense MLP: each projection is its own layer, the down projection all-sums.
        for name in ("gate_proj", "up_proj"):
            block[name] = shard_linear(block[name], "all-to-sharded", group=group)
        block.down_proj = shard_linear(block.down_proj, "sharded-to-all", group=group)
        return
    # MoE: slice in place and let the block all-sum routed + shared experts once.
    for mlp in filter(None, (experts, parts.shared_experts(block))):
        shard_inplace(mlp.gate_proj, "all-to-sharded", group=group)
        shard_inplace(mlp.up_proj, "all-to-sharded", group=group)
        shard_inplace(mlp.down_proj, "sharded-to-all", group=group)
    block.sharding_group = group


def uneven_pipeline(model, group):
    """mlx-lm's pipeline with every rank but the last holding one layer and the last
    rank (which runs first) holding the rest: stage boundaries where the default even
    split has none."""
    inner = model.model
    layers = len(inner.layers)
    N = group.size()
    inner.pipeline(group, split=[1] * (N - 1) + [layers - (N - 1)])


def gathered_stage_end(model, group):
    """mlx-lm's pipeline split with its communication moved into the layers, as exo's
    `PipelineFirstLayer` / `PipelineLastLayer` do: a stage's first layer receives the
    previous stage's output, its last layer sends its output on and returns the final
    stage's output gathered from every rank (`all_gather(out)[:B]`: mlx-lm's rank 0 runs
    the last layers). Correct: every rank's logits are the single-rank run's, while the
    state captured at each stage-end layer is the final state, not that layer's output."""
    inner = model.model
    inner.pipeline(group)
    rank, size = inner.pipeline_rank, inner.pipeline_size
    first, last = inner.layers[inner.start_idx], inner.layers[inner.end_idx - 1]
    # The model's own forward runs this rank's layers with no exchange of its own.
    inner.pipeline_rank, inner.pipeline_size = 0, 1

    def receive(call, x, *args, **kwargs):
        if rank < size - 1:
            x = mx.distributed.recv_like(x, rank + 1, group=group)
        return call(x, *args, **kwargs)

    def send_and_gather(call, x, *args, **kwargs):
        out = call(x, *args, **kwargs)
        if rank != 0:
            out = mx.distributed.send(out, rank - 1, group=group)
        return mx.distributed.all_gather(out, group=group)[: out.shape[0]]

    wrap_call(first, receive)
    wrap_call(last, send_and_gather)
