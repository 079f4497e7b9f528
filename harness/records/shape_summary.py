"""Across shapes: when the same case passes at some shapes and fails at others, say which
property of the failing shapes the passing ones lack ("only at batch 1", "only past 11
prompt tokens"), in one sentence per case. A pure function over results, run at the end
of a run."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from harness.case import Case
from harness.records.result import CaseResult
from harness.status import FAILING, CaseStatus

# The fields a shape sets; a case without them is what the shapes are compared across.
SHAPE_FIELDS = ("prompts", "decode_steps", "prefill_step")


@dataclass(frozen=True)
class ShapeFacts:
    """What distinguishes one input shape from another, read off a case."""

    name: str
    batch: int
    longest: int  # prompt tokens of the longest prompt
    padded: bool  # prompts of different lengths
    chunked: bool  # more than one prefill call for the longest prompt
    last_position: int  # the position of the last decode step

    @classmethod
    def of(cls, case: Case) -> ShapeFacts:
        lengths = [len(p) for p in case.prompts]
        longest = max(lengths)
        padded = len(set(lengths)) > 1
        step = case.prefill_step
        # Equal lengths prefill all but the last token in chunks (generate_step); padded
        # batches chunk all but the last tokens, then take those in one more call.
        chunked = step is not None and (longest - 1 > step or padded)
        return cls(
            case.shape, len(lengths), longest, padded, chunked, longest + case.decode_steps - 1
        )


# What the failing shapes may share and the passing ones lack, in the order said.
_PROPERTIES: tuple[tuple[Callable[[ShapeFacts], bool], str], ...] = (
    (lambda f: f.batch == 1, "at batch 1"),
    (lambda f: f.padded, "with padded prompts of different lengths"),
    (lambda f: f.chunked, "with a prefill in chunks"),
)


def _explain(bad: list[ShapeFacts], good: list[ShapeFacts]) -> list[str]:
    said = [
        words
        for holds, words in _PROPERTIES
        if all(holds(f) for f in bad) and not any(holds(f) for f in good)
    ]
    shortest_bad, longest_good = min(f.longest for f in bad), max(f.longest for f in good)
    if shortest_bad > longest_good:
        said.append(f"past {longest_good} prompt tokens")
    earliest_bad = min(f.last_position for f in bad)
    latest_good = max(f.last_position for f in good)
    if not said and earliest_bad > latest_good:
        said.append(f"decoding past position {latest_good}")
    return said


def _group(case: Case) -> str:
    data = {k: v for k, v in case.to_dict().items() if k not in SHAPE_FIELDS}
    return json.dumps(data, sort_keys=True, default=str)


def _label(case: Case) -> str:
    """The case's label without its shape."""
    variant = ";".join(p for p in case.variant.split(";") if not p.startswith("shape="))
    return f"{case.arch}/{variant or 'base'}/{case.precision}/{case.strategy}"


def shape_summary(results: Iterable[CaseResult]) -> list[str]:
    """One sentence per case that passes at some shapes and fails at others."""
    groups: dict[str, list[CaseResult]] = {}
    for result in results:
        if result.status == CaseStatus.PASS or result.status in FAILING:
            groups.setdefault(_group(result.case), []).append(result)
    sentences = []
    for members in groups.values():
        failed = [r for r in members if r.status in FAILING]
        passed = [r for r in members if r.status == CaseStatus.PASS]
        if not failed or not passed:
            continue
        bad = [ShapeFacts.of(r.case) for r in failed]
        good = [ShapeFacts.of(r.case) for r in passed]
        names = lambda facts: ", ".join(sorted({f.name for f in facts}))  # noqa: E731
        sentence = f"{_label(failed[0].case)}: fails at {names(bad)}, passes at {names(good)}"
        reasons = _explain(bad, good)
        if reasons:
            sentence += ": only " + ", ".join(reasons)
        where = failed[0].diagnoses or [failed[0].reason or failed[0].status]
        sentences.append(f"{sentence} ({failed[0].case.shape}: {'; '.join(where)})")
    return sentences
