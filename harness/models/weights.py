"""Deterministic tiny weights from (seed, parameter name), drawn with numpy.

Never from mx.random: numpy's PCG64 stream seeded from a SHA-256 of the name is the same
on every rank, process, machine and mlx version, so a golden recorded anywhere holds
everywhere. Values are scaled by the role of each parameter so that logits are not
saturated and router top-k margins are comfortable.

Call on the freshly built full model: before casting, quantizing or sharding.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten

# Router logits of std ~2 over normalized inputs: top-2 of 8 is rarely a near-tie.
ROUTER_GAIN = 2.0
# Output logits of std ~2: a clear top-1 without saturating the softmax.
LM_HEAD_GAIN = 2.0
EMBEDDING_STD = 1.0
NORM_NOISE = 0.1
BIAS_STD = 0.1
ROUTING_BIAS_STD = 0.02

_ROUTING_BIASES = ("e_score_correction_bias", "expert_bias", "router_bias")
_ROUTER_MODULES = ("gate", "router", "classifier")


def param_rng(seed: int, name: str) -> np.random.Generator:
    """The generator for one parameter: a pure function of (seed, name)."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


@dataclass(frozen=True)
class Sampler:
    """How one parameter is drawn: `kind` (a key of _DRAWS) and its scale. Hashable, so a
    draw is cached by what determines it (`_draw`)."""

    kind: str
    scale: float = 1.0

    @property
    def needs_default(self) -> bool:
        return self.kind == "around_default"


def _normal(std: float) -> Sampler:
    return Sampler("normal", float(std))


def _around_default(noise: float) -> Sampler:
    # Norm gains: ones for RMSNorm, zeros for (1 + w) norms; keep whichever the model uses.
    return Sampler("around_default", float(noise))


def _a_log(rng: np.random.Generator, shape, scale, default) -> np.ndarray:
    # Gated delta nets initialise A ~ U(1, 16); A_log holds its log.
    return np.log(rng.uniform(1.0, 16.0, shape))


def _dt_bias(rng: np.random.Generator, shape, scale, default) -> np.ndarray:
    # Mamba-style: dt ~ logU(1e-3, 1e-1), stored as softplus^-1(dt).
    dt = np.exp(rng.uniform(np.log(1e-3), np.log(1e-1), shape))
    return np.log(np.expm1(dt))


_DRAWS = {
    "normal": lambda rng, shape, scale, default: rng.standard_normal(shape) * scale,
    "around_default": lambda rng, shape, scale, default: (
        default + rng.standard_normal(shape) * scale
    ),
    "a_log": _a_log,
    "dt_bias": _dt_bias,
}


def _fan_in(module: nn.Module | None, shape: tuple[int, ...]) -> int:
    # Conv1d weights are [out, kernel, in / groups]; every other matrix (Linear,
    # stacked SwitchLinear [E, out, in], MultiLinear [H, out, in]) reads the last axis.
    if isinstance(module, nn.Conv1d):
        return shape[1] * shape[2]
    return shape[-1]


def _is_router(owner_path: str) -> bool:
    return any(part in _ROUTER_MODULES for part in owner_path.split("."))


# Parameters whose meaning fixes their distribution, by their own name.
_SPECIAL: dict[str, Sampler] = {
    "A_log": Sampler("a_log"),
    "dt_bias": Sampler("dt_bias"),
    # Attention sinks: per-head logits of the extra "sink" slot, O(1) like real ones.
    "sinks": _normal(1.0),
    # Small next to router scores: the bias nudges expert selection, never decides it.
    **{name: _normal(ROUTING_BIAS_STD) for name in _ROUTING_BIASES},
}


def _is_gain(module: nn.Module | None, leaf: str) -> bool:
    # Norm gains, hyper-connection scales, muse_spark's fixed residual-gate weights.
    return "Norm" in type(module).__name__ or leaf == "scale" or leaf.endswith(("_alpha", "_beta"))


def _sampler(name: str, module: nn.Module | None, shape: tuple[int, ...]) -> Sampler:
    owner_path, _, leaf = name.rpartition(".")
    if leaf in _SPECIAL:
        return _SPECIAL[leaf]
    # Biases include stacked per-expert ones ([E, out]), which are not matrices.
    if leaf == "bias":
        return _normal(BIAS_STD)
    if _is_gain(module, leaf):
        return _around_default(NORM_NOISE)
    if len(shape) < 2:
        return _normal(BIAS_STD)
    if isinstance(module, nn.Embedding):
        return _normal(EMBEDDING_STD)
    gain = 1.0
    if _is_router(owner_path):
        gain = ROUTER_GAIN
    elif owner_path.endswith("lm_head"):
        gain = LM_HEAD_GAIN
    return _normal(gain / np.sqrt(_fan_in(module, shape)))


def init_weights(model: nn.Module, seed: int) -> None:
    """Overwrite every floating-point parameter of `model` in place, deterministically."""
    modules = dict(model.named_modules())
    flat = tree_flatten(model.parameters())
    # Architectures that always tie the head to the embedding (hunyuan, lfm2_moe) read
    # their logits through it: scaled like an LM head, or the softmax saturates.
    tied = not any(name.endswith(("lm_head.weight", "lm_head.scales")) for name, _ in flat)
    updates = []
    for name, value in flat:
        if not mx.issubdtype(value.dtype, mx.floating):
            continue
        module = modules.get(name.rpartition(".")[0])
        sampler = _sampler(name, module, value.shape)
        if tied and isinstance(module, nn.Embedding) and name.endswith("embed_tokens.weight"):
            sampler = _normal(LM_HEAD_GAIN / np.sqrt(value.shape[-1]))
        # Only a draw around the default reads it: evaluating every default (the model's
        # own random init) would cost as much as drawing.
        default = None
        if sampler.needs_default:
            default = np.array(value.astype(mx.float32)).astype(np.float32).tobytes()
        drawn = _draw(seed, name, tuple(value.shape), sampler, default)
        updates.append((name, drawn.astype(value.dtype)))
    model.update(tree_unflatten(updates))
    mx.eval(model.parameters())


@functools.lru_cache(maxsize=4096)
def _draw(
    seed: int, name: str, shape: tuple[int, ...], sampler: Sampler, default: bytes | None
) -> mx.array:
    """One parameter's values (float32), a pure function of its arguments, so cached: a
    run builds each architecture afresh for every case (reference, truth, each strategy
    and precision), and drawing took most of a build. mx arrays are immutable, so models
    share a cached one safely."""
    base = None if default is None else np.frombuffer(default, np.float32).reshape(shape)
    values = _DRAWS[sampler.kind](param_rng(seed, name), shape, sampler.scale, base)
    return mx.array(np.asarray(values, dtype=np.float32))
