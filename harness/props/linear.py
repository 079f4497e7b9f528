"""Linear and QuantizedLinear: shard/unshard, all-to-sharded, sharded-to-all, and fused
[q, k, v] projections split per segment (mlx's `shard_linear`)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from hypothesis import strategies as st
from mlx.nn.layers.distributed import shard_linear

from harness.props.numeric import (
    MX_DTYPES,
    Expected,
    Quant,
    allowance,
    checked,
    dense_weight,
    gather,
    linear_scale,
    normal,
    quant_modes,
    to_mlx,
    to_numpy,
)

SHARDINGS = ("all-to-sharded", "sharded-to-all")


def segment_sizes(segments: int | list, length: int) -> list[int]:
    """How mlx's `segments=` cuts an axis of `length`: an int is that many equal parts, a
    list of ints holds split *indices*, a list of floats fractions (floored by mlx)."""
    if isinstance(segments, int):
        return [length // segments] * segments
    if isinstance(segments[0], int):
        cuts = list(segments)
    else:
        cuts = [int(s * length) for s in segments]
    bounds = [0, *cuts, length]
    return [b - a for a, b in zip(bounds, bounds[1:], strict=False)]


def rank_slice(
    full: np.ndarray, axis: int, segments: int | list, ranks: int, rank: int
) -> np.ndarray:
    """Rank `rank`'s shard of `full`: its chunk of every segment, concatenated."""
    parts, start = [], 0
    for size in segment_sizes(segments, full.shape[axis]):
        chunk = size // ranks
        parts.append(np.take(full, range(start + rank * chunk, start + (rank + 1) * chunk), axis))
        start += size
    return np.concatenate(parts, axis)


def unshard(pieces: list[np.ndarray], axis: int, segments: int | list, length: int) -> np.ndarray:
    """Undo the segment-aware split: per segment, every rank's chunk in rank order."""
    ranks = len(pieces)
    parts, start = [], 0
    for size in segment_sizes(segments, length):
        chunk = size // ranks
        parts += [np.take(p, range(start, start + chunk), axis) for p in pieces]
        start += chunk
    return np.concatenate(parts, axis)


@dataclass(frozen=True)
class LinearExample:
    """A (Quantized)Linear sharded `sharding` over `ranks`; `sections` are the segment
    sizes along the sharded axis (outputs for all-to-sharded, inputs for sharded-to-all),
    `other` the size of the unsharded axis."""

    seed: int
    ranks: int
    sharding: str
    sections: tuple[int, ...]
    other: int
    bias: bool
    dtype: str
    quant: Quant | None
    batch: int = 3

    @property
    def out_dims(self) -> int:
        return sum(self.sections) if self.sharding == "all-to-sharded" else self.other

    @property
    def in_dims(self) -> int:
        return self.other if self.sharding == "all-to-sharded" else sum(self.sections)

    @property
    def segments(self) -> int | list[int]:
        """`segments=` as mlx-lm writes it: split indices. Quantized sharded-to-all splits
        the packed input axis, where indices would mean different places in weight and
        scales; there the sections are equal and given as a count."""
        if len(self.sections) == 1:
            return 1
        if self.quant and self.sharding == "sharded-to-all":
            return len(self.sections)
        return list(np.cumsum(self.sections[:-1]).tolist())

    def build(self, rows: slice = slice(None)) -> nn.Module:
        """The layer (only output rows `rows` of it, for per-section layers)."""
        weight = normal(self.seed, self.out_dims, self.in_dims, scale=self.in_dims**-0.5)[rows]
        layer = nn.Linear(self.in_dims, weight.shape[0], bias=self.bias)
        layer.weight = to_mlx(weight, self.dtype)
        if self.bias:
            layer.bias = to_mlx(normal(self.seed + 1, self.out_dims, scale=0.5)[rows], self.dtype)
        if self.quant is None:
            return layer
        q = self.quant
        return nn.QuantizedLinear.from_linear(layer, q.group_size, q.bits, mode=q.mode)

    def inputs(self) -> mx.array:
        return to_mlx(normal(self.seed + 2, self.batch, self.in_dims), self.dtype)


def mlx_shard_linear(
    layer: nn.Module, sharding: str, segments: int | list, group: Any
) -> nn.Module:
    """The sharding under test by default: mlx's own `shard_linear`."""
    return shard_linear(layer, sharding, segments=segments, group=group)


@functools.lru_cache(maxsize=4)
def expected_linear(ex: LinearExample) -> Expected:
    """numpy's output of the unsharded layer, once mlx's is found to agree. Cached: every
    simulated rank asks for it."""
    layer, x = ex.build(), ex.inputs()
    b = to_numpy(layer.bias).astype(np.float64) if ex.bias else 0.0
    x64, w = to_numpy(x).astype(np.float64), dense_weight(layer)
    expected = Expected(
        x64 @ w.T + b, linear_scale(x64, w, b), allowance(ex.dtype, ex.ranks, ex.in_dims)
    )
    expected.check("unsharded layer vs numpy", to_numpy(layer(x)))
    return expected


@st.composite
def linear_examples(draw, ranks: st.SearchStrategy[int], shardings=SHARDINGS, fused: bool = False):
    n = draw(ranks)
    sharding = draw(st.sampled_from(shardings))
    quant = draw(st.sampled_from((None, *quant_modes())))
    quant_split = quant is not None and sharding == "sharded-to-all"
    unit = n * (quant.unit if quant_split else 1)
    if fused:  # [q, k, v] with k = v and q a multiple of them: grouped-query attention
        kv = draw(st.integers(1, 3))
        sections = (kv * draw(st.integers(2, 4)) * unit, kv * unit, kv * unit)
    elif quant_split:
        sections = (unit * draw(st.integers(1, 2)),) * draw(st.integers(1, 3))
    else:
        sections = tuple(
            unit * m for m in draw(st.lists(st.integers(1, 3), min_size=1, max_size=3))
        )
    if quant is not None and sharding == "all-to-sharded":
        other = quant.unit * draw(st.integers(1, 2))
    else:
        other = draw(st.integers(1, 24))
    return LinearExample(
        seed=draw(st.integers(0, 2**31 - 1)),
        ranks=n,
        sharding=sharding,
        sections=sections,
        other=other,
        bias=draw(st.booleans()),
        dtype=draw(st.sampled_from(tuple(MX_DTYPES))),
        quant=quant,
        batch=draw(st.integers(1, 4)),
    )


def check_shard_unshard(
    ex: LinearExample, group: Any, shard_fn: Callable = mlx_shard_linear
) -> None:
    """Gathering every rank's shard (per segment, in rank order) gives back weight, scales,
    biases and bias bit for bit; sharded-to-all keeps the whole bias on every rank."""
    layer = ex.build()
    sharded = checked("sharding", lambda: shard_fn(layer, ex.sharding, ex.segments, group))
    pieces = dict(nn.utils.tree_flatten(sharded.parameters()))
    for name, full in nn.utils.tree_flatten(layer.parameters()):
        assert name in pieces, f"'{name}' is missing from the shard"
        gathered = gather(pieces[name], group)
        want = to_numpy(full)
        if name == "bias" and ex.sharding == "sharded-to-all":
            for rank, piece in enumerate(gathered):
                assert np.array_equal(piece, want), f"rank {rank} holds a different bias"
            continue
        axis = 0 if ex.sharding == "all-to-sharded" else -1
        assert all(p.shape == gathered[0].shape for p in gathered), f"'{name}' shard shapes differ"
        expected = [s // ex.ranks for s in segment_sizes(ex.segments, want.shape[axis])]
        got = gathered[0].shape[axis] if gathered[0].ndim else 0
        assert got == sum(expected), (
            f"'{name}' shard is {gathered[0].shape}, expected {sum(expected)} along axis {axis} "
            f"of {want.shape}"
        )
        rebuilt = unshard(gathered, axis, ex.segments, want.shape[axis])
        assert rebuilt.shape == want.shape, (
            f"'{name}' unshards to {rebuilt.shape}, not {want.shape}"
        )
        if not np.array_equal(rebuilt, want):
            wrong = int(np.sum(rebuilt != want))
            raise AssertionError(f"'{name}' unsharded differs in {wrong} of {want.size} entries")


def check_all_to_sharded(
    ex: LinearExample, group: Any, shard_fn: Callable = mlx_shard_linear
) -> None:
    """Every rank's all-to-sharded output, gathered and unsharded, is the layer's output."""
    expected, layer, x = expected_linear(ex), ex.build(), ex.inputs()
    sharded = checked("sharding", lambda: shard_fn(layer, "all-to-sharded", ex.segments, group))
    y = checked("sharded forward", lambda: sharded(x))
    pieces = gather(y, group)
    assert pieces[0].shape[-1] * ex.ranks == ex.out_dims, f"rank output is {pieces[0].shape}"
    expected.check("gathered shards vs numpy", unshard(pieces, -1, ex.segments, ex.out_dims))


def check_sharded_to_all(
    ex: LinearExample, group: Any, shard_fn: Callable = mlx_shard_linear
) -> None:
    """Each rank multiplies its slice of the input; the layer's all_sum and its bias, added
    once, give the unsharded output on every rank."""
    expected, layer, x = expected_linear(ex), ex.build(), ex.inputs()
    sharded = checked("sharding", lambda: shard_fn(layer, "sharded-to-all", ex.segments, group))
    mine = rank_slice(np.array(x.astype(mx.float32)), -1, ex.segments, ex.ranks, group.rank())
    y = checked("sharded forward", lambda: sharded(mx.array(mine).astype(x.dtype)))
    for rank, got in enumerate(gather(y, group)):
        expected.check(f"rank {rank} output vs numpy", got)


def check_fused_segments(
    ex: LinearExample, group: Any, shard_fn: Callable = mlx_shard_linear
) -> None:
    """A fused [q, k, v] projection split per segment gives each rank exactly the rows,
    and so the outputs, that splitting q, k and v separately gives it; a contiguous split
    gives other rows (compared exactly: outputs of a few rows can agree by chance)."""
    fused, x = ex.build(), ex.inputs()
    bounds = np.cumsum((0, *ex.sections))
    parts = [
        shard_linear(ex.build(slice(a, b)), "all-to-sharded", group=group)
        for a, b in zip(bounds, bounds[1:], strict=False)
    ]
    want_rows = _rows(parts)
    mine = expected_linear(ex).part(
        lambda a: rank_slice(a, -1, ex.segments, ex.ranks, group.rank())
    )
    expected = Expected(
        np.concatenate([to_numpy(p(x)) for p in parts], -1).astype(np.float64),
        mine.scale,
        mine.allowed,
    )

    sharded = checked("sharding", lambda: shard_fn(fused, "all-to-sharded", ex.segments, group))
    y = checked("sharded forward", lambda: to_numpy(sharded(x)))
    verdict = [_rows([sharded]) == want_rows, expected.error(y) <= expected.allowed]
    if ex.ranks > 1 and len(ex.sections) > 1:
        verdict.append(_rows([shard_linear(fused, "all-to-sharded", group=group)]) != want_rows)
    seen = gather(mx.array(verdict, dtype=mx.int32), group)
    for rank, (same_rows, close, *contiguous_differs) in enumerate(seen):
        assert same_rows, (
            f"rank {rank}: the fused shard holds other rows than the per-section shards"
        )
        assert close, f"rank {rank}: the fused shard's output differs from the per-section outputs"
        assert all(contiguous_differs), (
            f"rank {rank}: a contiguous split of sections {ex.sections} holds the same rows "
            "as the per-section split, so the check could not tell them apart"
        )


def _rows(layers: list[nn.Module]) -> dict[str, bytes]:
    """The layers' parameters stacked along the output axis, as bytes, by name."""
    names = [name for name, _ in nn.utils.tree_flatten(layers[0].parameters())]
    rows = {}
    for name in names:
        stacked = [dict(nn.utils.tree_flatten(layer.parameters()))[name] for layer in layers]
        rows[name] = to_numpy(mx.concatenate(stacked, axis=0)).tobytes()
    return rows
