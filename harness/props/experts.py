"""Stacked experts: SwitchGLU `[E, out, in]`, tensor parallel (mlx-lm's MoE sharding)
and expert parallel (whole experts per rank, routing masked)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from hypothesis import strategies as st
from mlx.nn.layers.distributed import shard_inplace
from mlx_lm.models.switch_layers import SwitchGLU

from harness.props.numeric import (
    MX_DTYPES,
    Expected,
    Quant,
    allowance,
    checked,
    dense_weight,
    gather_mm_dtypes,
    normal,
    quant_modes,
    to_mlx,
    to_numpy,
)
from harness.props.simulate import SimGroup


@dataclass(frozen=True)
class SwitchExample:
    seed: int
    ranks: int
    experts: int
    hidden: int
    intermediate: int
    top_k: int
    batch: int
    length: int
    dtype: str
    quant: Quant | None

    def build(self) -> SwitchGLU:
        """A fresh block (sharding changes it in place) holding the cached parameters."""
        block = self._empty()
        block.update(_switch_parameters(self))
        return block

    def _empty(self) -> SwitchGLU:
        block = SwitchGLU(self.hidden, self.intermediate, self.experts)
        if self.quant is not None:
            nn.quantize(block, self.quant.group_size, self.quant.bits, mode=self.quant.mode)
        return block

    def inputs(self) -> tuple[mx.array, mx.array]:
        x = normal(self.seed + 3, self.batch, self.length, self.hidden)
        scores = np.random.default_rng(self.seed + 4).random(
            (self.batch, self.length, self.experts)
        )
        chosen = np.argsort(scores, axis=-1)[..., : self.top_k]  # any routing, top-k distinct
        return to_mlx(x, self.dtype), mx.array(chosen.astype(np.int32))


@functools.lru_cache(maxsize=4)
def _switch_parameters(ex: SwitchExample) -> dict:
    """The block's (quantized) parameters, made once per example: arrays are immutable,
    so every rank's fresh block can share them."""
    block = SwitchGLU(ex.hidden, ex.intermediate, ex.experts)
    for i, name in enumerate(("gate_proj", "up_proj", "down_proj")):
        shape = getattr(block, name).weight.shape
        w = normal(ex.seed + i, *shape, scale=shape[-1] ** -0.5)
        getattr(block, name).weight = to_mlx(w, ex.dtype)
    if ex.quant is not None:
        nn.quantize(block, ex.quant.group_size, ex.quant.bits, mode=ex.quant.mode)
    mx.eval(block.parameters())
    return block.parameters()


@functools.lru_cache(maxsize=4)
def expected_switch(ex: SwitchExample) -> Expected:
    """numpy's SwitchGLU, down(silu(gate x) * up x) per routed expert, [B, L, k, D], once
    mlx's unsharded block agrees."""
    block, (x, indices) = ex.build(), ex.inputs()
    idx = np.array(indices)
    wg, wu, wd = (
        dense_weight(getattr(block, n))[idx] for n in ("gate_proj", "up_proj", "down_proj")
    )
    x64 = to_numpy(x).astype(np.float64)
    g, u = np.einsum("bld,blkid->blki", x64, wg), np.einsum("bld,blkid->blki", x64, wu)
    h = g / (1 + np.exp(-g)) * u
    # g, u and h are rounded to the dtype relative to themselves: the scale that matters
    # is that of the down projection
    expected = Expected(
        np.einsum("blki,blkdi->blkd", h, wd),
        np.sqrt(np.einsum("blki,blkdi->blkd", h**2, wd**2)),
        allowance(ex.dtype, ex.ranks, ex.hidden + ex.intermediate),
    )
    expected.check("unsharded block vs numpy", to_numpy(block(x, indices)))
    return expected


def tensor_parallel_experts(block: SwitchGLU, group: Any) -> Callable:
    """mlx-lm's MoE sharding (qwen3_moe and others): every rank keeps all experts and a
    slice of each one's intermediate axis; the block's caller all-sums."""
    shard_inplace(block.gate_proj, "all-to-sharded", group=group)
    shard_inplace(block.up_proj, "all-to-sharded", group=group)
    shard_inplace(block.down_proj, "sharded-to-all", group=group)
    return block


def expert_parallel(block: SwitchGLU, group: Any) -> Callable:
    """Rank r keeps experts [r E/N, (r+1) E/N) whole, computes the tokens routed to them
    and zeros the rest; the caller all-sums."""
    experts = block.gate_proj.weight.shape[0] // group.size()
    first = group.rank() * experts
    shard_inplace(block, lambda path, weight: 0, group=group)

    def local(x: mx.array, indices: mx.array) -> mx.array:
        owned = (indices >= first) & (indices < first + experts)
        y = block(x, mx.where(owned, indices - first, 0))
        return y * owned[..., None].astype(y.dtype)

    return local


@st.composite
def switch_examples(draw, ranks: st.SearchStrategy[int], expert_parallel: bool = False):
    n = draw(ranks)
    dtypes = tuple(MX_DTYPES)
    quant = draw(st.sampled_from((None, *quant_modes())))
    if quant is None:
        dtypes = gather_mm_dtypes()
    hidden_unit = quant.unit if quant else 1
    # tensor parallel splits the intermediate axis; down_proj's quantized input must still
    # hold whole groups on every rank
    inter_unit = (quant.unit if quant else 1) * (1 if expert_parallel else n)
    experts = n * draw(st.integers(1, 2)) if expert_parallel else draw(st.integers(1, 8))
    return SwitchExample(
        seed=draw(st.integers(0, 2**31 - 1)),
        ranks=n,
        experts=experts,
        hidden=hidden_unit * draw(st.integers(1, 2 if quant else 12)),
        intermediate=inter_unit * draw(st.integers(1, 2 if quant else 4)),
        top_k=draw(st.integers(1, min(experts, 4))),
        batch=draw(st.integers(1, 2)),
        length=draw(st.integers(1, 12)),
        dtype=draw(st.sampled_from(dtypes)),
        quant=quant,
    )


def check_switch_block(
    ex: SwitchExample,
    group: Any,
    shard_fn: Callable = tensor_parallel_experts,
    mismatched: Callable | None = None,
) -> None:
    """The all-summed per-rank outputs of the sharded expert block equal the full block for
    the drawn routing. With `mismatched` (a sharding whose gate/up and down slices do not
    line up), that one must differ."""
    expected, (x, indices) = expected_switch(ex), ex.inputs()
    local = checked("sharding", lambda: shard_fn(ex.build(), group))
    y = checked("sharded forward", lambda: local(x, indices))
    both = mismatched is not None and ex.ranks > 1
    if both:  # one all_sum for the two
        y = mx.stack([y, mismatched(ex.build(), group)(x, indices)])
    summed = to_numpy(mx.distributed.all_sum(y, group=group))
    expected.check("all-summed shards vs numpy", summed[0] if both else summed)
    if both:
        assert expected.error(summed[1]) > expected.allowed, (
            "gate/up and down sliced inconsistently still match: the check is blind here"
        )


def misaligned_experts(block: SwitchGLU, group: Any) -> Callable:
    """gate/up keep intermediate chunk r, down keeps chunk r+1: shapes fit, numbers don't."""
    n, r = group.size(), group.rank()
    shard_inplace(block.gate_proj, "all-to-sharded", group=group)
    shard_inplace(block.up_proj, "all-to-sharded", group=group)
    shard_inplace(block.down_proj, "sharded-to-all", group=SimGroup((r + 1) % n, n))
    return block


check_switch_tensor_parallel = functools.partial(check_switch_block, mismatched=misaligned_experts)
check_switch_expert_parallel = functools.partial(check_switch_block, shard_fn=expert_parallel)
