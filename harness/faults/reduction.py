"""Reduction bugs: an all_sum over an output that is already complete on every rank.

Seen in public projects as an all_sum over a shared expert or a bias that was never
sharded: the block's output is scaled by the world size, later saturating or overflowing.
"""

from __future__ import annotations

import mlx.core as mx

from harness.forward import decoder_layers
from harness.patching import wrap_output

LAYER = 1


def double_reduce_mlp(model, group):
    """Correct tensor parallel, then layer 1's MLP/MoE output is all-summed once more."""
    model.shard(group)
    wrap_output(decoder_layers(model)[LAYER].mlp, lambda y: mx.distributed.all_sum(y, group=group))
