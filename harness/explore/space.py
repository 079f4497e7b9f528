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
MAX_CHUNKS = 16  # a prefill of at most this many calls keeps an example cheap
# Rows x longest prompt (a padded batch's size) at most: 32 rows of 32 tokens, two rows of
# the longest prompt. A 32-row batch of prompts up to 513 tokens in chunks of 32 took
# 113 s on 2 ranks here with the cores shared; tiny examples take 40-120 ms.
PADDED_TOKENS = 1024
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
    """A prompt length: short (most draws), at a boundary past the short ones, or anything
    up to `most`."""
    short = min(16, most)
    points = [p for p in bounds.points() if p > short]
    if step is not None and short < step < most:
        points.append(step)
    edges = near(points, most)
    lengths = st.integers(1, short)
    return st.one_of(lengths, st.sampled_from(edges), st.integers(1, most)) if edges else lengths


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
    rows = draw(st.one_of(st.integers(1, 4), st.integers(1, MAX_ROWS), st.just(WIDE)))
    most = min(MAX_PROMPT, bounds.context - 16, step * MAX_CHUNKS, PADDED_TOKENS // rows)
    prompts = [draw(lengths(bounds, most, step)) for _ in range(rows)]
    decode = draw(st.one_of(st.integers(0, 4), st.integers(0, 16)))
    return {"kind": BATCH, "prompts": prompts, "prefill_step": step, "decode": decode}


def prompt_calls(length: int, step: int) -> int:
    """BatchGenerator.next() calls that prefill a prompt: all but its last token in chunks
    of `step`, then the last token (measured on mlx-lm 0.32.2); its first token comes
    with the call after."""
    return -(-(length - 1) // step) + 1


@st.composite
def programs(draw, bounds: Boundaries) -> dict:
    """A serve scenario: a program for BatchGenerator whose every op is valid where drawn.

    Valid means what the ranks can run and compare: a remove leaves at least one request
    in the batch, a prefix is reused from a request that has been prefilled (its calls
    since insertion cover every prompt inserted so far), and the program ends with enough
    steps for every request still in the batch to emit a token."""
    step = draw(prefill_steps(bounds))
    most = min(MAX_SERVE_PROMPT, bounds.context - 64, step * MAX_CHUNKS)
    prompts: dict[int, int] = {}
    calls: dict[int, int] = {}  # uid -> next() calls since its insert
    live: list[int] = []
    ops: list[dict] = []

    def pending() -> int:
        return sum(prompt_calls(n, step) for n in prompts.values()) + 1

    def insert() -> None:
        uid = len(prompts)
        op = {
            "op": INSERT,
            "uid": uid,
            "prompt": draw(lengths(bounds, most, step)),
            "max_tokens": draw(st.one_of(st.integers(1, 8), st.integers(1, 40))),
        }
        prefilled = sorted(u for u in prompts if calls[u] >= pending())
        if prefilled and draw(st.booleans()):
            source = draw(st.sampled_from(prefilled))
            shared = min(op["prompt"], prompts[source])
            op["reuse"] = {"uid": source, "tokens": draw(st.integers(1, shared))}
        prompts[uid], calls[uid] = op["prompt"], 0
        live.append(uid)
        ops.append(op)

    def steps(least: int) -> None:
        n = least - 1 + draw(st.one_of(st.integers(1, 4), st.integers(1, 24)))
        for uid in calls:
            calls[uid] += n
        ops.append({"op": STEP, "n": n})

    insert()
    for _ in range(draw(st.integers(0, MAX_OPS - 2))):
        kind = draw(st.sampled_from([STEP, INSERT] + ([REMOVE] if len(live) > 1 else [])))
        if kind == STEP:
            steps(1)
        elif kind == INSERT:
            insert()
        else:
            uid = draw(st.sampled_from(live))
            live.remove(uid)
            ops.append({"op": REMOVE, "uid": uid})
    # Whatever is still in the batch gets the calls to prefill and answer with a token.
    steps(pending())
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
