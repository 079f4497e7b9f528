"""Grouped-KV attention, head parallel: mlx-lm's llama Attention against numpy's causal
attention with RoPE."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import numpy as np
from hypothesis import strategies as st
from mlx.nn.layers.distributed import shard_linear
from mlx_lm.models import llama

from harness.props.numeric import (
    MX_DTYPES,
    Expected,
    allowance,
    checked,
    dense_weight,
    gather,
    linear_scale,
    normal,
    to_mlx,
    to_numpy,
)


@dataclass(frozen=True)
class AttentionExample:
    seed: int
    ranks: int
    heads: int
    kv_heads: int
    head_dim: int
    hidden: int
    batch: int
    length: int
    bias: bool
    dtype: str

    def build(self) -> llama.Attention:
        args = llama.ModelArgs(
            model_type="llama",
            hidden_size=self.hidden,
            num_hidden_layers=1,
            intermediate_size=self.hidden,
            num_attention_heads=self.heads,
            rms_norm_eps=1e-5,
            vocab_size=8,
            head_dim=self.head_dim,
            num_key_value_heads=self.kv_heads,
            attention_bias=self.bias,
        )
        attn = llama.Attention(args)
        for i, name in enumerate(("q_proj", "k_proj", "v_proj", "o_proj")):
            proj = getattr(attn, name)
            out_dims, in_dims = proj.weight.shape
            proj.weight = to_mlx(
                normal(self.seed + i, out_dims, in_dims, scale=in_dims**-0.5), self.dtype
            )
            if self.bias:
                proj.bias = to_mlx(normal(self.seed + 10 + i, out_dims, scale=0.5), self.dtype)
        return attn

    def inputs(self) -> mx.array:
        return to_mlx(normal(self.seed + 5, self.batch, self.length, self.hidden), self.dtype)


def _rope(x: np.ndarray, base: float = 10000.0) -> np.ndarray:
    """Non-traditional RoPE over the last axis of [B, H, L, d]: rotate half with half."""
    half = x.shape[-1] // 2
    freqs = base ** (-np.arange(half) / half)
    angle = np.arange(x.shape[-2])[:, None] * freqs
    cos, sin = np.cos(angle), np.sin(angle)
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1)


@functools.lru_cache(maxsize=4)
def expected_attention(ex: AttentionExample) -> Expected:
    """numpy's causal grouped-KV attention with RoPE, once mlx's unsharded attention
    agrees."""
    attn, x = ex.build(), ex.inputs()

    def proj(name: str, inp: np.ndarray) -> np.ndarray:
        layer = getattr(attn, name)
        b = to_numpy(layer.bias).astype(np.float64) if ex.bias else 0.0
        return inp @ dense_weight(layer).T + b

    B, L, H, KV = ex.batch, ex.length, ex.heads, ex.kv_heads
    x64 = to_numpy(x).astype(np.float64)
    heads = [
        proj(n, x64).reshape(B, L, -1, ex.head_dim).transpose(0, 2, 1, 3)
        for n in ("q_proj", "k_proj", "v_proj")
    ]
    q, k, v = _rope(heads[0]), _rope(heads[1]), heads[2]
    k, v = np.repeat(k, H // KV, axis=1), np.repeat(v, H // KV, axis=1)
    scores = q @ k.transpose(0, 1, 3, 2) * ex.head_dim**-0.5
    scores = np.where(np.tril(np.ones((L, L), bool)), scores, -np.inf)
    p = np.exp(scores - scores.max(-1, keepdims=True))
    p = p / p.sum(-1, keepdims=True)
    o = (p @ v).transpose(0, 2, 1, 3).reshape(B, L, -1)
    # the size of v under the attention weights: it does not shrink when v's cancel
    o_scale = np.sqrt(p @ v**2).transpose(0, 2, 1, 3).reshape(B, L, -1)
    b = to_numpy(attn.o_proj.bias).astype(np.float64) if ex.bias else 0.0
    expected = Expected(
        proj("o_proj", o),
        linear_scale(o_scale, dense_weight(attn.o_proj), b),
        allowance(ex.dtype, ex.ranks, ex.hidden + L + H * ex.head_dim),
    )
    expected.check("unsharded attention vs numpy", to_numpy(attn(x, mask="causal")))
    return expected


def head_parallel(attn: llama.Attention, group: Any) -> llama.Attention:
    """mlx-lm's attention sharding (llama's `shard`): q/k/v by heads, o_proj summed."""
    n = group.size()
    for name in ("q_proj", "k_proj", "v_proj"):
        setattr(attn, name, shard_linear(getattr(attn, name), "all-to-sharded", group=group))
    attn.o_proj = shard_linear(attn.o_proj, "sharded-to-all", group=group)
    attn.n_heads //= n
    attn.n_kv_heads //= n
    return attn


@st.composite
def attention_examples(draw, ranks: st.SearchStrategy[int]):
    n = draw(ranks)
    kv_heads = n * draw(st.integers(1, 2))
    return AttentionExample(
        seed=draw(st.integers(0, 2**31 - 1)),
        ranks=n,
        heads=kv_heads * draw(st.integers(1, 4)),
        kv_heads=kv_heads,
        head_dim=2 * draw(st.integers(1, 8)),
        hidden=draw(st.integers(1, 32)),
        batch=draw(st.integers(1, 2)),
        length=draw(st.integers(1, 8)),
        bias=draw(st.booleans()),
        dtype=draw(st.sampled_from(tuple(MX_DTYPES))),
    )


def check_attention_heads(
    ex: AttentionExample, group: Any, shard_fn: Callable = head_parallel
) -> None:
    """Head-parallel grouped-KV attention equals full attention on every rank."""
    expected, x = expected_attention(ex), ex.inputs()
    sharded = checked("sharding", lambda: shard_fn(ex.build(), group))
    y = checked("sharded forward", lambda: sharded(x, mask="causal"))
    for rank, got in enumerate(gather(y, group)):
        expected.check(f"rank {rank} attention vs numpy", got)
