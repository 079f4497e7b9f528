"""Pipeline bugs: a rank runs the wrong run of layers. Activations stay finite and the
text stays fluent-looking, so only a comparison with the unsharded model shows it."""

from __future__ import annotations

from harness.faults import parts

LAYER = parts.ATTENTION_LAYER


def skip_layer(model, group):
    """mlx-lm's pipeline, then the rank whose stage starts at layer 2 starts one layer
    late (an off-by-one in its layer range): layer 2 runs on no rank."""
    inner = model.model
    inner.pipeline(group)
    end = inner.end_idx if inner.end_idx is not None else len(inner.layers)
    if inner.start_idx <= LAYER < end:
        if inner.start_idx != LAYER:
            raise ValueError(f"layer {LAYER} does not start a stage at {group.size()} ranks")
        inner.start_idx += 1
