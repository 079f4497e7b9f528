"""A bench case: one model under one strategy, timed through mlx-lm's generation path at
the shapes users quote (prompt tokens, generation tokens, batch size, prefill step size).

The defaults are `mlx_lm.benchmark`'s flags (mlx-lm 0.32.2), so a `harness bench` number
can be checked by hand with the same command line.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

from harness.case import Case
from harness.errors import HarnessError

# mlx_lm.benchmark's defaults: -p 512 -g 1024 -b 1 -n 5 --prefill-step-size 2048, one
# warm-up generation before the timed trials.
PROMPT_TOKENS = 512
GENERATION_TOKENS = 1024
BATCH_SIZE = 1
PREFILL_STEP_SIZE = 2048
NUM_TRIALS = 5
WARMUP = 1
# batch_generate's BatchGenerator decodes at most `completion_batch_size` (32) sequences at
# once and queues the rest: a larger batch times several waves, not one batch.
MAX_BATCH_SIZE = 32


@dataclass(frozen=True)
class BenchCase:
    case: Case  # the model (arch, precision, layout or checkpoint) and the strategy
    prompt_tokens: int = PROMPT_TOKENS
    generation_tokens: int = GENERATION_TOKENS
    batch_size: int = BATCH_SIZE
    prefill_step_size: int = PREFILL_STEP_SIZE
    num_trials: int = NUM_TRIALS
    warmup: int = WARMUP

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Lengths and counts that cannot be timed: one sentence naming the flag."""
        for flag, value, least in (
            ("--prompt-tokens", self.prompt_tokens, 1),
            ("--generation-tokens", self.generation_tokens, 1),
            ("--batch-size", self.batch_size, 1),
            ("--prefill-step-size", self.prefill_step_size, 1),
            ("--num-trials", self.num_trials, 1),
            ("--warmup", self.warmup, 0),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise HarnessError(f"{flag} must be an integer of at least {least}, got {value!r}")
        if self.batch_size > MAX_BATCH_SIZE:
            raise HarnessError(
                f"--batch-size {self.batch_size} is more than the {MAX_BATCH_SIZE} sequences "
                "mlx-lm's batch_generate decodes at once (it would time several waves)"
            )

    def check_context(self, config: dict) -> None:
        """Prompt plus generation must fit the model's context, when its config states one."""
        text = config.get("text_config") or {}
        context = config.get("max_position_embeddings") or text.get("max_position_embeddings")
        total = self.prompt_tokens + self.generation_tokens
        if context and total > context:
            raise HarnessError(
                f"{self.case.arch}: --prompt-tokens {self.prompt_tokens} plus "
                f"--generation-tokens {self.generation_tokens} is {total} tokens, more than "
                f"the model's context of {context} (max_position_embeddings)"
            )

    def shapes(self) -> dict:
        return {
            "prompt_tokens": self.prompt_tokens,
            "generation_tokens": self.generation_tokens,
            "batch_size": self.batch_size,
            "prefill_step_size": self.prefill_step_size,
        }

    def key(self) -> str:
        """The model's case key (never the strategy or rank count) plus the shapes: runs
        of the same key are the same work, so their tok/s compare across runs."""
        digest = hashlib.sha256(json.dumps(self.shapes(), sort_keys=True).encode()).hexdigest()
        return f"{self.case.key()}-{digest[:8]}"

    def label(self) -> str:
        return (
            f"{self.case.arch}/{self.case.variant}/{self.case.precision} "
            f"p{self.prompt_tokens} g{self.generation_tokens} b{self.batch_size}"
        )

    def to_dict(self) -> dict:
        data = {k: v for k, v in asdict(self).items() if k != "case"}
        return {**data, "case": self.case.to_dict()}

    @classmethod
    def from_dict(cls, data: dict) -> BenchCase:
        data = dict(data)
        return cls(case=Case.from_dict(data.pop("case")), **data)
