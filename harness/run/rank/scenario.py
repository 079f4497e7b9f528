"""A scenario case (harness.scenario) on one rank: a batch through forward's prefill and
decode (mlx-lm's batch padding and chunked prefill, every position captured), a serve
program through mlx-lm's own BatchGenerator (run.rank.serving). Untimed: a scenario is
drawn to find bugs, and its shapes are not a series anyone tracks."""

from __future__ import annotations

import numpy as np

from harness import scenario as scenarios
from harness.case import Case
from harness.errors import model_code
from harness.records.outputs import Output
from harness.run.rank import forward, serving
from harness.run.rank.model_cache import Built


def run(built: Built, case: Case, capture: bool, forced: np.ndarray | None) -> Output:
    """The case's scenario on its kept model, decode fed `forced` (the reference's tokens)
    when given; a batch captures every layer when `capture` (a serve program never: its
    rows come and go between calls). What mlx-lm's code raises is the model's."""
    spec = case.scenario
    if spec["kind"] == scenarios.SERVE:
        return serving.run(built.model, spec, case.seed, forced)
    prompts = [scenarios.prompt(case.seed, row, n) for row, n in enumerate(spec["prompts"])]
    with model_code():
        output, _ = forward.run(
            built.model,
            prompts,
            spec["decode"],
            capture,
            repeats=0,
            prefill_step=spec["prefill_step"],
            forced=forced,
            recorder=built.capture() if capture else None,
        )
    return output
