"""Bugs of production conditions (README, "Low precision"; the fault table): each starts
from mlx-lm's correct tensor parallel and goes wrong only with bf16 activations (in every
position, or in a few), only past one prefill step of mlx-lm's default 2,048 tokens, or only
in a request after the first on the same loaded model (in its prefill, or in its decode steps
only). The default suites' fp32 short cases pass them all.
"""

from __future__ import annotations

import mlx.core as mx

from harness.faults import parts, shape_bugs
from harness.run.rank.forward import decoder_layers
from harness.run.rank.patching import wrap_call
from harness.shapes import MLX_LM_PREFILL_STEP

WRONG = 1.05  # as the shape faults: far above fp32 tolerance, below saturation
# One position in this many (by position in the sequence) takes the few-positions bug.
EVERY = 16


def bf16_double_reduce(model, group):
    """Layer 1's MLP/MoE output is all-summed again when its activations are bf16, as a
    bf16-only kernel path that reduces inside and is reduced again outside: fp32 passes."""
    model.shard(group)

    def around(call, x, *args, **kwargs):
        y = call(x, *args, **kwargs)
        if x.dtype == mx.bfloat16:
            return mx.distributed.all_sum(y, group=group)
        return y

    wrap_call(parts.feedforward(parts.layer(model, parts.MLP_LAYER)), around)


def bf16_partial_sum_some_positions(model, group):
    """At 1 of every 16 positions of a sequence (7, 23, 39, ...) the last layer's MoE block
    returns this rank's partial sum instead of the all-summed one, with bf16 activations
    only: a reduction a bf16 kernel path skips for some tokens moves a few positions well
    past rounding and leaves every other position exact. (A block that all-sums through
    its own `sharding_group`, as mlx-lm's MoE blocks do; another gives 1/N of the sum.)"""
    model.shard(group)
    first = _first_position(model)
    block = parts.feedforward(parts.layer(model, len(decoder_layers(model)) - 1))

    def around(call, x, *args, **kwargs):
        if x.dtype != mx.bfloat16:
            return call(x, *args, **kwargs)
        positions = first["position"] + mx.arange(x.shape[1])
        hit = (positions % EVERY == EVERY // 2 - 1)[None, :, None]
        if getattr(block, "sharding_group", None) is None:
            y = call(x, *args, **kwargs)
            return mx.where(hit, y / group.size(), y)
        block.sharding_group = None
        try:
            partial = call(x, *args, **kwargs)
        finally:
            block.sharding_group = group
        return mx.where(hit, partial, mx.distributed.all_sum(partial, group=group))

    wrap_call(block, around)


def bf16_double_reduce_some_positions(model, group):
    """At 1 of every 16 positions of a sequence (5, 21, 37, ...) the last layer's MLP/MoE
    output is all-summed again, with bf16 activations only: every rank holds the same wrong
    value there (the ranks agree), so only the positions' own envelope can see it."""
    model.shard(group)
    first = _first_position(model)
    block = parts.feedforward(parts.layer(model, len(decoder_layers(model)) - 1))

    def around(call, x, *args, **kwargs):
        y = call(x, *args, **kwargs)
        if x.dtype != mx.bfloat16:
            return y
        positions = first["position"] + mx.arange(x.shape[1])
        hit = (positions % EVERY == EVERY // 2 - 3)[None, :, None]
        return mx.where(hit, mx.distributed.all_sum(y, group=group), y)

    wrap_call(block, around)


def _first_position(model) -> dict:
    """{"position": where the model's current call starts in the sequence}, kept up to
    date by a wrapper on the model: read before the call advances the cache."""
    first = {"position": 0}

    def at_model(call, inputs, *args, **kwargs):
        cache = kwargs.get("cache", args[0] if args else None) or []
        offsets = [shape_bugs.offset(c) for c in cache if hasattr(c, "offset")]
        first["position"] = min(offsets, default=0)
        return call(inputs, *args, **kwargs)

    wrap_call(model, at_model)
    return first


def past_prefill_step(model, group):
    """Layer 2's attention is wrong for a prefill chunk that starts once the cache holds a
    full prefill step (2,048 tokens), as a buffer sized for one step that overruns."""
    model.shard(group)

    def around(call, x, *args, **kwargs):
        cache = shape_bugs.argument("cache", 1, args, kwargs)
        past = x.shape[1] > 1 and shape_bugs.offset(cache) >= MLX_LM_PREFILL_STEP
        y = call(x, *args, **kwargs)
        return y * WRONG if past else y

    wrap_call(shape_bugs.attention(model), around)


def state_between_requests(model, group):
    """Layer 2's attention keeps a buffer from the first request's prefill and adds a
    stale part of it to every later request's (a scratch buffer set up on the first call
    and reused without being cleared): the first request is right, the next ones not."""
    model.shard(group)
    kept: dict[str, mx.array] = {}

    def around(call, x, *args, **kwargs):
        fresh = (
            x.shape[1] > 1 and shape_bugs.offset(shape_bugs.argument("cache", 1, args, kwargs)) == 0
        )
        y = call(x, *args, **kwargs)
        if not fresh:
            return y
        if "buffer" not in kept:
            kept["buffer"] = y
            return y
        stale = kept["buffer"]
        return y + 0.05 * stale if stale.shape == y.shape else y

    wrap_call(shape_bugs.attention(model), around)


def stale_decode_state(model, group):
    """Layer 2's attention keeps its output at each decode position of the first request
    and adds a stale part of it at the same position in every later request (a decode
    buffer keyed by position, never cleared between requests): every prefill is right,
    the first request is right, a later request's decode steps are not."""
    model.shard(group)
    kept: dict[int, mx.array] = {}

    def around(call, x, *args, **kwargs):
        position = shape_bugs.offset(shape_bugs.argument("cache", 1, args, kwargs))
        y = call(x, *args, **kwargs)
        if x.shape[1] != 1:
            return y
        stale = kept.setdefault(position, y)
        return y if stale is y or stale.shape != y.shape else y + 0.05 * stale

    wrap_call(shape_bugs.attention(model), around)
