"""Pipeline: any split vector of layers across ranks (mlx-lm's PipelineMixin) reproduces
the full stack."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from hypothesis import strategies as st
from mlx_lm.models.pipeline import PipelineMixin

from harness.props.numeric import (
    MX_DTYPES,
    Expected,
    allowance,
    checked,
    dense_weight,
    gather,
    normal,
    to_mlx,
    to_numpy,
)


class _Residual(nn.Module):
    def __init__(self, weight: mx.array, bias: mx.array):
        super().__init__()
        self.proj = nn.Linear(weight.shape[1], weight.shape[0])
        self.proj.weight, self.proj.bias = weight, bias

    def __call__(self, h: mx.array) -> mx.array:
        return h + mx.tanh(self.proj(h))


class _Stack(PipelineMixin, nn.Module):
    def __init__(self, layers: list[_Residual]):
        super().__init__()
        self.layers = layers

    def __call__(self, h: mx.array, group: Any) -> mx.array:
        """mlx-lm's pipelined forward (deepseek_v3 and others): receive from the rank
        after, run this rank's layers, send to the rank before, all-gather rank 0's
        result. Evaluated step by step: one lazy graph over several send/recv deadlocks."""
        rank, size = self.pipeline_rank, self.pipeline_size
        if rank < size - 1:
            h = mx.distributed.recv_like(h, rank + 1, group=group)
            mx.eval(h)
        for layer in self.pipeline_layers:
            h = layer(h)
        mx.eval(h)
        if rank != 0:
            h = mx.distributed.send(h, (rank - 1) % size, group=group)
            mx.eval(h)
        if size > 1:
            h = mx.distributed.all_gather(h, group=group)[: h.shape[0]]
        return h


@dataclass(frozen=True)
class PipelineExample:
    seed: int
    ranks: int
    split: tuple[int, ...]
    hidden: int
    batch: int
    length: int
    dtype: str

    def build(self) -> _Stack:
        d = self.hidden
        return _Stack(
            [
                _Residual(
                    to_mlx(normal(self.seed + 2 * i, d, d, scale=1.5 * d**-0.5), self.dtype),
                    to_mlx(normal(self.seed + 2 * i + 1, d, scale=0.5), self.dtype),
                )
                for i in range(sum(self.split))
            ]
        )

    def inputs(self) -> mx.array:
        return to_mlx(normal(self.seed - 1, self.batch, self.length, self.hidden), self.dtype)


def mlx_lm_pipeline(model: _Stack, group: Any, split: list[int]) -> None:
    """The pipeline split under test by default: mlx-lm's `PipelineMixin.pipeline`."""
    model.pipeline(group, split)


@st.composite
def pipeline_examples(draw, ranks: st.SearchStrategy[int]):
    n = draw(ranks)
    return PipelineExample(
        seed=draw(st.integers(1, 2**31 - 1)),
        ranks=n,
        split=tuple(draw(st.lists(st.integers(1, 3), min_size=n, max_size=n))),
        hidden=draw(st.integers(1, 16)),
        batch=draw(st.integers(1, 2)),
        length=draw(st.integers(1, 4)),
        dtype=draw(st.sampled_from(tuple(MX_DTYPES))),
    )


@functools.lru_cache(maxsize=4)
def expected_pipeline(ex: PipelineExample) -> np.ndarray:
    """mlx's output of the whole stack on one rank, once numpy's agrees."""
    x, full = ex.inputs(), ex.build()
    want = to_numpy(x).astype(np.float64)
    for layer in full.layers:
        w, b = dense_weight(layer.proj), to_numpy(layer.proj.bias).astype(np.float64)
        want = want + np.tanh(want @ w.T + b)
    y_full = to_numpy(full(x, None))
    # every layer adds its rounding to what the earlier ones left
    allowed = allowance(ex.dtype, 1, ex.hidden) * len(full.layers)
    Expected(want, 1 + np.abs(want), allowed).check("unsharded stack vs numpy", y_full)
    return y_full


def check_pipeline(
    ex: PipelineExample, group: Any, pipeline_fn: Callable = mlx_lm_pipeline
) -> None:
    """Any split vector of the layers over the ranks reproduces the full stack bit for bit
    (the same operations, moved by send/recv), and every rank ends with it."""
    y_full = expected_pipeline(ex)
    model = ex.build()
    checked("pipeline split", lambda: pipeline_fn(model, group, list(ex.split)))
    y = checked("pipelined forward", lambda: model(ex.inputs(), group))
    for rank, got in enumerate(gather(y, group)):
        if not np.array_equal(got, y_full):
            raise AssertionError(
                f"rank {rank}: pipelined output differs from the full stack "
                f"(max |Δ| {np.max(np.abs(got.astype(np.float64) - y_full)):.3g})"
            )
