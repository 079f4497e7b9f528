"""Bugs of production conditions (README, "Low precision"; the fault table): each starts
from mlx-lm's correct tensor parallel and goes wrong only with bf16 activations, only past
one prefill step of mlx-lm's default 2,048 tokens, or only in a request after the first on
the same loaded model (in its prefill, or in its decode steps only). The default suites'
fp32 short cases pass them all.
"""

from __future__ import annotations

import mlx.core as mx

from harness.faults import parts, shape_bugs
from harness.run.rank.patching import wrap_call
from harness.shapes import MLX_LM_PREFILL_STEP

WRONG = 1.05  # as the shape faults: far above fp32 tolerance, below saturation


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
