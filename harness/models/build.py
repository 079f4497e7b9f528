"""Build the tiny model of a case: config, deterministic weights, dtype, quantization."""

from __future__ import annotations

import contextlib
import copy
import functools
import io
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_map_with_path

from harness.case import DTYPES, QUANT_BITS, Case
from harness.errors import HarnessError, ModelError, model_code
from harness.models import answers
from harness.models.mlx_lm_api import model_classes
from harness.models.weights import init_weights
from harness.scenario import SERVE
from harness.zoo import ARCHS, config_copy, get_arch, support


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    # Recursive, so {"text_config": {"num_hidden_layers": 2}} changes one nested field.
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base


def tiny_config(case: Case) -> dict[str, Any]:
    """A deep copy of the architecture's config with the case's overrides merged in."""
    return _merge(config_copy(get_arch(case.arch)), case.overrides)


def build_model(case: Case) -> tuple[nn.Module, dict[str, Any]]:
    """A fresh model for the case, and its config (with quantization when quantized).

    Never cached: a strategy may patch model classes or modules, so every case gets
    its own instance.
    """
    _check_precision(case)
    status = support(case.arch)
    if not status.available:
        raise HarnessError(f"architecture '{case.arch}' is unavailable: {status.reason}")
    config = tiny_config(case)
    model = _construct(case, config)
    init_weights(model, case.seed)
    if case.dtype != "float32":
        _cast(model, getattr(mx, case.dtype))
    if case.quant:
        config = _quantize(model, config, case.group_size, case.quant)
    mx.eval(model.parameters())
    return model, config


def precision_problem(case: Case) -> str | None:
    """Why this backend cannot run the case's precision, or None. Asked of the backend,
    not of the platform's name: unquantized MoE experts go through mlx's GatherMM, which
    mlx's CPU backend (0.32) runs in float32 only, while Metal and CUDA run bf16 too."""
    if case.quant is not None or case.dtype == "float32" or case.arch not in ARCHS:
        return None
    if not ARCHS[case.arch].moe:
        return None
    problem = gather_mm_problem(case.dtype)
    if problem is None:
        return None
    device = mx.default_device()
    return (
        f"unquantized {case.precision} MoE cannot run on this backend ({device}): "
        f"the experts' GatherMM says: {problem}"
    )


@functools.cache
def gather_mm_problem(dtype: str) -> str | None:
    """What mlx raises for a tiny gather_mm in `dtype` on the default device, or None."""
    kind = getattr(mx, dtype)
    a, b = mx.zeros((1, 1, 2), kind), mx.zeros((2, 2, 2), kind)
    try:
        mx.eval(mx.gather_mm(a, b, rhs_indices=mx.array([0], mx.uint32)))
    except (RuntimeError, ValueError) as exc:
        return str(exc)
    return None


def upcast(model: nn.Module) -> nn.Module:
    """The model with every floating parameter in float32: for a quantized model the same
    quantized values (packed weights stay, bf16 scales and biases are exact in fp32), so
    it computes what the low-precision model approximates (the envelope's truth)."""
    model.update(
        tree_map_with_path(
            lambda _, v: v.astype(mx.float32) if mx.issubdtype(v.dtype, mx.floating) else v,
            model.parameters(),
        )
    )
    mx.eval(model.parameters())
    return model


def _check_precision(case: Case) -> None:
    if case.dtype not in DTYPES:
        raise HarnessError(f"dtype '{case.dtype}' is not one of {', '.join(DTYPES)}")
    if case.quant is not None and case.quant not in QUANT_BITS:
        raise HarnessError(f"quant {case.quant} is not one of {QUANT_BITS} bits")


def _construct(case: Case, config: dict[str, Any]) -> nn.Module:
    model_cls, args_cls = model_classes(config)
    try:
        # from_dict may mutate nested dicts (rope_parameters), so it gets its own copy.
        with model_code():
            return model_cls(args_cls.from_dict(copy.deepcopy(config)))
    except ModelError as wrapped:
        error = wrapped.original
        if not isinstance(error, (TypeError, ValueError, KeyError, AssertionError)):
            raise
        # The registry's own configs build (tests/test_zoo.py), so the overrides broke it.
        raise HarnessError(
            f"mlx-lm cannot build '{case.arch}' with overrides {case.overrides}: {error}"
        ) from error


def _cast(model: nn.Module, dtype: mx.Dtype) -> None:
    # As mlx_lm.convert casts: the model's cast_predicate keeps some parameters
    # (router biases, A_log, hyper-connections) in float32.
    cast_predicate = getattr(model, "cast_predicate", lambda _: True)

    def cast(path: str, value: mx.array) -> mx.array:
        if cast_predicate(path) and mx.issubdtype(value.dtype, mx.floating):
            return value.astype(dtype)
        return value

    model.update(tree_map_with_path(cast, model.parameters()))


def _quantize(model: nn.Module, config: dict[str, Any], group_size: int, bits: int) -> dict:
    # mlx-lm's own path: it honours each model's quant_predicate and handles MLA's
    # MultiLinear, which bare nn.quantize does not. It prints an [INFO] line.
    from mlx_lm.utils import quantize_model

    with contextlib.redirect_stdout(io.StringIO()), model_code():
        _, quantized = quantize_model(model, config, group_size, bits)
    return quantized


def shape_skip_reason(case: Case) -> str | None:
    """Why the case's shape (or scenario) cannot run on its architecture in the installed
    mlx-lm: prompts of different lengths, and every BatchGenerator program, merge caches."""
    if case.layout or case.checkpoint:
        return None
    what = f"the {case.shape} shape"
    if case.scenario is not None:
        what = "the scenario"
        merges = case.scenario["kind"] == SERVE or len(set(case.scenario["prompts"])) > 1
    else:
        merges = len({len(p) for p in case.prompts}) > 1
    problem = _batch_problem(case.arch) if merges else None
    if problem is None and merges and case.scenario is not None:
        problem = _one_token_chunk_problem(case)
    return f"{case.arch} cannot run {what}: {problem}" if problem else None


def _one_token_chunk_problem(case: Case) -> str | None:
    """A padded batch whose prefill (every token but each prompt's last, right-padded, in
    chunks of `prefill_step`: run.rank.forward) has a chunk 1 token wide cannot run on a
    sliding-window cache: mlx-lm's BatchRotatingKVCache takes every 1-token update for a
    decode step and refuses it before `finalize()`."""
    spec = case.scenario
    if spec["kind"] == SERVE:
        return None
    body = max(spec["prompts"]) - 1
    step = spec.get("prefill_step") or body
    if body < 1 or min(step, body - (body - 1) // step * step) != 1:
        return None
    if not _rotating(case.arch):
        return None
    return (
        "mlx-lm's BatchRotatingKVCache takes a 1-token prefill chunk of a padded batch for a "
        "decode step"
    )


@functools.cache
def _rotating(arch: str) -> bool:
    config = tiny_config(Case(arch))

    def probe() -> bool:
        from mlx_lm.models.cache import make_prompt_cache

        model_cls, args_cls = model_classes(config)
        model = model_cls(args_cls.from_dict(copy.deepcopy(config)))
        return any(getattr(c, "max_size", None) for c in make_prompt_cache(model))

    return answers.remembered("rotating", config, probe)


@functools.cache
def _batch_problem(arch: str) -> str | None:
    config = tiny_config(Case(arch))

    def probe() -> str | None:
        # Constructed only (weights stay lazy): the cache types are all that is asked.
        model_cls, args_cls = model_classes(config)
        return unbatchable(model_cls(args_cls.from_dict(copy.deepcopy(config))))

    return answers.remembered("batch", config, probe)


def unbatchable(model: nn.Module) -> str | None:
    """Why mlx-lm cannot batch prompts of different lengths for this model (a cache
    without `merge`), or None."""
    from mlx_lm.models.cache import make_prompt_cache

    for cache in make_prompt_cache(model):
        if not callable(getattr(cache, "merge", None)):
            return f"mlx-lm's {type(cache).__name__} cannot batch prompts of different lengths"
    return None
