"""One case on one rank: build a fresh model, shard it, run it, time it."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from harness.case import Case
from harness.errors import HarnessError, model_code
from harness.models import checkpoint
from harness.models.build import build_model
from harness.models.checkpoint.load import case_checkpoint
from harness.models.checkpoint.prompts import tokenize_prompts
from harness.run.rank import forward
from harness.strategies import resolve


def run_case(
    case: Case, group, capture: bool = True, repeats: int = 3
) -> tuple[forward.Output, forward.Timings | None]:
    """Build the case's model fresh (strategies may patch classes), apply the strategy
    for `group` (None: unsharded reference), run it, and time it unless `repeats` is 0."""
    model = sharded_model(case, group)
    prompts = case_prompts(case)
    mx.reset_peak_memory()
    with model_code():
        return forward.run(model, prompts, case.decode_steps, capture, repeats, case.prefill_step)


def sharded_model(case: Case, group) -> nn.Module:
    """The case's model built fresh and sharded by its strategy for `group` (None: the
    unsharded model), evaluated; what the strategy raises is the model's (`ModelError`)."""
    model = model_for_case(case, group)
    if group is not None and not checkpoint.sharded_by_loader(case):
        strategy = resolve(case.strategy)
        with model_code():
            model = strategy.apply(model, group)
            mx.eval(model.parameters())
    return model


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
