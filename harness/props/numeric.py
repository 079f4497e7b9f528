"""Numbers shared by every property: dtypes and quantization modes, deterministic inputs,
numpy references with their tolerances, and the step and gather helpers of a check."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import mlx.core as mx
import mlx.nn as nn
import numpy as np

MX_DTYPES = {"float32": mx.float32, "bfloat16": mx.bfloat16, "float16": mx.float16}
# Unit roundoff of each dtype's significand; tolerances are multiples of it.
EPS = {"float32": 2.0**-24, "bfloat16": 2.0**-8, "float16": 2.0**-11}
# Measured over hundreds of examples: right results use at most ~0.45 of the allowance
# (bf16 affine-quantized experts), the wrong shards in tests/test_props.py at least 1.5x it.
ALLOWANCE_FACTOR = 4.0


class Quant(NamedTuple):
    mode: str
    bits: int
    group_size: int

    @property
    def unit(self) -> int:
        """What a quantized axis must be a multiple of: whole groups, and whole blocks of
        32 values, which nvfp4 quantizes in (mx.quantize raises on a lone group of 16)."""
        return math.lcm(self.group_size, 32)


QUANT_CANDIDATES = (
    Quant("affine", 4, 32),
    Quant("affine", 8, 64),
    Quant("mxfp4", 4, 32),
    Quant("mxfp8", 8, 32),
    Quant("nvfp4", 4, 16),
)


@functools.cache
def quant_modes() -> tuple[Quant, ...]:
    """The quantization modes this mlx build runs on its default device (probed)."""
    found = []
    w = mx.ones((8, 64))
    for quant in QUANT_CANDIDATES:
        try:
            parts = mx.quantize(w, quant.group_size, quant.bits, mode=quant.mode)
            scales, biases = parts[1], (parts[2] if len(parts) > 2 else None)
            kw = dict(transpose=True, group_size=quant.group_size, bits=quant.bits, mode=quant.mode)
            mx.eval(mx.quantized_matmul(mx.ones((1, 64)), parts[0], scales, biases, **kw))
        except (ValueError, RuntimeError):
            continue
        found.append(quant)
    return tuple(found)


@functools.cache
def gather_mm_dtypes() -> tuple[str, ...]:
    """Dtypes unquantized SwitchLinear (`gather_mm`) runs in: only float32 on CPU."""
    found = []
    for name, dtype in MX_DTYPES.items():
        try:
            a = mx.ones((1, 1, 4), dtype=dtype)
            mx.eval(mx.gather_mm(a, mx.ones((2, 4, 4), dtype=dtype), rhs_indices=mx.array([1])))
        except (ValueError, RuntimeError):
            continue
        found.append(name)
    return tuple(found)


def to_numpy(a: mx.array) -> np.ndarray:
    """`a` as numpy; bfloat16 (which numpy lacks) widens exactly to float32."""
    if a.dtype == mx.bfloat16:
        a = a.astype(mx.float32)
    return np.array(a)


def dense_weight(layer: nn.Module) -> np.ndarray:
    """The float64 weight a (quantized) Linear or SwitchLinear multiplies by."""
    if "scales" not in layer:
        return to_numpy(layer.weight).astype(np.float64)
    w = mx.dequantize(
        layer.weight,
        layer.scales,
        layer.get("biases"),
        layer.group_size,
        layer.bits,
        mode=layer.mode,
        dtype=mx.float32,
    )
    return np.array(w).astype(np.float64)


class Expected(NamedTuple):
    """What a result must match: numpy's `want`; `scale`, the typical size of each entry,
    the root sum of squares of the terms that make it (it does not shrink when they
    cancel); and `allowed`, the error allowed relative to the scale."""

    want: np.ndarray
    scale: np.ndarray
    allowed: float

    def error(self, got: np.ndarray) -> float:
        """||got - want|| / ||scale||: a few roundoffs when right, about 1 for a wrong
        shard; infinite for a wrong shape, NaN for non-finite values."""
        got = np.asarray(got, dtype=np.float64)
        if got.shape != self.want.shape:
            return math.inf
        return float(np.linalg.norm(got - self.want) / np.linalg.norm(self.scale))

    def check(self, what: str, got: np.ndarray) -> None:
        got = np.asarray(got, dtype=np.float64)
        assert got.shape == self.want.shape, f"{what}: shape {got.shape}, not {self.want.shape}"
        error = self.error(got)
        if not error <= self.allowed:  # NaN fails too
            diff = np.nan_to_num(np.abs(got - self.want), nan=np.inf)
            at = np.unravel_index(np.argmax(diff), diff.shape)
            raise AssertionError(
                f"{what}: relative error {error:.3g} exceeds {self.allowed:.3g} "
                f"(max |Δ| {diff[at]:.3g} at {tuple(int(i) for i in at)})"
            )

    def part(self, take: Callable[[np.ndarray], np.ndarray]) -> Expected:
        return Expected(take(self.want), take(self.scale), self.allowed)


def allowance(dtype: str, ranks: int, depth: int) -> float:
    """Error allowed, relative to the scale, for an mlx result in `dtype` summed over
    `depth` terms on `ranks` ranks: each rank rounds its partial sum to the dtype, and the
    sum over ranks rounds again; accumulation runs in float32."""
    return ALLOWANCE_FACTOR * (EPS[dtype] * (2 + ranks) + EPS["float32"] * math.sqrt(depth))


def linear_scale(x: np.ndarray, w: np.ndarray, b: np.ndarray | float) -> np.ndarray:
    """The typical size of `x @ w.T + b`: root sum of squared terms, plus |b|."""
    return np.sqrt(np.square(x) @ np.square(w).T) + np.abs(b)


def gather(x: mx.array, group: Any) -> list[np.ndarray]:
    """Every rank's `x`, in rank order, on every rank (all_gather)."""
    stacked = mx.distributed.all_gather(x[None], group=group)
    return list(to_numpy(stacked))


def checked(step: str, fn: Callable[[], Any]) -> Any:
    """Run a sharding or sharded-forward step; an error in it is the property failing."""
    try:
        out = fn()
        if isinstance(out, mx.array):
            mx.eval(out)
        return out
    except AssertionError:
        raise
    except Exception as error:
        raise AssertionError(f"{step} raised {type(error).__name__}: {error}") from error


@functools.lru_cache(maxsize=256)
def normal(seed: int, *shape: int, scale: float = 1.0) -> np.ndarray:
    """Deterministic numbers from numpy (never mx.random): the same on every rank."""
    values = (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)
    values.flags.writeable = False  # cached and shared
    return values


def to_mlx(values: np.ndarray, dtype: str) -> mx.array:
    """`values` as an mlx array of `dtype`, a name in MX_DTYPES."""
    return mx.array(values).astype(MX_DTYPES[dtype])
