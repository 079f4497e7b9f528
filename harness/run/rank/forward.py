"""Running a model on a case's prompts: prefill, greedy decode with a KV cache, per-layer
hidden-state capture, and timings.

Prefill follows mlx-lm. Prompts of one length go the way of `mlx_lm.generate`'s
`generate_step`: with a `prefill_step`, chunks of at most that many tokens while more than
one token is left, then the rest in one call (without one: the whole prompt in one call).
Prompts of different lengths go the way of its `BatchGenerator`: one cache per prompt
merged into a batch cache, all but the last token right-padded and prefilled in chunks
(the caches told the lengths and padding, which masks it), the caches finalized (the
padding rolled to the left), then the last tokens in one call. Each position's logits and
hidden states come from the call that processed it; padding positions are zero.

Decode is greedy, or teacher-forced: fed given tokens (the reference's), so one flipped
argmax does not make every later step incomparable; the run's own choices are kept.

Every request after the first (the timed prefills, or one more when nothing is timed) is a
fresh prefill of the same prompts, the last one decoded too (`LATER_DECODE_STEPS`), each
compared here with the first: only state carried between requests can change its numbers.
What crosses back is the verdict, never the later requests' arrays.

Every model call is evaluated before the next one: under pipeline parallelism a lazy graph
holding several send/recv pairs deadlocks (measured on 2 ranks: README, "What a run does").
"""

from __future__ import annotations

import re
import statistics
import time
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx_lm.models.cache import make_prompt_cache

from harness.errors import HarnessError, harness_code
from harness.models.build import unbatchable
from harness.records.ladder import TOLERANCES, compare_requests
from harness.records.outputs import Output, Timings
from harness.run.rank.patching import wrap_call, wrap_method, wrap_output

# Decode steps of the later request that decodes: the first call of the decode path after
# a prefill and one after a decode step. State an earlier request left behind is read by
# the first call that reads it (every cache and buffer of the decode path by the first
# step, what a decode step writes for the next by the second); each later step of a
# request is compared with the reference in the first request.
LATER_DECODE_STEPS = 2

ATTENTION = re.compile(r"attn|attention|mixer", re.IGNORECASE)
FEEDFORWARD = re.compile(r"mlp|moe|feed_forward|ffn", re.IGNORECASE)


class Recorder:
    """Collects the outputs of decoder layers (and their attention / MLP sub-blocks)
    during the prefill calls, one dict per call. They stay lazy during the call and are
    evaluated with its logits, in one graph (`settle`): evaluating each layer's output as
    it is built would cut the call's graph into as many evaluations as there are taps."""

    def __init__(self) -> None:
        self.active = False
        self.calls: list[dict[str, np.ndarray]] = []
        self._pending: dict[str, mx.array] = {}

    def reset(self) -> None:
        """Forget earlier runs' records: a kept model (run.rank.model_cache) keeps its taps."""
        self.active, self.calls, self._pending = False, [], {}

    def begin(self) -> None:
        self.active = True
        self._pending = {}

    def settle(self, logits: mx.array) -> mx.array:
        """Evaluate a call's logits with what it recorded; keep the records as numpy."""
        mx.eval(logits, *self._pending.values())
        self.calls.append({k: np.array(v) for k, v in self._pending.items()})
        self.active, self._pending = False, {}
        return logits

    def tap(self, module: nn.Module, key: str) -> None:
        wrap_output(module, lambda out: self._record(key, out))

    def tap_router(self, block: nn.Module, gate: nn.Module, key: str) -> None:
        """Record a router's scores over all experts (not only the chosen top-k), by
        position, so a mismatch can be checked against near-ties. Some blocks flatten
        the positions before routing: the block's input gives them back."""
        positions: dict[str, tuple] = {}

        def at_block(call, x, *args, **kwargs):
            positions["shape"] = tuple(x.shape[:-1])
            return call(x, *args, **kwargs)

        def around(call, x, *args, **kwargs):
            out = call(x, *args, **kwargs)
            shape = positions.get("shape")
            if not self.active or not shape:
                return out
            with harness_code():
                self._record_router(block, gate, key, shape, x, out)
            return out

        wrap_call(block, at_block)
        wrap_call(gate, around)

    def _record_router(self, block, gate, key: str, shape: tuple, x: mx.array, out) -> None:
        """A router's scores, its input and the experts it reports choosing, by position."""
        scores = _router_scores(block, gate, x, out)
        if scores is not None and scores.size % _product(shape) == 0:
            self._record(key, scores.reshape(*shape, -1))
            # What the router was fed: a flip is rounding's doing where this is.
            if x.size % _product(shape) == 0:
                self._record(router_input(key), x.reshape(*shape, -1))
        # A gate that returns (indices, weights) says which experts it chose (group-
        # limited routing may choose other than the top-k of the scores).
        chosen = out[0] if isinstance(out, (tuple, list)) else None
        if isinstance(chosen, mx.array) and not mx.issubdtype(chosen.dtype, mx.floating):
            if chosen.size % _product(shape) == 0:
                experts = mx.sort(chosen.reshape(*shape, -1), axis=-1)
                self._record(key.replace(".router.", ".experts."), experts)

    def tap_selection(self, attn: nn.Module, key: str) -> None:
        """Record which keys an attention's own top-k selection lets each query see (an
        indexer's top-k key indices, a block-sparse attention's mask), as a signature per
        position: two runs whose selections differ at a position (a near-tie of the
        indexer's scores rounded the other way) attend to other keys from there on."""
        indexer = attn.get("indexer") if isinstance(attn, dict) else None
        if isinstance(indexer, nn.Module):

            def around(call, x, *args, **kwargs):
                with harness_code():
                    start = _query_start(args, kwargs)  # before the call advances the cache
                out = call(x, *args, **kwargs)
                if self.active:
                    with harness_code():
                        self._record(key, _selected_keys(out, x.shape[:2], start))
                return out

            wrap_call(indexer, around)
        elif callable(getattr(type(attn), "_block_mask", None)):

            def around_mask(call, x, *args, **kwargs):
                keep = call(x, *args, **kwargs)
                if self.active:
                    with harness_code():
                        self._record(key, _selected_mask(keep, x.shape[:2]))
                return keep

            wrap_method(attn, "_block_mask", around_mask)

    def _record(self, key: str, out):
        value = out[0] if isinstance(out, (tuple, list)) else out
        if self.active and isinstance(value, mx.array) and value.ndim == 3:
            self._pending[key] = value.astype(mx.float32)
        return out


ROUTER_NAMES = ("gate", "router")
TOP_K_NAMES = (
    "top_k",
    "num_experts_per_tok",
    "num_experts_per_token",
    "moe_top_k",
    "top_k_experts",
    "k",
)
CORRECTION_NAMES = ("e_score_correction_bias", "router_bias")


# Each selected key index i adds (i * p) % 4093 per prime p: a position's signature is the
# same in two runs exactly when (barring a collision) they selected the same keys; sums of
# up to 2,048 keys stay exact in float32.
_SIGNATURE_PRIMES = (1, 7919, 104729, 1299709)


def _selected_keys(out, positions: tuple, start: int | None) -> mx.array:
    """The signature of an indexer's output: its integer key indices ([B, 1, L, k] or
    [B, L, k], -1 for none; the first integer array of a tuple); zeros where it selected
    nothing of its own (None: every key fits the budget). A query that sees fewer keys than
    the budget picks masked future keys too, arbitrarily: with the queries' `start` among
    the keys, those count as none."""
    found = out if isinstance(out, mx.array) else None
    if isinstance(out, (tuple, list)):
        found = next((o for o in out if isinstance(o, mx.array)), None)
    if isinstance(found, mx.array) and not mx.issubdtype(found.dtype, mx.floating):
        indices = found[:, 0] if found.ndim == 4 and found.shape[1] == 1 else found
        indices = indices.astype(mx.int64)  # argpartition's are unsigned: -1 for none
        if indices.ndim == 3 and tuple(indices.shape[:2]) == tuple(positions):
            if start is not None:
                query = start + mx.arange(positions[1])[None, :, None]
                indices = mx.where(indices > query, -1, indices)
            return _signature(indices, None)
    return mx.zeros((*positions, len(_SIGNATURE_PRIMES)))


def _selected_mask(keep, positions: tuple) -> mx.array:
    """The signature of a block-sparse attention's mask ([B, H, L, keys] booleans): the
    keys any head may see (a tensor-parallel rank holds some of the heads, each selection
    widened to its heads); zeros where it returned no mask of its own (nothing dropped)."""
    B, L = positions
    if not (isinstance(keep, mx.array) and keep.dtype == mx.bool_ and keep.ndim == 4):
        return mx.zeros((B, L, len(_SIGNATURE_PRIMES)))
    if keep.shape[2] != L:
        return mx.zeros((B, L, len(_SIGNATURE_PRIMES)))
    return _signature(keep.any(axis=1), keep.shape[-1])


def _query_start(args: tuple, kwargs: dict) -> int | None:
    """Where an indexer call's queries start among the keys it indexes: its `start_pos`, or
    its cache's place before the call (a batch cache's buffer index); None if unknown."""
    if isinstance(kwargs.get("start_pos"), int):
        return kwargs["start_pos"]
    for value in (*args, *kwargs.values()):
        if not hasattr(value, "update_and_fetch"):
            continue
        for name in ("_idx", "offset"):
            place = getattr(value, name, None)
            if isinstance(place, int):
                return place
    return None


def _signature(selection: mx.array, keys: int | None) -> mx.array:
    """[..., len(primes)] from key indices [..., k] (`keys` None) or a mask [..., keys]."""
    primes = mx.array(_SIGNATURE_PRIMES, dtype=mx.int64)
    if keys is None:
        hashed = (selection.astype(mx.int64)[..., None] * primes) % 4093
        return hashed.sum(axis=-2).astype(mx.float32)
    hashed = (mx.arange(keys, dtype=mx.int64)[:, None] * primes) % 4093
    return selection.astype(mx.float32) @ hashed.astype(mx.float32)


def router_input(router_key: str) -> str:
    """`layer.N.router_in` for `layer.N.router.kK`: the router's input."""
    return router_key.split(".router.")[0] + ".router_in"


def _product(shape: tuple) -> int:
    out = 1
    for n in shape:
        out *= n
    return out


def _router_scores(block: nn.Module, gate: nn.Module, x: mx.array, out) -> mx.array | None:
    """The scores a router ranks its experts by: a linear router's logits (its output, or
    recomputed from its input when it returns (indices, weights): through its own linear
    child, or its raw weight), through a sigmoid plus the score correction where the block
    or the gate keeps one (DeepSeek-style)."""
    # A router that returns (indices, weights) keeps its linear layer as a child (`gate`,
    # longcat's `classifier`) or its raw weight.
    linears = (nn.Linear, nn.QuantizedLinear)
    children = gate.children().values() if isinstance(gate, nn.Module) else ()
    inner = next((c for c in children if isinstance(c, linears)), None)
    weight = getattr(gate, "weight", None)
    if isinstance(out, mx.array) and out.ndim >= 2:
        logits = out
    elif isinstance(inner, nn.Module):
        logits = inner(x)
    elif (
        isinstance(weight, mx.array)
        and weight.ndim == 2
        and mx.issubdtype(weight.dtype, mx.floating)
    ):
        logits = x.astype(mx.float32) @ weight.astype(mx.float32).T
    else:
        return None
    logits = logits.astype(mx.float32)
    for holder in (gate, block):
        correction = next(
            (
                getattr(holder, n)
                for n in CORRECTION_NAMES
                if isinstance(getattr(holder, n, None), mx.array)
            ),
            None,
        )
        if correction is not None and correction.shape[-1] == logits.shape[-1]:
            return mx.sigmoid(logits) + correction.astype(mx.float32)
    return logits


def _top_k(*holders) -> int | None:
    for holder in holders:
        for where in (holder, getattr(holder, "args", None), getattr(holder, "config", None)):
            k = next(
                (
                    getattr(where, a)
                    for a in TOP_K_NAMES
                    if isinstance(getattr(where, a, None), int)
                ),
                None,
            )
            if k:
                return k
    return None


def _router(block: nn.Module) -> tuple[nn.Module, int] | None:
    """The router of an MoE block and its top-k, if the block has one."""
    for name in ROUTER_NAMES:
        gate = block.get(name) if isinstance(block, dict) else None
        if isinstance(gate, nn.Module):
            k = _top_k(block, gate)
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


def install_capture(model: nn.Module) -> Recorder:
    recorder = Recorder()
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
                recorder.tap_selection(child, f"layer.{index}.select")
            elif FEEDFORWARD.search(name) and "mlp" not in tapped:
                tapped.add("mlp")
                recorder.tap(child, f"layer.{index}.mlp")
        # The layer's router wherever its MoE block sits: not always the first block named
        # like one (granitemoehybrid's shared MLP comes first, nemotron_h's MoE is its
        # `mixer`), or the layer itself (gemma4_text keeps `router` and `experts` there).
        blocks = [c for c in layer.children().values() if isinstance(c, nn.Module)]
        found = next(((b, r) for b in (*blocks, layer) if (r := _router(b)) is not None), None)
        if found is not None:
            block, (gate, k) = found
            recorder.tap_router(block, gate, f"layer.{index}.router.k{k}")
        recorder.tap(layer, f"layer.{index}.out")
    return recorder


def _logits(out) -> mx.array:
    mx.eval(out)
    return out


def _timed(call) -> tuple[mx.array, float]:
    start = time.perf_counter()
    out = _logits(call())
    return out, time.perf_counter() - start


@dataclass
class _Call:
    """One prefill call: its input ids and, per column, the prompt position it fills in
    the output (-1: padding)."""

    tokens: mx.array  # [B, n]
    positions: np.ndarray  # [B, n]


def _plan(prompts, prefill_step: int | None) -> tuple[list[_Call], list[int] | None]:
    """The prefill calls of a batch of prompts, and the lengths to prepare a batch cache
    with (None: prompts of one length, no batch cache)."""
    lengths = [len(p) for p in prompts]
    if len(set(lengths)) == 1:
        L = lengths[0]
        spans, start = [], 0
        while prefill_step is not None and L - start > 1:
            n = min(prefill_step, L - start - 1)
            spans.append((start, start + n))
            start += n
        spans.append((start, L))
        calls = [
            _Call(
                mx.array([p[a:b] for p in prompts]),
                np.tile(np.arange(a, b), (len(prompts), 1)),
            )
            for a, b in spans
        ]
        return calls, None
    M = max(lengths) - 1
    step = prefill_step or M
    body = np.array([list(p[:-1]) + [0] * (M - len(p) + 1) for p in prompts])
    filled = np.array([[c if c < n - 1 else -1 for c in range(M)] for n in lengths])
    calls = [
        _Call(mx.array(body[:, a : a + step]), filled[:, a : a + step]) for a in range(0, M, step)
    ]
    calls.append(_Call(mx.array([[p[-1]] for p in prompts]), np.array([[n - 1] for n in lengths])))
    return calls, [n - 1 for n in lengths]


def _batch_cache(model: nn.Module, lengths: list[int]) -> list:
    """mlx-lm's batch cache for right-padded prompts of these lengths: one cache per
    prompt, merged, told each prompt's length and padding (its masks come from them)."""
    problem = unbatchable(model)
    if problem:
        raise HarnessError(problem)
    per_prompt = [make_prompt_cache(model) for _ in lengths]
    merged = [layer[0].merge(list(layer)) for layer in zip(*per_prompt, strict=True)]
    padding = [max(lengths) - n for n in lengths]
    for cache in merged:
        cache.prepare(lengths=lengths, right_padding=padding)
    return merged


def _prefill(
    model: nn.Module,
    calls: list[_Call],
    batched: list[int] | None,
    recorder: Recorder | None = None,
):
    """Run the prefill calls (`batched`: the lengths of a padded batch, else None), each
    call's hidden states into `recorder` when given; returns the cache and each call's
    logits."""
    cache = make_prompt_cache(model) if batched is None else _batch_cache(model, batched)
    logits = []
    for index, call in enumerate(calls):
        if batched is not None and index == len(calls) - 1:
            # BatchGenerator finalizes before the last tokens: the padding moves left.
            for c in cache:
                c.finalize()
        if recorder is None:
            logits.append(_logits(model(call.tokens, cache=cache)))
            continue
        recorder.begin()
        logits.append(recorder.settle(model(call.tokens, cache=cache)))
    return cache, logits


def _place(parts: list[np.ndarray], calls: list[_Call], L: int) -> np.ndarray:
    """Each call's [B, n, ...] values at their prompt positions of a zeroed [B, L, ...]."""
    B = parts[0].shape[0]
    out = np.zeros((B, L, *parts[0].shape[2:]), dtype=parts[0].dtype)
    for part, call in zip(parts, calls, strict=True):
        rows, cols = np.nonzero(call.positions >= 0)
        out[rows, call.positions[rows, cols]] = part[rows, cols]
    return out


def _placed_states(recorder: Recorder, calls: list[_Call], L: int) -> dict[str, np.ndarray]:
    """Hidden states by prompt position: the keys every call recorded with one row per
    input column (a block that changes the sequence length cannot be placed)."""
    keys = set.intersection(*(set(c) for c in recorder.calls)) if recorder.calls else set()
    fits = [
        k
        for k in keys
        if all(
            rec[k].shape[:2] == call.positions.shape
            for rec, call in zip(recorder.calls, calls, strict=True)
        )
    ]
    return {k: _place([rec[k] for rec in recorder.calls], calls, L) for k in sorted(fits)}


def _call_map(calls: list[_Call], L: int) -> np.ndarray | None:
    """[B, L]: the index of the prefill call that produced each position, -1 for padding;
    None for a single call without padding (nothing to tell)."""
    B = calls[0].positions.shape[0]
    if len(calls) == 1 and calls[0].positions.shape == (B, L):
        return None
    out = np.full((B, L), -1, dtype=np.int32)
    for index, call in enumerate(calls):
        rows, cols = np.nonzero(call.positions >= 0)
        out[rows, call.positions[rows, cols]] = index
    return out


def run(
    model: nn.Module,
    prompts,
    decode_steps: int,
    capture: bool = True,
    repeats: int = 3,
    prefill_step: int | None = None,
    forced: np.ndarray | None = None,
    requests: bool = False,
    prefill_repeats: int | None = None,
    recorder: Recorder | None = None,
) -> tuple[Output, Timings | None]:
    """Prefill on the prompts, then `decode_steps` decode steps with the KV cache (greedy,
    or fed `forced[:, s]` at step s: [B, >= decode_steps] token ids); unless `repeats` is
    0, prefill and decode throughput (the prefill timed `prefill_repeats` times, default
    `repeats`, at most `repeats`). `Output.requests` says how each later request (the
    timed prefills; with `requests`, at least one, the last decoded `LATER_DECODE_STEPS`
    steps too) compared with the first. `recorder`: the capture a kept model already has.

    The compared calls double as timing samples, so a case costs few extra model calls
    (each costs collectives on real ranks): the captured prefill and the first decode
    step are the warm-ups, later decode steps are decode samples (extra uncompared steps
    make up `repeats`), and the later requests' fresh prefills, about `repeats` calls in
    all, are the prefill samples.
    """
    if prefill_step is not None and prefill_step < 1:
        raise HarnessError(f"prefill_step must be at least 1, got {prefill_step}")
    B = len(prompts)
    if forced is not None and (forced.shape[0] != B or forced.shape[1] < decode_steps):
        forced = None  # not this case's reference (another batch): decode greedily
    if capture:
        # A kept model comes with the taps installed when it was first captured.
        recorder = recorder or install_capture(model)
        recorder.reset()
    else:
        recorder = None
    calls, batched = _plan(prompts, prefill_step)
    lengths = [len(p) for p in prompts]
    L = max(lengths)
    cache, parts = _prefill(model, calls, batched, recorder)
    prefill = _place([_as_np(p) for p in parts], calls, L)
    last = mx.array(prefill[np.arange(B), np.array(lengths) - 1])
    own, fed = [mx.argmax(last, axis=-1)], []
    steps, decode_samples = [], []
    for s in range(decode_steps):
        fed.append(mx.array(forced[:, s]) if forced is not None else own[-1])
        logits, seconds = _timed(lambda: model(fed[-1][:, None], cache=cache))
        steps.append(logits[:, -1, :])
        own.append(mx.argmax(steps[-1], axis=-1))
        decode_samples.append(seconds)
    V = prefill.shape[-1]
    decode = np.stack([_as_np(s) for s in steps]) if steps else np.zeros((0, B, V), np.float32)
    output = Output(
        prefill=prefill,
        decode=decode,
        tokens=np.stack([np.array(g) for g in own], axis=1).astype(np.int64),
        layers=_placed_states(recorder, calls, L) if recorder else {},
        prefill_calls=_call_map(calls, L),
        forced=forced is not None,
    )
    if repeats:
        while len(decode_samples) < repeats + 1:
            _, seconds = _timed(lambda: model(own[-1][:, None], cache=cache))
            decode_samples.append(seconds)
    # The count of timed prefill calls: a chunked prefill (several calls, each with its
    # collectives) is timed whole fewer times, at least once; untimed, one request.
    timed_calls = repeats if prefill_repeats is None else min(prefill_repeats, repeats)
    later = max(1, timed_calls // len(calls)) if repeats or requests else 0
    prefill_samples = []
    for number in range(2, later + 2):
        start = time.perf_counter()
        again, again_parts = _prefill(model, calls, batched)
        prefill_samples.append(time.perf_counter() - start)
        # The last request decodes too (a second generation) where requests are compared;
        # the others, and a reference's timed prefills, are prefills.
        decoded = fed[:LATER_DECODE_STEPS] if requests and number == later + 1 else []
        again_steps = [_as_np(model(t[:, None], cache=again)[:, -1, :]) for t in decoded]
        repeat = Output(
            _place([_as_np(p) for p in again_parts], calls, L),
            np.stack(again_steps) if again_steps else np.zeros((0, B, V), np.float32),
            output.tokens,
            prefill_calls=output.prefill_calls,
            forced=True,
        )
        output.requests.append(compare_requests(output, repeat, number, TOLERANCES["fp32"]))
    if not repeats:
        return output, None
    decode_samples = decode_samples[1 : repeats + 1]
    timings = Timings(
        prefill_tok_s=sum(lengths) / statistics.median(prefill_samples),
        decode_tok_s=B / statistics.median(decode_samples),
        prefill_samples=prefill_samples,
        decode_samples=decode_samples,
        peak_memory=int(mx.get_peak_memory()),
    )
    return output, timings


def _as_np(a: mx.array) -> np.ndarray:
    return np.array(a.astype(mx.float32))
