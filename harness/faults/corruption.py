"""Wrong numbers in one place: a corrupted layer, a NaN, a saturated output, a bug that
only shows in decode steps. Each starts from mlx-lm's correct tensor parallel."""

from __future__ import annotations

import mlx.core as mx

from harness.forward import decoder_layers
from harness.patching import wrap_call, wrap_output

LAYER = 2  # of the zoo's 4 layers: not the first, not the last


def _attention(layer):
    for name in ("self_attn", "attention", "attn", "linear_attn"):
        if name in layer:
            return layer[name]
    raise ValueError(f"no attention module in {type(layer).__name__}")


def perturb_layer_mlp(model, group):
    """Rank 0's MLP/MoE output of layer 2 is off by 1%: a wrong slice that still has the
    right shape."""
    model.shard(group)
    if group.rank() == 0:
        wrap_output(decoder_layers(model)[LAYER].mlp, lambda y: y * 1.01)


def perturb_layer_attention(model, group):
    """Every rank's attention output of layer 2 is off by 1%."""
    model.shard(group)
    wrap_output(_attention(decoder_layers(model)[LAYER]), lambda y: y * 1.01)


def nan_in_attention(model, group):
    """A NaN enters layer 2's attention output, as an uninitialised shard buffer would."""
    model.shard(group)

    def poison(y):
        return mx.where(mx.arange(y.shape[-1]) == 0, mx.array(float("nan"), y.dtype), y)

    wrap_output(_attention(decoder_layers(model)[LAYER]), poison)


def saturating_head(model, group):
    """The final hidden state reaches the LM head 50x too large, as when a grouped output
    is reshaped across the wrong axis and a norm weight slice is summed over the group:
    the output distribution collapses onto one token (logprob 0.0)."""
    model.shard(group)
    wrap_output(model.model.norm, lambda y: y * 50.0)


def decode_only(model, group):
    """Layer 2's attention is wrong only for single-token (decode) calls, as with a KV
    cache offset that is advanced on the wrong rank."""
    model.shard(group)

    def around(call, x, *args, **kwargs):
        y = call(x, *args, **kwargs)
        return y * 1.05 if x.shape[1] == 1 else y

    wrap_call(_attention(decoder_layers(model)[LAYER]), around)
