"""Running a model on a case's prompts: prefill, greedy decode with a KV cache, per-layer
hidden-state capture, and timings.

Every model call is evaluated before the next one: under pipeline parallelism a lazy graph
holding several send/recv pairs deadlocks (measured on 2 ranks, see DESIGN.md).
"""

from __future__ import annotations

import re
import statistics
import time

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx_lm.models.cache import make_prompt_cache

from harness.records.outputs import Output, Timings
from harness.run.patching import wrap_call, wrap_output

ATTENTION = re.compile(r"attn|attention|mixer", re.IGNORECASE)
FEEDFORWARD = re.compile(r"mlp|moe|feed_forward|ffn", re.IGNORECASE)


class _Recorder:
    """Collects the outputs of decoder layers (and their attention / MLP sub-blocks)
    during the first model call only: the prefill."""

    def __init__(self) -> None:
        self.active = False
        self.states: dict[str, np.ndarray] = {}

    def tap(self, module: nn.Module, key: str) -> None:
        wrap_output(module, lambda out: self._record(key, out))

    def tap_router(self, gate: nn.Module, key: str) -> None:
        """Record a router's scores over all experts (not only the chosen top-k), so a
        mismatch can be checked against near-ties."""

        def around(call, x, *args, **kwargs):
            out = call(x, *args, **kwargs)
            if self.active:
                scores = _router_scores(gate, x, out)
                if scores is not None:
                    self._record(key, scores)
            return out

        wrap_call(gate, around)

    def _record(self, key: str, out):
        value = out[0] if isinstance(out, (tuple, list)) else out
        if self.active and isinstance(value, mx.array) and value.ndim == 3:
            self.states[key] = np.array(value.astype(mx.float32))
        return out


ROUTER_NAMES = ("gate", "router")
TOP_K_NAMES = ("top_k", "num_experts_per_tok")


def _router_scores(gate: nn.Module, x: mx.array, out) -> mx.array | None:
    """Linear routers return their logits; gate modules that return (indices, scores)
    get their logits recomputed from the input (plus DeepSeek-style score correction)."""
    if isinstance(out, mx.array) and out.ndim == 3:
        return out
    weight = getattr(gate, "weight", None)
    if (
        not isinstance(weight, mx.array)
        or weight.ndim != 2
        or not mx.issubdtype(weight.dtype, mx.floating)
    ):
        return None
    logits = x.astype(mx.float32) @ weight.astype(mx.float32).T
    correction = getattr(gate, "e_score_correction_bias", None)
    if isinstance(correction, mx.array):
        return mx.sigmoid(logits) + correction.astype(mx.float32)
    return logits


def _router(block: nn.Module) -> tuple[nn.Module, int] | None:
    """The router of an MoE block and its top-k, if the block has one."""
    for name in ROUTER_NAMES:
        gate = block.get(name) if isinstance(block, dict) else None
        if isinstance(gate, nn.Module):
            for holder in (block, gate):
                k = next(
                    (
                        getattr(holder, a)
                        for a in TOP_K_NAMES
                        if isinstance(getattr(holder, a, None), int)
                    ),
                    None,
                )
                if k:
                    return gate, k
    return None


def decoder_layers(model: nn.Module) -> list:
    """The model's decoder layers by global index; None where a pipeline rank holds none."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None:
        layers = getattr(model, "layers", [])
    return list(layers)


def install_capture(model: nn.Module) -> _Recorder:
    recorder = _Recorder()
    for index, layer in enumerate(decoder_layers(model)):
        if not isinstance(layer, nn.Module):
            continue
        tapped = set()
        # The first child whose name matches is the sub-block (kimi_k3 also has a
        # `self_attention_res_proj` after its `self_attn`).
        for name, child in layer.children().items():
            if not isinstance(child, nn.Module):
                continue
            if ATTENTION.search(name) and "attn" not in tapped:
                tapped.add("attn")
                recorder.tap(child, f"layer.{index}.attn")
            elif FEEDFORWARD.search(name) and "mlp" not in tapped:
                tapped.add("mlp")
                recorder.tap(child, f"layer.{index}.mlp")
                router = _router(child)
                if router is not None:
                    recorder.tap_router(router[0], f"layer.{index}.router.k{router[1]}")
        recorder.tap(layer, f"layer.{index}.out")
    return recorder


def _logits(out) -> mx.array:
    mx.eval(out)
    return out


def _timed(call) -> tuple[mx.array, float]:
    start = time.perf_counter()
    out = _logits(call())
    return out, time.perf_counter() - start


def run(
    model: nn.Module, prompts, decode_steps: int, capture: bool = True, repeats: int = 3
) -> tuple[Output, Timings | None]:
    """Prefill on the prompts, then `decode_steps` greedy steps with the KV cache; and,
    unless `repeats` is 0, prefill and decode throughput.

    The compared calls double as timing samples, so a case costs few extra model calls
    (each costs collectives on real ranks): the captured prefill and the first decode
    step are the warm-ups, later decode steps are decode samples (extra uncompared steps
    make up `repeats`), and `repeats` fresh prefills are the prefill samples.
    """
    recorder = install_capture(model) if capture else None
    tokens = mx.array(prompts)
    cache = make_prompt_cache(model)
    if recorder:
        recorder.active = True
    prefill = _logits(model(tokens, cache=cache))
    if recorder:
        recorder.active = False
    steps, greedy, decode_samples = [], [mx.argmax(prefill[:, -1, :], axis=-1)], []
    for _ in range(decode_steps):
        logits, seconds = _timed(lambda: model(greedy[-1][:, None], cache=cache))
        steps.append(logits[:, -1, :])
        greedy.append(mx.argmax(steps[-1], axis=-1))
        decode_samples.append(seconds)
    as_np = lambda a: np.array(a.astype(mx.float32))  # noqa: E731
    B, V = prefill.shape[0], prefill.shape[-1]
    decode = np.stack([as_np(s) for s in steps]) if steps else np.zeros((0, B, V), np.float32)
    output = Output(
        prefill=as_np(prefill),
        decode=decode,
        tokens=np.stack([np.array(g) for g in greedy], axis=1).astype(np.int64),
        layers=recorder.states if recorder else {},
    )
    if not repeats:
        return output, None
    while len(decode_samples) < repeats + 1:
        _, seconds = _timed(lambda: model(greedy[-1][:, None], cache=cache))
        decode_samples.append(seconds)
    prefill_samples = [
        _timed(lambda: model(tokens, cache=make_prompt_cache(model)))[1] for _ in range(repeats)
    ]
    decode_samples = decode_samples[1 : repeats + 1]
    timings = Timings(
        prefill_tok_s=B * tokens.shape[1] / statistics.median(prefill_samples),
        decode_tok_s=B / statistics.median(decode_samples),
        prefill_samples=prefill_samples,
        decode_samples=decode_samples,
        peak_memory=int(mx.get_peak_memory()),
    )
    return output, timings
