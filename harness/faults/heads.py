"""Head-parallel attention bugs: the projections are sliced by heads but the bookkeeping
that reshapes their outputs into heads is not, which fails at the first forward with a
shape error far from its cause."""

from __future__ import annotations

from harness.faults import parts


def kv_heads_not_divided(model, group):
    """Correct tensor parallel, except that layer 2's attention keeps its full KV-head
    count after k_proj / v_proj were sliced by heads: the keys reshape into N times too
    many heads of 1/N the width, and the first forward raises."""
    model.shard(group)
    attn = parts.attention(parts.layer(model, parts.ATTENTION_LAYER))
    counts = [name for name in parts.KV_HEAD_COUNTS if isinstance(getattr(attn, name, None), int)]
    if not counts:
        raise ValueError(f"{type(attn).__name__} keeps no KV-head count")
    for name in counts:
        setattr(attn, name, getattr(attn, name) * group.size())
