"""Bugs that only show at some input shapes (the README's "Shapes"): each starts from
mlx-lm's correct tensor parallel and goes wrong only in a later prefill chunk, above a
token count, at batch 1, past a rotating cache's size, or in a padded batch. The short
shape (two 8-token prompts, one prefill call) passes all but `past_window`, whose
windows of 4 its 8-token prompts already fill.

Attention modules here are called `(x, mask, cache)`, positionally or by name, as mlx-lm's
decoder layers call them.
"""

from __future__ import annotations

import inspect

import mlx.core as mx
import mlx.nn as nn

from harness.faults import parts
from harness.run.rank.forward import decoder_layers
from harness.run.rank.patching import wrap_call

WRONG = 1.05  # a 5% error: far above tolerance, below saturation
TOKEN_PAIRS = 64  # SwitchGLU sorts tokens by expert from this many (token, expert) pairs


def argument(name: str, index: int, args: tuple, kwargs: dict):
    """An attention call's argument by name or position (after x)."""
    if name in kwargs:
        return kwargs[name]
    return args[index] if len(args) > index else None


def takes_mask_and_cache(attn: nn.Module) -> bool:
    """Whether an attention module is called `(x, mask, cache)`, as these faults read it."""
    try:
        names = list(inspect.signature(type(attn).__call__).parameters)
    except (TypeError, ValueError):
        return False
    return names[2:4] == ["mask", "cache"]


def attention(model: nn.Module, index: int = parts.ATTENTION_LAYER) -> nn.Module:
    attn = parts.attention(parts.layer(model, index))
    if not takes_mask_and_cache(attn):
        raise ValueError(f"{type(attn).__name__} is not called (x, mask, cache)")
    return attn


def offset(cache) -> int:
    offset = getattr(cache, "offset", 0)
    return int(offset.max()) if isinstance(offset, mx.array) else int(offset)


def later_prefill_chunk(model, group):
    """Layer 2's attention is wrong for a multi-token call once its cache holds tokens: a
    prefill chunk after the first, as when back-to-back collectives of a new shape
    misbehave (mlx's corrupted tensor parallel past the first prefill step)."""
    model.shard(group)

    def around(call, x, *args, **kwargs):
        # Read before the call, which advances the cache.
        later = x.shape[1] > 1 and offset(argument("cache", 1, args, kwargs)) > 0
        y = call(x, *args, **kwargs)
        return y * WRONG if later else y

    wrap_call(attention(model), around)


def many_tokens(model, group):
    """Layer 1's experts are wrong on SwitchGLU's sorted path, which only calls of at least
    64 (token, expert) pairs take: a 32-token chunk at top-2, never two 8-token prompts."""
    model.shard(group)
    experts = parts.stacked_experts(parts.feedforward(parts.layer(model, parts.MLP_LAYER)))
    if experts is None:
        raise ValueError(f"layer {parts.MLP_LAYER} has no stacked experts")

    def around(call, x, indices, *args, **kwargs):
        y = call(x, indices, *args, **kwargs)
        return y * WRONG if indices.size >= TOKEN_PAIRS else y

    wrap_call(experts, around)


def batch_one(model, group):
    """Layer 2's attention is wrong at batch 1 only, as a squeeze of the batch axis that a
    batch of 2 never takes."""
    model.shard(group)

    def around(call, x, *args, **kwargs):
        y = call(x, *args, **kwargs)
        return y * WRONG if x.shape[0] == 1 else y

    wrap_call(attention(model), around)


def past_window(model, group):
    """Every layer with a rotating cache decodes wrongly once the cache is full, as a
    wrap-around index off by one on the ranks (sliding windows, gpt_oss)."""
    model.shard(group)

    def around(call, x, *args, **kwargs):
        cache = argument("cache", 1, args, kwargs)
        size = getattr(cache, "max_size", None)
        full = x.shape[1] == 1 and size is not None and offset(cache) >= size
        y = call(x, *args, **kwargs)
        return y * WRONG if full else y

    for index in range(len(decoder_layers(model))):
        wrap_call(attention(model, index), around)


def unmasked_padding(model, group):
    """Layer 2's attention drops its mask when the mask is an array (a padded batch) and
    falls back to plain causal attention: left padding is attended to once the batch
    cache holds it, so only the padded prompt's last token and its decode go wrong."""
    model.shard(group)

    def around(call, x, *args, **kwargs):
        mask = argument("mask", 0, args, kwargs)
        if isinstance(mask, mx.array):
            plain = "causal" if x.shape[1] > 1 else None
            if "mask" in kwargs:
                kwargs["mask"] = plain
            else:
                args = (plain, *args[1:])
        return call(x, *args, **kwargs)

    wrap_call(attention(model), around)
