"""The sentences a verdict says, one function each.

A diagnosis is a contract: users act on its words, the fault catalog's expectations
(`harness.faults.catalog`) and the README quote them. Every verdict path (the fp32 ladder,
the precision-aware envelope, a golden check, a bisect's judge) builds its sentences here,
so the words stay the same wherever a failure is found.
"""

from __future__ import annotations

from dataclasses import dataclass

# Layer parts as a captured state's key names them (`layer.K.attn`), in forward order.
PART_NAMES = {"attn": "attention", "mlp": "mlp/moe", "out": "layer output"}
LAYER_OUTPUT = PART_NAMES["out"]
DECODE_ONLY = "decode-only"
SATURATED = "saturated"
# Softmax entropy under this fraction of the reference's: collapsed.
SATURATION = 0.25


def layer_name(layer: int, part: str) -> str:
    return f"layer {layer} ({part})"


def non_finite(where: str | None) -> str:
    """NaN or Inf in the outputs, from the first layer where it appears (`layer_name`)."""
    return "non-finite" + (f" from {where}" if where else "")


def saturated(entropy_ref: float, entropy_test: float) -> str | None:
    """The softmax's entropy collapsed (max prob near 1 where the reference's is not)."""
    return SATURATED if entropy_test < SATURATION * entropy_ref else None


def scaled(world: int | str) -> str:
    """An unsharded value all-summed: the state is the reference's times the world size
    (`world` may be the catalog's "{ranks}" placeholder)."""
    return f"scaled x{world}"


def first_divergent_layer(layer: int, part: str) -> str:
    return f"first divergent {layer_name(layer, part)}"


def skipped_layer(layer: int) -> str:
    return f"layer {layer} did not run on any rank"


AFTER_LAST_LAYER = "layers match: divergence after the last decoder layer (final norm / lm_head)"


def from_prompt_token(position: int, chunk: int | None = None, chunks: int = 1) -> str:
    """Where in the prompt a difference starts; `chunk` counts from 1."""
    where = f"from prompt token {position}"
    if chunk is not None and chunks > 1:
        where += f" (prefill chunk {chunk} of {chunks})"
    return where


def from_decode_position(position: int, step: int, steps: int) -> str:
    """The first differing decode step, by position in the sequence; `step` counts from 1."""
    return f"from decode position {position} (step {step} of {steps})"


def beyond_envelope(segment: str, ratio: float, limit: float) -> str:
    return (
        f"{segment}: {ratio:.1f}x the single-rank run's error against the fp32 truth "
        f"(envelope {limit:g}x)"
    )


def outlier_positions(segment: str, count: int, ratio: float, limit: float) -> str:
    """Positions beyond their own envelope that no flip of rounding's explains (a router's
    or an attention's own selection, records.envelope)."""
    return (
        f"{segment}: {count} position(s) up to {ratio:.1f}x the single-rank run's median "
        f"error against the fp32 truth (a position's envelope {limit:g}x), "
        "no flip of rounding's explains them"
    )


def ranks_apart(ranks: tuple[int, int], count: int, ratio: float, limit: float) -> str:
    """Two ranks hold different logits (records.envelope.disagreement)."""
    a, b = ranks
    return (
        f"ranks {a} and {b} hold different logits at {count} position(s), up to {ratio:.1f}x "
        f"the single-rank run's median error against the fp32 truth apart (ranks agree "
        f"within {limit:g}x: correct sharding ends each step in a collective)"
    )


ONLY_AGREEMENT = (
    "at low precision nothing captured here tells a router flip of rounding's from a bug "
    "(a serve program): judged by the ranks' agreement only; its fp32 run judges the rest"
)


def layers_only(what: str) -> str:
    """A warning: every output passes, a captured layer state does not. Outputs decide."""
    return (
        f"outputs pass, a layer does not: {what}; outputs decide (a captured state is "
        "what a module returned, not always what flowed on)"
    )


def shape_mismatch(test: list[int], ref: list[int]) -> str:
    return f"logits shape {test} != reference {ref}"


BEYOND_TOLERANCE = "logits differ beyond tolerance"


def vs_golden(layer: int) -> str:
    return f"first divergent layer {layer} vs golden"


def golden_topk(k: int) -> str:
    return f"top-{k} logprobs or greedy tokens differ from the golden"


def golden_status(status: str) -> str:
    return f"golden {status}"


def ranks_disagree(failing: list[int], passing: list[int]) -> str:
    return (
        f"ranks disagree: rank {', '.join(map(str, failing))} fail, "
        f"rank {', '.join(map(str, passing))} pass"
    )


STATE_CARRIED = "differs from request 1 (state carried between requests)"


def state_carried(request: int, where: str | None) -> str:
    return f"request {request} {STATE_CARRIED}" + (f", {where}" if where else "")


def from_decode_step(step: int, steps: int) -> str:
    return f"from decode step {step} of {steps}"


@dataclass(frozen=True)
class Located:
    """Where a failure starts among the decoder layers, and the sentences that say so."""

    layer: int | None
    part: str | None
    sentences: tuple[str, ...]


def locate(
    skipped: int | None,
    divergent: tuple[int, str] | None,
    is_scaled: bool,
    world: int,
    layers_compared: bool,
) -> Located:
    """The one localization rule of every path: a layer no rank ran, when it comes no later
    than the first divergent one; else the first divergent (layer, part), `scaled xN`
    first when its state is the reference's times the world size; else, with layers
    captured on both sides and none differing, the divergence is after the last layer."""
    if skipped is not None and (divergent is None or skipped <= divergent[0]):
        sentences = (skipped_layer(skipped), first_divergent_layer(skipped, LAYER_OUTPUT))
        return Located(skipped, LAYER_OUTPUT, sentences)
    if divergent is not None:
        layer, part = divergent
        head = (scaled(world),) if is_scaled else ()
        return Located(layer, part, (*head, first_divergent_layer(layer, part)))
    return Located(None, None, (AFTER_LAST_LAYER,) if layers_compared else ())


def at_batch_prompt_token(
    row: int, rows: int, position: int, length: int, chunk: int, chunks: int
) -> str:
    """Where a batch scenario first goes wrong in a prompt (harness.scenario); `row` and
    `position` count from 0, `chunk` from 1."""
    return (
        f"row {row} of {rows}, prompt token {position} of {length} "
        f"(prefill chunk {chunk} of {chunks})"
    )


def at_batch_decode_step(row: int, rows: int, step: int, steps: int, position: int) -> str:
    """Where a batch scenario first goes wrong in decode; `step` counts from 1,
    `position` is the fed token's place in its row (its cache offset)."""
    return f"row {row} of {rows}, decode step {step} of {steps} at cache position {position}"


def at_serve_token(
    uid: int,
    token: int,
    position: int,
    op_index: int,
    op: str,
    after: list[int] | None = None,
    reused: int = 0,
    source: int | None = None,
) -> str:
    """Where a serve scenario first goes wrong: request `uid`'s `token`-th emitted token
    (0: its first, from its prefill), the op that emitted it, the requests that had left
    the batch before it and the prefix it reused from request `source`."""
    which = "its first token (from its prefill)" if token == 0 else f"its token {token}"
    sentence = f"uid {uid}, {which} at cache position {position} (op {op_index}: {op})"
    if after:
        sentence += f", after uid {', '.join(map(str, after))} left the batch"
    if reused:
        sentence += f", reusing {reused} tokens of uid {source}'s cache"
    return sentence
