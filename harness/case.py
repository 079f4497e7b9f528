"""A case: one model configuration run under one sharding strategy.

The case key names what the numbers depend on (architecture, config, weights, precision,
prompts, decode steps, checkpoint layout) and never the parallel layout, so a tp=2 run and
a pp=4 run of the same case compare against the same single-rank reference and golden.

Prompts are token ids (`prompts`), or text (`prompt_text`) for a case with a checkpoint or
layout: tokenized with that checkpoint's tokenizer, which then replaces `prompts`. Prompts
of different lengths are a padded batch; `prefill_step` prefills in chunks of that many
tokens; a shape profile (`harness.shapes`) sets prompts, prefill_step and decode_steps.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import asdict, dataclass, field, fields

from harness import scenario as scenarios
from harness.errors import HarnessError
from harness.shapes import CUSTOM, DEFAULT, DEFAULT_PROMPTS, shape_of

DTYPES = ("float32", "bfloat16", "float16")
# A 2,100-token prefill of a tiny MoE takes 3-5 s on 2 idle cores and 8x that with the
# cores shared 8 ways; the short shapes' cases take milliseconds.
WATCHDOG_TOKENS = 256
QUANT_BITS = (4, 8)


@dataclass(frozen=True)
class Case:
    arch: str
    strategy: str = "tp"
    dtype: str = "float32"
    quant: int | None = None
    group_size: int = 32
    seed: int = 0
    prompts: tuple[tuple[int, ...], ...] = DEFAULT_PROMPTS
    prompt_text: tuple[str, ...] = ()
    decode_steps: int = 4
    overrides: dict = field(default_factory=dict, hash=False, compare=False)
    layout: str | None = None
    checkpoint: str | None = None
    tolerance: dict = field(default_factory=dict, hash=False, compare=False)
    prefill_step: int | None = None  # None: the whole prompt in one prefill call
    # Why the case cannot pass with the installed mlx-lm (an upstream bug, with its
    # evidence in the suite): reported as a skip with that reason, not run.
    known_failure: str | None = field(default=None, hash=False, compare=False)
    # What the case runs instead of its prompts and decode steps (harness.scenario): a
    # batch of many rows, or a program for mlx-lm's BatchGenerator. None: the fixed shapes.
    scenario: dict | None = field(default=None, hash=False)

    def __post_init__(self) -> None:
        if self.scenario is not None:
            object.__setattr__(self, "scenario", scenarios.check(self.scenario))

    @property
    def shape(self) -> str:
        """The shape profile the case runs at (`short`, `long-chunked`, ...) or `custom`
        (a scenario's shapes are its own)."""
        if self.scenario is not None:
            return CUSTOM
        return shape_of(self.prompts, self.decode_steps, self.prefill_step)

    @property
    def precision(self) -> str:
        """`fp32`, `bf16`, `q4`, `q4-bf16`: the precision label shown in tables."""
        short = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}[self.dtype]
        if self.quant is None:
            return short
        return f"q{self.quant}" + ("" if self.dtype == "float32" else f"-{short}")

    @property
    def low_precision(self) -> bool:
        """Activations in bf16 or fp16: judged against an fp32 truth of the same weights
        (records.envelope), and kept out of goldens: bf16's rounding differs from one
        backend's kernels to another's by more than any fixed tolerance a golden has."""
        return self.dtype != "float32"

    @property
    def variant(self) -> str:
        """What distinguishes this case from the plain arch besides precision."""
        parts = []
        if self.overrides:
            parts.append(",".join(f"{k}={v}" for k, v in sorted(self.overrides.items())))
        if self.layout:
            parts.append(f"layout={self.layout}")
        if self.checkpoint:
            parts.append(f"ckpt={self.checkpoint}")
        if self.prompt_text:
            parts.append("text")
        if self.seed:
            parts.append(f"seed={self.seed}")
        if self.scenario is not None:
            parts.append(scenarios.label(self.scenario))
            return ";".join(parts)
        # A custom shape shows in its prompts and steps; only profiles are named.
        if self.shape not in (DEFAULT, CUSTOM):
            parts.append(f"shape={self.shape}")
        return ";".join(parts) or "base"

    def key(self) -> str:
        """Stable identity of the numbers this case produces, without the parallel layout."""
        ident = {
            "arch": self.arch,
            "dtype": self.dtype,
            "quant": self.quant,
            "group_size": self.group_size if self.quant else None,
            "seed": self.seed,
            "prompts": [list(p) for p in self.prompts],
            "decode_steps": self.decode_steps,
            "overrides": self.overrides,
            "layout": self.layout,
            "checkpoint": self.checkpoint,
        }
        # Only when set, so cases without text prompts keep the keys their goldens have.
        if self.prompt_text:
            ident["prompt_text"] = list(self.prompt_text)
        if self.prefill_step is not None:
            ident["prefill_step"] = self.prefill_step
        if self.scenario is not None:
            ident["scenario"] = scenarios.canonical(self.scenario)
        digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:12]
        return f"{self.arch}-{self.precision}-{digest}"

    def label(self) -> str:
        return f"{self.arch}/{self.variant}/{self.precision}/{self.strategy}"

    @property
    def watchdog_scale(self) -> int:
        """How many times `--timeout` (seconds per case) the case may take: one per
        WATCHDOG_TOKENS of its longest prompt, so a hang still ends a long case, later."""
        longest = max((len(p) for p in self.prompts), default=0)
        if self.scenario is not None:
            longest = scenarios.work(self.scenario)
        return max(1, -(-longest // WATCHDOG_TOKENS))

    def check_context(self, config: dict) -> None:
        """The longest prompt plus the decode steps must fit the model's context, when its
        config states one: past it, positions mean nothing the model was built for."""
        context = _context(config)
        if self.scenario is not None:
            total = scenarios.extent(self.scenario)
            if context and total > context:
                raise HarnessError(
                    f"{self.label()}: the scenario's longest sequence holds {total} tokens "
                    f"(prompt plus decode), more than the model's context of {context} "
                    "(max_position_embeddings)"
                )
            return
        longest = max((len(p) for p in self.prompts), default=0)
        total = longest + self.decode_steps
        if context and not self.prompt_text and total > context:
            raise HarnessError(
                f"{self.label()}: a prompt of {longest} tokens plus {self.decode_steps} decode "
                f"steps is {total} tokens, more than the model's context of {context} "
                "(max_position_embeddings)"
            )

    def to_dict(self) -> dict:
        data = asdict(self)
        data["prompts"] = [list(p) for p in self.prompts]
        data["prompt_text"] = list(self.prompt_text)
        if self.scenario is None:
            # Kept out when unset, so cases without one keep their sidecars' dicts.
            del data["scenario"]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> Case:
        """A case from its dict; unknown keys (a newer harness's, in a golden's sidecar) are
        dropped with a warning, as mlx-lm's `from_dict` ignores unknown config keys."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            warnings.warn(
                f"case fields not known to this harness ignored: {', '.join(unknown)}", stacklevel=2
            )
        data = {k: v for k, v in data.items() if k in known}
        data["prompts"] = tuple(tuple(p) for p in data.get("prompts", DEFAULT_PROMPTS))
        data["prompt_text"] = tuple(data.get("prompt_text", ()))
        return cls(**data)


def _context(config: dict) -> int | None:
    """The model's context length as its config states it (a VLM's in its text_config)."""
    text = config.get("text_config") or {}
    return config.get("max_position_embeddings") or text.get("max_position_embeddings")


# batch_generate's BatchGenerator decodes at most `completion_batch_size` (32) sequences at
# once and queues the rest: a larger batch times several waves, not one batch.
MAX_BENCH_BATCH = 32


@dataclass(frozen=True)
class BenchCase:
    """A case's model under its strategy, timed through mlx-lm's generation path at the
    shapes users quote. The defaults are `mlx_lm.benchmark`'s flags (mlx-lm 0.32.2: -p 512
    -g 1024 -b 1 -n 5 --prefill-step-size 2048, one warm-up), so a `harness bench` number
    can be checked by hand with the same command line."""

    case: Case  # the model (arch, precision, layout or checkpoint) and the strategy
    prompt_tokens: int = 512
    generation_tokens: int = 1024
    batch_size: int = 1
    prefill_step_size: int = 2048
    num_trials: int = 5
    warmup: int = 1

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
        if self.batch_size > MAX_BENCH_BATCH:
            raise HarnessError(
                f"--batch-size {self.batch_size} is more than the {MAX_BENCH_BATCH} sequences "
                "mlx-lm's batch_generate decodes at once (it would time several waves)"
            )

    def check_context(self, config: dict) -> None:
        """Prompt plus generation must fit the model's context, when its config states one."""
        context = _context(config)
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
