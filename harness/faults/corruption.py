"""Wrong numbers in one place: a corrupted layer, a NaN, a saturated output, a bug that
only shows in decode steps, one expert slightly off on one rank. Each starts from mlx-lm's
correct tensor parallel."""

from __future__ import annotations

import mlx.core as mx

from harness.faults import parts
from harness.run.rank.patching import wrap_call, wrap_output

LAYER = parts.ATTENTION_LAYER  # of the zoo's 4 layers: not the first, not the last
EXPERT = 0
PERTURBATION = 1e-3


def _attention(model):
    return parts.attention(parts.layer(model, LAYER))


def perturb_layer_mlp(model, group):
    """Rank 0's MLP/MoE output of layer 2 is off by 1%: a wrong slice that still has the
    right shape."""
    model.shard(group)
    if group.rank() == 0:
        wrap_output(parts.feedforward(parts.layer(model, LAYER)), lambda y: y * 1.01)


def perturb_layer_attention(model, group):
    """Every rank's attention output of layer 2 is off by 1%."""
    model.shard(group)
    wrap_output(_attention(model), lambda y: y * 1.01)


def nan_in_attention(model, group):
    """A NaN enters layer 2's attention output, as an uninitialised shard buffer would."""
    model.shard(group)

    def poison(y):
        return mx.where(mx.arange(y.shape[-1]) == 0, mx.array(float("nan"), y.dtype), y)

    wrap_output(_attention(model), poison)


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

    wrap_call(_attention(model), around)


def perturb_one_expert(model, group):
    """Rank 0's slice of expert 0 in layer 1 is off by 1e-3 relative (its down projection,
    or that projection's quantization scales): a slightly wrong dequantization or a stale
    copy of one expert, the smallest fault the fp32 tolerances must still catch."""
    model.shard(group)
    if group.rank() != 0:
        return
    experts = parts.stacked_experts(parts.feedforward(parts.layer(model, parts.MLP_LAYER)))
    if experts is None:
        raise ValueError(f"layer {parts.MLP_LAYER} has no stacked experts")
    down = parts.snapshot(experts.down_proj)
    E = down["weight"].shape[0]
    scale = mx.where(mx.arange(E) == EXPERT, 1 + PERTURBATION, 1.0)
    for key, value in down.items():
        # Quantized: scales and biases (w = scales * q + biases); the uint32 q stays.
        if mx.issubdtype(value.dtype, mx.floating) and key != "bias":
            down[key] = value * scale.reshape(E, *[1] * (value.ndim - 1)).astype(value.dtype)
    parts.restore(experts.down_proj, down)
