"""The search space: hypothesis strategies that draw scenarios (harness.scenario) near the
boundaries where sharded serving bugs hide, every drawn scenario valid by construction.

What is drawn, and why (DESIGN.md, "Searching instead of listing"):
- batch width 1 to 16 (servers batch 8-32 sequences; 32 now and then), rows of mixed
  prompt lengths (padding);
- prompt lengths near the cache positions that matter: the KV cache's growth step (255,
  256, 257, 511, 512, 513), the config's rotating window, the token count at which
  SwitchGLU sorts tokens by expert, and the edges of the drawn prefill chunk;
- `prefill_step`: mlx-lm's default 2,048 (one call) first, small chunks, chunk sizes at
  the sorted-path threshold;
- decode lengths that carry a long prompt across the same boundaries in decode;
- serving programs for mlx-lm's BatchGenerator as data: inserts into a running batch,
  steps, removes at different steps, reuse of an earlier request's prompt cache; each op
  drawn from those valid in the state so far, so hypothesis shrinks a program as a list.

Every strategy's first branch is the smallest choice, so shrinking moves toward one row,
short prompts, one prefill call, few steps and no reuse.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import strategies as st

from harness.scenario import BATCH, INSERT, KV_STEP, REMOVE, SERVE, STEP

# mlx_lm/models/switch_layers.py (0.32.2), SwitchGLU: `do_sort = indices.size >= 64`, the
# size being tokens x experts per token in one call.
SORT_PAIRS = 64
DEFAULT_PREFILL_STEP = 2048  # mlx-lm's prefill_step_size: the whole prompt in one call here
# Lengths up to the second growth boundary and a little past it: a 2-rank tiny model
# prefills 520 tokens in tens of milliseconds; mlx-lm's 2,048-token chunk edge is the
# nightly suite's (3-5 s a prefill here), not the search's.
MAX_PROMPT = 2 * KV_STEP + 8
MAX_ROWS = 16
WIDE = 32  # BatchGenerator's completion_batch_size: drawn now and then
MAX_CHUNKS = 32  # a prefill of at most this many calls keeps an example cheap
MAX_OPS = 12
MAX_SERVE_PROMPT = KV_STEP + 8
_TOP_K_KEYS = ("num_experts_per_tok", "num_experts_per_token", "moe_top_k", "top_k")


@dataclass(frozen=True)
class Boundaries:
    """The cache positions and token counts one architecture's tiny config makes matter."""

    window: int | None = None  # a rotating cache's size (sliding_window), if any
    sort_tokens: int = SORT_PAIRS // 2  # tokens in one call from which SwitchGLU sorts
    context: int = 4096

    @classmethod
    def from_config(cls, config: dict) -> Boundaries:
        found = _find(config, _TOP_K_KEYS)
        top_k = found if isinstance(found, int) and found > 0 else 2
        window = _find(config, ("sliding_window",))
        return cls(
            window=window if isinstance(window, int) and window > 0 else None,
            sort_tokens=-(-SORT_PAIRS // top_k),
            context=int(config.get("max_position_embeddings") or 4096),
        )

    def points(self) -> tuple[int, ...]:
        """The boundaries in positions, smallest first."""
        found = {KV_STEP, 2 * KV_STEP, self.sort_tokens}
        if self.window:
            found |= {self.window, 2 * self.window}
        return tuple(sorted(found))


def _find(config: dict, keys: tuple[str, ...]):
    """The first of `keys` in the config or one level down (text_config, ffn_config)."""
    for key in keys:
        if key in config:
            return config[key]
    for value in config.values():
        if isinstance(value, dict):
            found = _find(value, keys)
            if found is not None:
                return found
    return None


def near(points, most: int) -> list[int]:
    """Each point, one before it and one after it, within 1..most."""
    return sorted({p + d for p in points for d in (-1, 0, 1) if 1 <= p + d <= most})


def lengths(bounds: Boundaries, most: int, step: int | None = None) -> st.SearchStrategy[int]:
    """A prompt length: short (most draws), at a boundary, or anything up to `most`."""
    points = list(bounds.points())
    if step is not None and step < most:
        points += [step, 2 * step]
    edges = near(points, most)
    short = st.integers(1, min(16, most))
    return st.one_of(short, st.sampled_from(edges), st.integers(1, most)) if edges else short


def prefill_steps(bounds: Boundaries) -> st.SearchStrategy[int]:
    """One call (mlx-lm's default) first, then small chunks and chunks at the sorted path."""
    return st.one_of(
        st.just(DEFAULT_PREFILL_STEP),
        st.integers(1, 16),
        st.sampled_from(near([bounds.sort_tokens], DEFAULT_PREFILL_STEP)),
    )


@st.composite
def batches(draw, bounds: Boundaries) -> dict:
    """A batch scenario: rows of mixed lengths, a prefill step, decode steps."""
    step = draw(prefill_steps(bounds))
    rows = draw(st.one_of(st.integers(1, MAX_ROWS), st.just(WIDE)))
    most = min(MAX_PROMPT, bounds.context - 16, step * MAX_CHUNKS)
    prompts = [draw(lengths(bounds, most, step)) for _ in range(rows)]
    decode = draw(st.one_of(st.integers(0, 4), st.integers(0, 16)))
    return {"kind": BATCH, "prompts": prompts, "prefill_step": step, "decode": decode}


@st.composite
def programs(draw, bounds: Boundaries) -> dict:
    """A serve scenario: a program for BatchGenerator whose every op is valid where drawn."""
    step = draw(prefill_steps(bounds))
    most = min(MAX_SERVE_PROMPT, bounds.context - 64, step * MAX_CHUNKS)
    prompts: dict[int, int] = {}
    removable: list[int] = []
    ops: list[dict] = []

    def insert() -> None:
        uid = len(prompts)
        op = {
            "op": INSERT,
            "uid": uid,
            "prompt": draw(lengths(bounds, most, step)),
            "max_tokens": draw(st.one_of(st.integers(1, 8), st.integers(1, 40))),
        }
        if prompts and draw(st.booleans()):
            source = draw(st.sampled_from(sorted(prompts)))
            shared = min(op["prompt"], prompts[source])
            op["reuse"] = {"uid": source, "tokens": draw(st.integers(1, shared))}
        prompts[uid] = op["prompt"]
        removable.append(uid)
        ops.append(op)

    insert()
    for _ in range(draw(st.integers(0, MAX_OPS - 2))):
        kinds = [STEP, INSERT] + ([REMOVE] if removable else [])
        kind = draw(st.sampled_from(kinds))
        if kind == STEP:
            ops.append({"op": STEP, "n": draw(st.one_of(st.integers(1, 4), st.integers(1, 24)))})
        elif kind == INSERT:
            insert()
        else:
            uid = draw(st.sampled_from(removable))
            removable.remove(uid)
            ops.append({"op": REMOVE, "uid": uid})
    if ops[-1]["op"] != STEP:
        # Whatever ran last gets steps to answer with tokens.
        ops.append({"op": STEP, "n": draw(st.one_of(st.integers(1, 4), st.integers(1, 24)))})
    return {"kind": SERVE, "prefill_step": step, "ops": ops}


@dataclass(frozen=True)
class Example:
    """One drawn example: a precision and a scenario."""

    precision: str
    scenario: dict


def examples(bounds: Boundaries, precisions: tuple[str, ...]) -> st.SearchStrategy[Example]:
    """Batches first (they shrink toward a batch), then serving programs."""
    return st.builds(
        Example,
        precision=st.sampled_from(precisions),
        scenario=st.one_of(batches(bounds), programs(bounds)),
    )


def operations(scenario: dict) -> int:
    """Model calls a scenario asks for: prefill chunks and decode steps of a batch; a
    program's inserts, removes and `next()` calls."""
    if scenario["kind"] == BATCH:
        chunks = -(-max(scenario["prompts"]) // scenario["prefill_step"])
        return chunks + scenario["decode"]
    return sum(op["n"] if op["op"] == STEP else 1 for op in scenario["ops"])


def size(example: Example) -> tuple:
    """How large an example is, to order shrunk failures: rows, then tokens, then steps."""
    scenario = example.scenario
    if scenario["kind"] == BATCH:
        return (0, len(scenario["prompts"]), sum(scenario["prompts"]), scenario["decode"])
    inserts = [op for op in scenario["ops"] if op["op"] == INSERT]
    return (1, len(scenario["ops"]), sum(op["prompt"] for op in inserts), operations(scenario))
