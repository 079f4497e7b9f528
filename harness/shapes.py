"""Shape profiles: the named input shapes a case can run at (batch size, prompt lengths,
prefill chunking, decode steps), chosen so the zoo's tiny configs reach the boundaries
where real sharding bugs hide (the README's "Shapes"):

- `short`: today's shape, two 8-token prompts in one prefill call, 4 decode steps;
- `single-stream`: batch 1, the shape most users run;
- `long-chunked`: one 40-token prompt prefilled in chunks of 32 the way
  `mlx_lm.generate` does it (32, 7, then the last token), so a chunk of 32 tokens x top-2
  reaches SwitchGLU's sorted path (it sorts at 64 token-expert pairs and more) and later
  chunks run against a filled cache; 6 decode steps past the zoo's windows of 4;
- `window`: two 3-token prompts decoded 8 steps, so rotating caches wrap during decode;
- `mixed`: prompts of 11 and 5 tokens, right-padded and chunked by 4 the way mlx-lm's
  batch generation prefills them, then decoded left-padded with masks;
- `long-prompt`: one prompt of 300 tokens in chunks of 256 (a few hundred tokens: the
  default suite's long prompt);
- `past-prefill-step`: one prompt of 2,100 tokens in chunks of 2,048, mlx-lm's default
  `prefill_step_size`, as `mlx_lm.generate` prefills it (2048, 51, then 1): what breaks
  only past one prefill step (mlx's corrupted tensor parallel past ~2048 tokens, exo's
  collective sized for decode that overruns on a long prefill). Nightly: it costs seconds.

The token ids are deterministic and below the zoo's vocabulary of 256. A profile sets
`prompts`, `prefill_step` and `decode_steps` of a case; its name is not part of the case
key, the numbers it sets are (`short` sets today's values, so its keys are today's).
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.errors import HarnessError

DEFAULT_PROMPTS: tuple[tuple[int, ...], ...] = (
    (1, 17, 42, 99, 7, 250, 31, 64),
    (5, 200, 13, 77, 128, 3, 190, 45),
)
VOCAB = 256  # the zoo's vocabulary: every id stays below it


def tokens(length: int, row: int) -> tuple[int, ...]:
    """`length` deterministic token ids in [1, VOCAB) for prompt `row`: a stride that is
    prime to the vocabulary, so ids do not repeat within a prompt of up to 255 tokens;
    each later run of 255 is shifted by one, so a long prompt is not one run repeated."""
    period = VOCAB - 1
    return tuple(1 + (7 + 97 * i + 31 * row + i // period) % period for i in range(length))


# mlx-lm's default prefill_step_size (mlx_lm.generate, mlx_lm.benchmark, mlx-lm 0.32.2).
MLX_LM_PREFILL_STEP = 2048


@dataclass(frozen=True)
class Shape:
    name: str
    description: str
    prompts: tuple[tuple[int, ...], ...]
    decode_steps: int
    prefill_step: int | None = None  # None: the whole prompt in one call
    # Timed (model-call throughput stored per case); a long prompt's single prefill
    # sample would cost a prefill for a number no series needs (`harness bench` times it).
    timed: bool = True

    @property
    def batch(self) -> int:
        return len(self.prompts)

    @property
    def lengths(self) -> tuple[int, ...]:
        return tuple(len(p) for p in self.prompts)

    def fields(self) -> dict:
        """The Case fields this profile sets."""
        return {
            "prompts": self.prompts,
            "decode_steps": self.decode_steps,
            "prefill_step": self.prefill_step,
        }


_ENTRIES = (
    Shape("short", "2 prompts x 8 tokens, one prefill call, 4 decode steps", DEFAULT_PROMPTS, 4),
    Shape("single-stream", "1 prompt x 8 tokens, batch 1, 4 decode steps", (tokens(8, 0),), 4),
    Shape(
        "long-chunked",
        "1 prompt x 40 tokens prefilled in chunks of 32, 6 decode steps",
        (tokens(40, 0),),
        6,
        prefill_step=32,
    ),
    Shape(
        "window",
        "2 prompts x 3 tokens, 8 decode steps past a 4-token window",
        (tokens(3, 0), tokens(3, 1)),
        8,
    ),
    Shape(
        "mixed",
        "prompts of 11 and 5 tokens, padded, prefilled in chunks of 4, 3 decode steps",
        (tokens(11, 0), tokens(5, 1)),
        3,
        prefill_step=4,
    ),
    Shape(
        "long-prompt",
        "1 prompt x 300 tokens prefilled in chunks of 256, 3 decode steps",
        (tokens(300, 0),),
        3,
        prefill_step=256,
    ),
    Shape(
        "past-prefill-step",
        f"1 prompt x 2100 tokens prefilled in chunks of {MLX_LM_PREFILL_STEP} "
        "(mlx-lm's default), 2 decode steps",
        (tokens(2100, 0),),
        2,
        prefill_step=MLX_LM_PREFILL_STEP,
        timed=False,
    ),
)
SHAPES: dict[str, Shape] = {shape.name: shape for shape in _ENTRIES}
DEFAULT = "short"
CUSTOM = "custom"  # a case whose prompts and steps match no profile


def get_shape(name: str) -> Shape:
    try:
        return SHAPES[name]
    except KeyError:
        raise HarnessError(f"unknown shape '{name}'; known: {', '.join(SHAPES)}") from None


def shape_of(
    prompts: tuple[tuple[int, ...], ...], decode_steps: int, prefill_step: int | None
) -> str:
    """The name of the profile these fields are, else `custom`."""
    for shape in _ENTRIES:
        if (shape.prompts, shape.decode_steps, shape.prefill_step) == (
            prompts,
            decode_steps,
            prefill_step,
        ):
            return shape.name
    return CUSTOM
