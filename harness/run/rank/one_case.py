"""One case on one rank: build the model (or take the job's kept one), shard it, run it,
time it."""

from __future__ import annotations

import json
import traceback

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from harness.case import Case
from harness.errors import HarnessError, ModelError, blame, model_code
from harness.models import checkpoint
from harness.models.build import build_model, upcast
from harness.models.checkpoint.load import case_checkpoint
from harness.models.checkpoint.prompts import tokenize_prompts
from harness.run.protocol import gather_bytes
from harness.run.rank import forward, model_cache, scenario
from harness.shapes import SHAPES, get_shape
from harness.strategies import resolve


def run_case(
    case: Case,
    group,
    capture: bool = True,
    repeats: int = 3,
    forced: np.ndarray | None = None,
    requests: bool = False,
    prefill_repeats: int | None = None,
) -> tuple[forward.Output, forward.Timings | None]:
    """Take the case's model (built and sharded by its strategy for `group`, None: the
    unsharded reference; kept across cases of the same build, run.rank.model_cache), run
    it (decode fed `forced`, the reference's tokens, when given), time it unless
    `repeats` is 0 (or its shape is untimed; its prefill `prefill_repeats` times when
    given), and with `requests` run and compare at least one later request (forward.run).
    A scenario case runs its scenario instead, untimed (run.rank.scenario)."""
    role = model_cache.REFERENCE if group is None else model_cache.SHARDED
    built = kept_model(case, group, role)
    capture = capture or case.low_precision  # its verdict needs the routing (records.envelope)
    if case.scenario is not None:
        return scenario.run(built, case, capture, forced), None
    prompts = case_prompts(case)
    mx.reset_peak_memory()
    repeats = repeats if timed(case) else 0
    with model_code():
        return forward.run(
            built.model,
            prompts,
            case.decode_steps,
            capture,
            repeats,
            case.prefill_step,
            forced,
            requests,
            prefill_repeats,
            recorder=built.capture() if capture else None,
        )


def timed(case: Case) -> bool:
    """Whether the case's shape is timed (a 2,100-token prefill is not: `harness bench`
    times long prompts as users quote them)."""
    return get_shape(case.shape).timed if case.shape in SHAPES else True


def run_truth(case: Case, forced: np.ndarray, capture: bool = True) -> forward.Output:
    """For a low-precision case (`Case.low_precision`): its unsharded model with every
    weight upcast to float32 (the same quantized values), decode fed the reference's
    tokens: the truth the low-precision runs approximate."""
    built = kept_model(case, None, model_cache.TRUTH)
    capture = capture or case.low_precision
    if case.scenario is not None:
        return scenario.run(built, case, capture, forced)
    with model_code():
        output, _ = forward.run(
            built.model,
            case_prompts(case),
            case.decode_steps,
            capture,
            0,
            case.prefill_step,
            forced,
            recorder=built.capture() if capture else None,
        )
    return output


def kept_model(case: Case, group, role: str) -> model_cache.Built:
    """The case's model in `role` (sharded for `group`, the single-rank reference, or its
    fp32 truth), built once per build and kept while its code is unchanged. A sharded
    model is reused only where every rank still keeps it (one all_sum of a flag), so the
    ranks build, and agree over the strategy, in step."""
    key = model_cache.build_key(case, role, group.size() if group is not None else 0)
    built = model_cache.kept(key)
    if role == model_cache.SHARDED and group is not None:
        everywhere = mx.distributed.all_sum(mx.array(int(built is not None)), group=group)
        if int(everywhere.item()) < group.size():
            built = None
    if built is not None:
        return built
    if role == model_cache.TRUTH:
        return model_cache.keep(key, upcast(sharded_model(case, None)))
    return model_cache.keep(key, sharded_model(case, group))


class ShardingFailed(Exception):
    """The strategy raised while sharding, on some ranks or all, and every rank knows it:
    they agreed over the group before the model's first collective, so they are still in
    step and the job goes on with its next case (no relaunch)."""

    def __init__(self, failures: list[dict]):
        super().__init__("; ".join(f"rank {f['rank']} {f['reason']}" for f in failures))
        self.failures = failures  # each: rank, status, reason, traceback


def sharded_model(case: Case, group) -> nn.Module:
    """The case's model built fresh and sharded by its strategy for `group` (None: the
    unsharded model), evaluated. What the strategy raises is the model's: `ShardingFailed`
    on every rank (see `_agree`)."""
    model = model_for_case(case, group)
    if group is not None and not checkpoint.sharded_by_loader(case):
        strategy = resolve(case.strategy)
        failure = None
        try:
            with model_code():
                model = strategy.apply(model, group)
                mx.eval(model.parameters())
        except ModelError as exc:
            failure = exc
        _agree(failure, group)
    return model


def _agree(failure: ModelError | None, group) -> None:
    """Raise `ShardingFailed` on every rank when the strategy raised on any: one all_sum
    of a flag (what a case that shards cleanly pays), then, only after a failure, every
    rank's words. Sharding runs no collective of the model, so a rank that raised there
    and its peers meet here, at the same collective."""
    raised = mx.distributed.all_sum(mx.array(int(failure is not None)), group=group)
    if int(raised.item()) == 0:
        return
    words = b""
    if failure is not None:
        status, reason = blame(failure)
        detail = "".join(traceback.format_exception(failure.original))[-2000:]
        words = json.dumps(
            {"rank": group.rank(), "status": status, "reason": reason, "traceback": detail}
        ).encode()
    raise ShardingFailed([json.loads(w) for w in gather_bytes(words, group) if w])


def case_prompts(case: Case) -> tuple[tuple[int, ...], ...]:
    """The case's token ids: its text prompts tokenized by its checkpoint's tokenizer."""
    if not case.prompt_text:
        return case.prompts
    if not (case.layout or case.checkpoint):
        raise HarnessError(f"{case.label()}: text prompts need a checkpoint or layout")
    return tokenize_prompts(case_checkpoint(case), case.prompt_text)


def model_for_case(case: Case, group) -> nn.Module:
    # A layout or checkpoint loads through mlx-lm's real loaders, which apply the
    # built-in tp / pp themselves (sharded_load); the zoo model is built in memory.
    if case.layout or case.checkpoint:
        return checkpoint.load_for_case(case, group)
    model, _ = build_model(case)
    return model
